"""``mosaic audit verify | search``: the audit trail's hash chain and signed checkpoints, and searching it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mosaic.cli.support import ConfigOption, DataDirOption, audit_cli_change, console, errors, node_of

audit_app = typer.Typer(help="The audit trail: verify its hash chain, search it.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    anchors: Annotated[list[Path] | None, typer.Option(
        "--anchors", help="More anchor files to check the chain against (other nodes' checkpoints).")] = None,
) -> None:
    """Walk the audit trail's hash chain and check it against every signed checkpoint; names the first record
    edited, removed or reordered, or the checkpoint that is not validly signed (exit 1)."""
    node = node_of(config, data_dir)
    with Progress(TextColumn("[bold]Verifying the audit trail"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("audit", total=node.audit.total())
        report = node.audit.verify(lambda count: progress.advance(task, count), anchor_files=anchors)
    node.stop()
    if report.intact:
        console.print(f"audit trail intact: {report.checked} records, every hash matches; "
                      f"{report.checkpoints} signed checkpoints match")
        if report.checked > report.anchored_seq:
            console.print(f"[yellow]records {report.anchored_seq + 1}…{report.checked} are not anchored by a signed "
                          "checkpoint yet: cutting them off would not be detected[/]")
        return
    if report.bad_checkpoint_line is not None:
        errors.print(f"[red]audit trail anchors broken at checkpoint line {report.bad_checkpoint_line}: "
                     f"{report.reason}[/]")
    else:
        errors.print(f"[red]audit trail broken at record {report.first_bad_seq}: {report.reason}[/] "
                     f"({report.checked} records before it are intact)")
    raise typer.Exit(1)


@audit_app.command("search")
def audit_search(
    patient: Annotated[str | None, typer.Option("--patient", help="Patient ID.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="User name or AE title.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="query, read, store, delete, login, …")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most records shown.")] = 50,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Search the audit trail, newest first."""
    from mosaic.governance.audit import AuditAction

    node = node_of(config, data_dir)
    rows, total = node.audit.search(patient_id=patient, user=user, study=study, action=action, limit=limit)
    audit_cli_change(node, AuditAction.AUDIT_READ, {"patient": patient, "user": user, "study": study,
                                                     "action": action, "matches": total})
    node.stop()
    table = Table(title=f"Audit trail: {total} matching records")
    for column in ("#", "when (UTC)", "who", "from", "door", "action", "outcome", "patient", "study"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(str(row.seq), row.recorded_at.isoformat(sep=" ", timespec="seconds"), row.actor, row.address,
                      row.interface, row.action + (" BREAK-GLASS" if row.break_glass else ""), row.outcome,
                      row.PatientID, row.StudyInstanceUID)
    console.print(table)
