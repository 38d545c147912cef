"""``mosaic export``: de-identified export (:mod:`mosaic.export`), run in the foreground as a job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mosaic.cli.support import ConfigOption, DataDirOption, console, errors, node_of, operator


def export(
    study: Annotated[list[str], typer.Option("--study", help="Study Instance UID (repeat for more).")],
    project: Annotated[str, typer.Option("--project", help="Research project: its secret keys the pseudonyms.")],
    to: Annotated[Path | None, typer.Option("--to", help="Folder (or, with --zip, zip file) to write.")] = None,
    as_zip: Annotated[bool, typer.Option("--zip", help="Write one zip file instead of a folder.")] = False,
    peer: Annotated[str | None, typer.Option("--peer", help="Send to this configured DICOM peer instead.")] = None,
    dicomweb: Annotated[str | None, typer.Option("--dicomweb", help="Send to this configured STOW-RS "
                                                 "destination instead.")] = None,
    retain_patient_characteristics: Annotated[bool, typer.Option(help="Keep sex, age, size, weight.")] = False,
    retain_device_identity: Annotated[bool, typer.Option(help="Keep station and device identifiers.")] = False,
    retain_institution_identity: Annotated[bool, typer.Option(help="Keep institution names, addresses and "
                                                          "departments.")] = False,
    retain_uids: Annotated[bool, typer.Option(help="Keep the original UIDs.")] = False,
    shift_dates: Annotated[bool, typer.Option("--shift-dates/--remove-dates", help="Shift dates per patient "
                                              "(default) or remove them.")] = True,
    keep_dates: Annotated[bool, typer.Option("--keep-dates", help="Keep dates and times as they are (Retain "
                                             "Longitudinal Temporal Information with Full Dates).")] = False,
    include_burned_in: Annotated[bool, typer.Option(help="Also export instances that may show burned-in text.")
                                 ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """De-identify studies (PS3.15 Annex E) into a folder, a zip, a DICOM peer or a DICOMweb destination.
    The manifest linking pseudonyms to patients stays inside Mosaic."""
    from mosaic.export.service import Destination, ExportError, summary

    targets = [(kind, value) for kind, value in (("zip" if as_zip else "folder", str(to) if to else None),
                                                 ("peer", peer), ("dicomweb", dicomweb)) if value]
    if len(targets) != 1:
        errors.print("[red]give exactly one of --to, --peer, --dicomweb[/]")
        raise typer.Exit(2)
    node = node_of(config, data_dir)
    exporter = operator(node)
    node.audit.start()
    options = {"retain_patient_characteristics": retain_patient_characteristics, "retain_uids": retain_uids,
               "retain_device_identity": retain_device_identity, "retain_institution_identity":
               retain_institution_identity, "retain_longitudinal_modified_dates": shift_dates and not keep_dates,
               "retain_longitudinal_full_dates": keep_dates, "include_burned_in": include_burned_in}
    try:
        job = node.exports.prepare(exporter, study, Destination(*targets[0]), project, options, here=True)
    except ExportError as exc:
        errors.print(f"[red]{exc}[/]")
        node.stop()
        raise typer.Exit(1) from exc
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("Exporting", total=None)
        job = node.exports.run(job, lambda phase, done, total: progress.update(
            task, description=phase.capitalize(), total=total, completed=done))
    node.stop()
    outcome = summary(job)
    console.print(f"export {job.id}: {outcome['exported']} instances exported, {outcome['excluded_count']} excluded, "
                  f"{outcome['failed_count']} failed (project {project}; the manifest stays in Mosaic)")
    for item in outcome["excluded"][:50]:
        console.print(f"[yellow]excluded[/] {item['SOPInstanceUID']}: {item['reason']}", highlight=False)
    for item in outcome["failed"][:50]:
        console.print(f"[red]failed[/] {item['source']}: {item['reason']}", highlight=False)
    if job.state != "done":
        errors.print(f"[red]export {job.state}: {job.error}[/]")
        raise typer.Exit(1)
