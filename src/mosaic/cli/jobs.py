"""``mosaic jobs list | show | cancel``: the durable jobs (exports, retention runs) of every node on this index.

Registered on the main app by :mod:`mosaic.cli`. The command line is the server's operator: it sees every job.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from mosaic.cli.support import ConfigOption, DataDirOption, console, errors, node_of
from mosaic.cli.support import operator as operator_of

jobs_app = typer.Typer(help="Durable jobs (exports, retention runs): progress, outcome, cancelling.",
                       no_args_is_help=True)


@jobs_app.command("list")
def jobs_list(
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind (export, retention).")] = None,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state (queued, running, done, failed, "
                                              "cancelled).")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """The newest jobs, with their progress."""
    node = node_of(config, data_dir)
    try:
        jobs = node.jobs.recent(kind=kind, state=state, limit=limit)
    finally:
        node.stop()
    table = Table(title="Jobs")
    for column in ("id", "kind", "state", "progress", "by", "created", "error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        progress = f"{job.phase} {job.done}/{job.total}" if job.total else job.phase
        table.add_row(job.id, job.kind, job.state.value, progress, job.requested_by,
                      job.created_at.strftime("%Y-%m-%d %H:%M:%S"), job.error[:80])
    console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """One job, whole: state, progress, attempts, outcome."""
    node = node_of(config, data_dir)
    try:
        job = node.jobs.get(job_id)
    finally:
        node.stop()
    if job is None:
        errors.print(f"[red]job {job_id} does not exist[/]")
        raise typer.Exit(1)
    console.print_json(json.dumps(job.as_json()))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Cancel a queued job, or ask a running one to stop (it removes what it wrote)."""
    from mosaic.governance.audit import AuditAction, AuditEntry

    node = node_of(config, data_dir)
    try:
        job = node.jobs.get(job_id)
        if job is None or job.finished:
            errors.print(f"[red]job {job_id} {'does not exist' if job is None else 'has already ended'}[/]")
            raise typer.Exit(1)
        cancelled = node.jobs.cancel(job_id)
        node.audit.record(AuditEntry.of(operator_of(node), AuditAction.EXPORT if job.kind == "export"
                                        else AuditAction.MODIFY, "success",
                                        detail={"job": job_id, "kind": job.kind, "cancel": True}))
    finally:
        node.stop()
    assert cancelled is not None
    console.print(f"job {job_id}: {'cancelled' if cancelled.state == 'cancelled' else 'asked to stop'}")
