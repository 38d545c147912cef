"""``mosaic retention dry-run | run``, ``mosaic hold place | release | list`` and ``mosaic delete``.

Registered on the main app by :mod:`mosaic.cli`. Hold changes and deletions made here are audited with the
operating-system user as the actor; deletions by a retention run are audited with the actor ``retention``.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mosaic.cli.support import ConfigOption, DataDirOption, console, errors, node_of
from mosaic.cli.support import operator as operator_of

retention_app = typer.Typer(help="Retention rules: what they let go (dry run), and running them.",
                            no_args_is_help=True)
hold_app = typer.Typer(help="Legal holds: patients or studies nothing may delete until released.",
                       no_args_is_help=True)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


# --- retention ------------------------------------------------------------------------------


@retention_app.command("dry-run")
def retention_dry_run(
    show_all: Annotated[bool, typer.Option("--all", help="Also list studies no rule matches.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """What a run would mark and purge now, and why every other study stays (changes nothing)."""
    node = node_of(config, data_dir)
    try:
        items = node.retention.dry_run()
    finally:
        node.stop()
    table = Table(title="Retention dry run")
    for column in ("study", "patient", "study date", "rule", "verdict", "why", "purge after"):
        table.add_column(column, overflow="fold")
    order = {"due": 0, "held": 1, "tier": 2, "kept": 3}
    for item in sorted(items, key=lambda item: (order[item.verdict.value], item.StudyDate)):
        if not (show_all or item.rule):
            continue
        verdict = item.verdict.value + (" (purge now)" if item.purge_now else "")
        table.add_row(item.StudyInstanceUID, item.PatientID, item.StudyDate, item.rule or "-", verdict, item.reason,
                      _when(item.purge_after))
    console.print(table)
    counts = Counter(item.verdict.value for item in items)
    console.print(f"{len(items)} studies: {counts['due']} due ({sum(item.purge_now for item in items)} would be "
                  f"purged now), {counts['held']} held, {counts['tier']} tier, {counts['kept']} kept", highlight=False)


@retention_app.command("run")
def retention_run(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Mark due studies, purge those marked longer ago than the grace period (a legal hold saves a study)."""
    from mosaic.retention.service import RetentionBusy

    node = node_of(config, data_dir)
    operator = operator_of(node)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console) as progress:
            task = progress.add_task("Retention", total=None)
            job = node.retention_runs.run_now(operator.name, lambda phase, done, total: progress.update(
                task, description=phase, completed=done, total=total))
    except RetentionBusy as exc:
        errors.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    finally:
        node.stop()
    if job.state != "done":
        errors.print(f"[red]retention run {job.id} {job.state.value}: {job.error}[/]")
        raise typer.Exit(1)
    report = job.result
    table = Table(title=f"Retention run: {report['studies']} studies")
    table.add_column("outcome")
    table.add_column("studies", justify="right")
    for name in ("marked", "purged", "waiting", "held", "kept", "tier", "unmarked", "failed"):
        table.add_row(name, str(report[name]))
    console.print(table)
    console.print(f"{report['instances']} instances deleted" + (
        f"; {report['blobs_failed']} blobs could not be deleted (see `mosaic verify`)" if report["blobs_failed"]
        else ""), highlight=False)
    for line in report["errors"][:50]:
        errors.print(f"[red]failed[/] {line}", highlight=False)
    if report["failed"]:
        raise typer.Exit(1)


# --- legal holds ----------------------------------------------------------------------------


@hold_app.command("place")
def hold_place(
    reason: Annotated[str, typer.Option("--reason", help="Why (litigation, investigation, …).")],
    patient: Annotated[str | None, typer.Option("--patient", help="Patient ID: hold all the patient's studies."
                                                )] = None,
    issuer: Annotated[str, typer.Option("--issuer", help="Issuer of the Patient ID (empty: every issuer).")] = "",
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID: hold this study.")] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Place a legal hold on a patient or a study: nothing deletes it until it is released."""
    from mosaic.governance.holds import HoldError, hold_audit_entry

    node = node_of(config, data_dir)
    operator = operator_of(node)
    try:
        hold = node.holds.place(operator, reason=reason, patient_id=patient or "", issuer=issuer,
                                study_instance_uid=study or "")
        node.audit.record(hold_audit_entry(operator, hold, "placed", "success"))
    except HoldError as exc:
        errors.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        node.stop()
    console.print(f"placed legal hold #{hold.id} on {hold.covers}: {hold.reason}", highlight=False)


@hold_app.command("release")
def hold_release(
    hold_id: Annotated[int, typer.Argument(help="The hold's number (see `mosaic hold list`).")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Release a legal hold (kept in `mosaic hold list --all` with who released it and when)."""
    from mosaic.core.errors import NotFound
    from mosaic.governance.holds import HoldError, hold_audit_entry

    node = node_of(config, data_dir)
    operator = operator_of(node)
    try:
        hold = node.holds.release(operator, hold_id)
        node.audit.record(hold_audit_entry(operator, hold, "released", "success"))
    except (NotFound, HoldError) as exc:
        errors.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        node.stop()
    console.print(f"released legal hold #{hold.id} on {hold.covers}", highlight=False)


@hold_app.command("list")
def hold_list(
    show_all: Annotated[bool, typer.Option("--all", help="Include released holds.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Legal holds in the order they were placed (active ones unless --all)."""
    node = node_of(config, data_dir)
    try:
        holds = node.holds.holds(include_released=show_all)
    finally:
        node.stop()
    table = Table(title="Legal holds")
    for column in ("#", "on", "reason", "placed by", "placed (UTC)", "released by", "released (UTC)"):
        table.add_column(column, overflow="fold")
    for hold in holds:
        table.add_row(str(hold.id), hold.covers, hold.reason, hold.placed_by, _when(hold.placed_at),
                      hold.released_by, _when(hold.released_at))
    console.print(table)


# --- deleting by hand -----------------------------------------------------------------------


def delete_command(
    study: Annotated[str, typer.Option("--study", help="Study Instance UID to delete.")],
    reason: Annotated[str, typer.Option("--reason", help="Why it is deleted (kept in the audit trail).")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Delete a study from the index and storage (refused, exit code 1, under a legal hold)."""
    from mosaic.core.errors import NotFound
    from mosaic.governance.audit import AuditAction, AuditEntry
    from mosaic.governance.holds import UnderLegalHold

    if not reason.strip():
        errors.print("[red]a deletion needs a reason[/]")
        raise typer.Exit(2)
    node = node_of(config, data_dir)
    operator = operator_of(node)
    try:
        result = node.deleter.delete_study(study, reason=reason.strip(), actor=operator.name)
    except UnderLegalHold as exc:
        node.audit.record(AuditEntry.of(operator, AuditAction.DELETE, "denied", PatientID=exc.hold.PatientID,
                                        StudyInstanceUID=study, detail={"reason": reason, "hold": exc.hold.id}))
        node.stop()
        errors.print(f"[red]refused:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    except NotFound as exc:
        node.stop()
        errors.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(1) from exc
    node.audit.record(AuditEntry.of(operator, AuditAction.DELETE, "success", PatientID=result.PatientID,
                                    IssuerOfPatientID=result.IssuerOfPatientID, StudyInstanceUID=study,
                                    detail={"reason": reason, "series": result.series,
                                            "instances": result.instances, "versions": result.versions,
                                            "blobs_failed": len(result.blobs_failed)}))
    node.stop()
    console.print(f"deleted study {study}: {result.series} series, {result.instances} instances"
                  + (f" ({result.versions} older versions)" if result.versions else "")
                  + ("; the patient had no other study and was removed" if result.patient_deleted else ""),
                  highlight=False)
    for key in result.blobs_failed:
        errors.print(f"[yellow]blob {key} could not be deleted: an orphan for `mosaic verify`[/]", highlight=False)
