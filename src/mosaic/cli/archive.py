"""``mosaic import`` and ``mosaic verify``: filling the archive from folders, checking what it stores."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mosaic.cli.support import ConfigOption, DataDirOption, console, node_of, operator


def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (searched recursively).", exists=True)],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Store DICOM files from folders; re-running after an interruption skips what is stored. Photos, video and
    PDFs are captured into their patient's record when a sidecar (capture.json, capture.csv or <file>.json)
    names the patient and the context."""
    from mosaic.services.importer import import_paths, iter_files
    from mosaic.services.origin import Door, IngestOrigin

    node = node_of(config, data_dir)
    node.audit.start()
    # every file stored is audited by ingest; refused ones are listed to the operator below
    origin = IngestOrigin(door=Door.IMPORT, principal=operator(node), audit_refusals=False)

    total = sum(1 for _ in iter_files(paths))
    with Progress(TextColumn("[bold]Importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("import", total=total)
        summary = import_paths(node.ingest, paths, progress=lambda _file: progress.advance(task), origin=origin,
                               captures=node.captures)
    table = Table(title="Import summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome in ("stored", "already-stored", "replaced", "rejected"):  # captures count here too
        table.add_row(outcome, str(summary.outcomes.get(outcome, 0)))
    console.print(table)
    for file, reason in summary.rejected[:50]:
        console.print(f"[red]rejected[/] {file}: {reason}", highlight=False)
    if len(summary.rejected) > 50:
        console.print(f"… and {len(summary.rejected) - 50} more rejected files")
    node.stop()


def verify(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    repair: Annotated[bool, typer.Option("--repair", help="Index orphan blobs that hold valid DICOM; remove "
                                         "partial ones (older than storage.sweep_age_seconds).")] = False,
) -> None:
    """Re-read every stored object and report missing or corrupt ones (exit code 1 if any)."""
    from mosaic.services.verify import VerifyService

    node = node_of(config, data_dir)
    service = VerifyService(node.database, node.blobs)
    with Progress(TextColumn("[bold]Verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("verify", total=service.total())
        report = service.run(lambda count: progress.advance(task, count))
    # partial files (a killed receiver's) are removed once no write can be in flight on them (storage.sweep_age_seconds)
    partial_before = time.time() - node.settings.storage.sweep_age_seconds
    repaired = service.repair_orphans(node.ingest, report.orphans, partial_before) if repair and report.orphans else {}
    node.stop()
    console.print(f"checked {report.checked}: {report.ok} ok, {len(report.missing)} missing, "
                  f"{len(report.corrupt)} corrupt, {len(report.orphans)} orphan blobs")
    for line in report.missing:
        console.print(f"[red]missing[/] {line}", highlight=False)
    for line in report.corrupt:
        console.print(f"[red]corrupt[/] {line}", highlight=False)
    for key in report.orphans[:50]:
        what = repaired.get(key, "not referenced by the index; `mosaic verify --repair` indexes it (or removes "
                                 "it when partial)")
        console.print(f"[yellow]orphan[/] blob {key}: {what}", highlight=False)
    if not report.healthy:
        raise typer.Exit(1)
