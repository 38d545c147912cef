"""The ``mosaic`` command line (Typer + Rich)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mosaic.config import Settings, iter_options, load_settings

app = typer.Typer(help="Mosaic: an open enterprise imaging platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console()
errors = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="TOML configuration file.",
                                                    exists=True, dir_okay=False)]
DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="Folder for the index and blobs.")]


def _settings(config: Path | None, data_dir: Path | None = None, **overrides: Any) -> Settings:
    settings = load_settings(config)
    if data_dir is not None:
        settings.data_dir = data_dir
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, name = dotted.partition("__")
        setattr(getattr(settings, section), name, value)
    return settings


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    http_host: Annotated[str | None, typer.Option("--http-host", help="HTTP bind address.")] = None,
    http_port: Annotated[int | None, typer.Option("--http-port", help="HTTP port.")] = None,
    dicom_port: Annotated[int | None, typer.Option("--dicom-port", help="DICOM port.")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="Mosaic's AE title.")] = None,
    workers: Annotated[int | None, typer.Option("--dicom-workers", help="Processes serving the DICOM port.")] = None,
) -> None:
    """Start Mosaic: the DICOM listener and the HTTP server."""
    from mosaic.logging_setup import configure_logging

    settings = _settings(config, data_dir, http__host=http_host, http__port=http_port, dicom__port=dicom_port,
                         dicom__ae_title=ae_title, dicom__workers=workers)
    configure_logging(settings.log)
    if settings.dicom.workers > 1:
        _multiprocess_metrics(settings.data_dir / ".metrics")
    from mosaic.app import Mosaic

    node = Mosaic(settings)
    node.start()
    console.print(f"[bold green]Mosaic is running[/]  data: {settings.data_dir.resolve()}")
    console.print(f"  DICOM  {settings.dicom.ae_title}@{settings.dicom.host}:{node.dicom_port}")
    console.print(f"  HTTP   http://{settings.http.host}:{node.http_port}/  (health: /healthz, metrics: /metrics)")
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
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (searched recursively).", exists=True)],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Store DICOM files from folders; re-running after an interruption skips what is stored."""
    from mosaic.app import Mosaic
    from mosaic.services.importer import import_paths, iter_files

    node = Mosaic(_settings(config, data_dir))
    total = sum(1 for _ in iter_files(paths))
    with Progress(TextColumn("[bold]Importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("import", total=total)
        summary = import_paths(node.ingest, paths, progress=lambda _file: progress.advance(task))
    table = Table(title="Import summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome in ("stored", "already-stored", "replaced", "rejected"):
        table.add_row(outcome, str(summary.outcomes.get(outcome, 0)))
    console.print(table)
    for file, reason in summary.rejected[:50]:
        console.print(f"[red]rejected[/] {file}: {reason}", highlight=False)
    if len(summary.rejected) > 50:
        console.print(f"… and {len(summary.rejected) - 50} more rejected files")
    node.stop()


@app.command()
def verify(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    repair: Annotated[bool, typer.Option("--repair", help="Index orphan blobs that hold valid DICOM.")] = False,
) -> None:
    """Re-read every stored object and report missing or corrupt ones (exit code 1 if any)."""
    from mosaic.app import Mosaic
    from mosaic.services.verify import VerifyService

    node = Mosaic(_settings(config, data_dir))
    service = VerifyService(node.database, node.blobs)
    with Progress(TextColumn("[bold]Verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("verify", total=service.total())
        report = service.run(lambda count: progress.advance(task, count))
    repaired = service.repair_orphans(node.ingest, report.orphans) if repair and report.orphans else {}
    node.stop()
    console.print(f"checked {report.checked}: {report.ok} ok, {len(report.missing)} missing, "
                  f"{len(report.corrupt)} corrupt, {len(report.orphans)} orphan blobs")
    for line in report.missing:
        console.print(f"[red]missing[/] {line}", highlight=False)
    for line in report.corrupt:
        console.print(f"[red]corrupt[/] {line}", highlight=False)
    for key in report.orphans[:50]:
        what = repaired.get(key, "not referenced by the index; `mosaic verify --repair` indexes it")
        console.print(f"[yellow]orphan[/] blob {key}: {what}", highlight=False)
    if not report.healthy:
        raise typer.Exit(1)


@app.command()
def echo(
    peer: Annotated[str, typer.Argument(help="AE@HOST:PORT of the peer to C-ECHO.")],
    config: ConfigOption = None,
) -> None:
    """Send a C-ECHO (DICOM verification) to a peer."""
    from mosaic.dimse.scu import parse_peer, verify_peer

    settings = _settings(config)
    try:
        ae_title, host, port = parse_peer(peer)
    except ValueError as exc:
        errors.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    status, seconds = verify_peer(settings.dicom.ae_title, ae_title, host, port)
    if status is None:
        errors.print(f"[red]C-ECHO to {peer} failed: association rejected, aborted or peer unreachable[/]")
        raise typer.Exit(1)
    if status != 0:
        errors.print(f"[red]C-ECHO to {peer} answered status 0x{status:04X}[/]")
        raise typer.Exit(1)
    console.print(f"C-ECHO to {peer}: success in {seconds * 1000:.1f} ms")


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration (file + MOSAIC_* environment) with each option's doc."""
    settings = _settings(config)
    table = Table(title="Effective configuration")
    for column in ("option", "value", "default", "description"):
        table.add_column(column, overflow="fold")
    values = settings.model_dump()
    for name, _type, default, doc in iter_options():
        value: Any = values
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        shown = "***" if "secret" in name and value else repr(value)
        table.add_row(name, shown, default, doc)
    console.print(table)


@config_app.command("docs")
def config_docs() -> None:
    """Print docs/configuration.md (every option with its type, default and doc)."""
    from mosaic.config_docs import render

    print(render(), end="")


if __name__ == "__main__":
    app()
