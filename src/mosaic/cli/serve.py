"""``mosaic serve`` and ``mosaic init``: run a node, set up a new archive."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from mosaic.cli.support import ConfigOption, DataDirOption, console, open_node
from mosaic.cli.support import settings_of as _settings
from mosaic.config import StartupError


def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    http_host: Annotated[str | None, typer.Option("--http-host", help="HTTP bind address.")] = None,
    http_port: Annotated[int | None, typer.Option("--http-port", help="HTTP port.")] = None,
    dicom_port: Annotated[int | None, typer.Option("--dicom-port", help="DICOM port.")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="Mosaic's AE title.")] = None,
    hl7_port: Annotated[int | None, typer.Option("--hl7-port", help="HL7 v2 (MLLP) port.")] = None,
    workers: Annotated[int | None, typer.Option("--dicom-workers", help="Processes serving the DICOM port.")] = None,
) -> None:
    """Start Mosaic: the DICOM listener, the HTTP server and (with hl7.senders) the HL7 v2 listener."""
    from mosaic.logging_setup import configure_logging

    settings = _settings(config, data_dir, http__host=http_host, http__port=http_port, dicom__port=dicom_port,
                         dicom__ae_title=ae_title, dicom__workers=workers, hl7__port=hl7_port)
    configure_logging(settings.log)
    if settings.dicom.workers > 1:
        _multiprocess_metrics(settings.data_dir / ".metrics")
    node = open_node(settings, create=True)
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    console.print(f"[bold green]Mosaic is running[/]  data: {settings.data_dir.resolve()}")
    scheme = "https" if settings.http.https else "http"
    if node.initial_admin_password:
        console.print(f"  [bold yellow]First start:[/] sign in at {scheme}://{settings.http.host}:{node.http_port}"
                      f"/login as [bold]admin[/] with password [bold]{node.initial_admin_password}[/] "
                      "(shown only this once; change it with `mosaic user passwd admin`)", highlight=False,
                      soft_wrap=True)
    if not settings.dicom.peers and not settings.dicom.allow_unknown_calling_aes:
        console.print("  [yellow]No DICOM peers configured:[/] every association is refused until modalities and "
                      "PACS are listed in dicom.peers (docs/configuration.md)", highlight=False)
    if settings.security.development_mode:
        console.print("  [bold red]security.development_mode is on: HTTP answers without credentials[/]")
    console.print(f"  DICOM  {settings.dicom.ae_title}@{settings.dicom.host}:{node.dicom_port}")
    if node.dicom is not None and settings.dicom.tls.enabled:
        console.print(f"  DICOM  {settings.dicom.ae_title}@{settings.dicom.host}:{node.dicom.tls_port} (TLS)")
    if node.hl7 is not None:
        console.print(f"  HL7    MLLP {settings.hl7.host}:{node.hl7_port}  ({len(settings.hl7.senders)} sender(s))")
    console.print(f"  HTTP   {scheme}://{settings.http.host}:{node.http_port}/  (health: /healthz, metrics: /metrics)")
    console.print("  Press Ctrl+C to stop.", highlight=False)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    node.stop()


def _multiprocess_metrics(folder: Path) -> None:
    """Prometheus metrics shared by the worker processes (set before prometheus_client is imported)."""
    import os
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise StartupError(f"cannot create {folder} (the workers' metrics): {exc.strerror or exc}") from exc
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def init(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """First-time set-up: create the data directory, the index and the `admin` account (its password is printed
    once). Every command but `serve` and `init` refuses a data directory that is not set up."""
    node = open_node(_settings(config, data_dir), create=True)
    try:
        password = node.identity.ensure_administrator()
    finally:
        node.stop()
    if password is None:
        console.print(f"{node.settings.data_dir.resolve()} is already set up: nothing changed", highlight=False,
                      soft_wrap=True)
        return
    console.print(f"set up a new archive in {node.settings.data_dir.resolve()}; sign in as [bold]admin[/] with "
                  f"password [bold]{password}[/] (shown only this once; change it with `mosaic user passwd admin`)",
                  highlight=False, soft_wrap=True)
