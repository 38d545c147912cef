"""Job rows: submit, claim, report progress, finish, cancel, and take back work an interrupted node left.

Every state change is one short write transaction. A claim is a conditional update (``queued`` → ``running``
only if still queued), so two nodes racing for one job on PostgreSQL or SQLite never both get it.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import socket
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mosaic.config import JobSettings
from mosaic.core.processes import running
from mosaic.core.times import as_utc
from mosaic.index.database import Database
from mosaic.index.schema import Job

log = logging.getLogger("mosaic.jobs")

class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


def node_name() -> str:
    """This process, as job rows name it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class JobView:
    """A job as read from its row (what the API, the CLI and a running handler see)."""

    id: str
    kind: str
    state: JobState
    requested_by: str
    params: dict[str, Any]
    result: dict[str, Any]
    error: str
    phase: str
    done: int
    total: int
    attempts: int
    cancel_requested: bool
    node: str
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: Job) -> JobView:
        return cls(id=row.id, kind=row.kind, state=JobState(row.state), requested_by=row.requested_by,
                   params=json.loads(row.params_json or "{}"), result=json.loads(row.result_json or "{}"),
                   error=row.error, phase=row.phase, done=row.done, total=row.total, attempts=row.attempts,
                   cancel_requested=row.cancel_requested, node=row.node, created_at=as_utc(row.created_at),
                   started_at=as_utc(row.started_at), heartbeat_at=as_utc(row.heartbeat_at),
                   finished_at=as_utc(row.finished_at))

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def as_json(self) -> dict[str, Any]:
        """The job for the API: state, progress and outcome (never its parameters: they may name patients)."""
        return {"id": self.id, "kind": self.kind, "state": self.state.value, "requested_by": self.requested_by,
                "phase": self.phase, "done": self.done, "total": self.total, "attempts": self.attempts,
                "cancel_requested": self.cancel_requested, "node": self.node or None, "error": self.error or None,
                "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at), "result": self.result}


class JobStore:
    def __init__(self, database: Database, settings: JobSettings) -> None:
        self.database = database
        self.settings = settings
        self.node = node_name()

    # --- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobView | None:
        with self.database.session() as session:
            row = session.get(Job, job_id)
            return None if row is None else JobView.of(row)

    def recent(self, *, kind: str | None = None, requested_by: str | None = None, state: str | None = None,
             limit: int = 50) -> list[JobView]:
        """The newest jobs first, optionally of one kind, requester or state."""
        statement = select(Job)
        if kind:
            statement = statement.where(Job.kind == kind)
        if requested_by:
            statement = statement.where(Job.requested_by == requested_by)
        if state:
            statement = statement.where(Job.state == state)
        with self.database.session() as session:
            rows = session.scalars(statement.order_by(Job.created_at.desc()).limit(limit)).all()
            return [JobView.of(row) for row in rows]

    # --- changing ---------------------------------------------------------------------------

    def submit(self, kind: str, requested_by: str, params: dict[str, Any], *, here: bool = False) -> JobView:
        """A new job, queued for any node; ``here``: already taken by this process (a command's foreground run,
        which no other node may take first)."""
        now = datetime.now(UTC)
        row = Job(id=str(uuid.uuid4()), kind=kind, state=(JobState.RUNNING if here else JobState.QUEUED).value,
                  requested_by=requested_by, params_json=json.dumps(params), result_json="{}", error="",
                  phase="starting" if here else "queued", done=0, total=0, attempts=1 if here else 0,
                  cancel_requested=False, node=self.node if here else "", created_at=now,
                  started_at=now if here else None, heartbeat_at=now if here else None)

        def add(session: Session) -> JobView:
            session.add(row)
            session.flush()
            return JobView.of(row)

        return self.database.write(add)

    def claim(self, kinds: Collection[str], job_id: str | None = None) -> JobView | None:
        """Take the oldest queued job of ``kinds`` (or ``job_id``) for this node: running, one more attempt."""
        now = datetime.now(UTC)

        def take(session: Session) -> JobView | None:
            candidates = select(Job.id).where(Job.state == JobState.QUEUED.value, Job.kind.in_(list(kinds)))
            if job_id is not None:
                candidates = candidates.where(Job.id == job_id)
            for candidate in session.scalars(candidates.order_by(Job.created_at).limit(5)).all():
                claimed = session.execute(
                    update(Job).where(Job.id == candidate, Job.state == JobState.QUEUED.value)
                    .values(state=JobState.RUNNING.value, node=self.node, attempts=Job.attempts + 1,
                            started_at=now, heartbeat_at=now, phase="starting", error=""))
                if getattr(claimed, "rowcount", 0) == 1:
                    row = session.get(Job, candidate)
                    assert row is not None
                    session.refresh(row)
                    return JobView.of(row)
            return None

        return self.database.write(take)

    def report(self, job_id: str, phase: str, done: int, total: int) -> str:
        """Record progress (and that this node is alive): "go on", "cancel" (someone asked the job to stop) or
        "lost" (this node no longer runs it: it was taken back as interrupted)."""
        def write(session: Session) -> str:
            updated = session.execute(update(Job).where(*self._mine(job_id)).values(
                phase=phase[:200], done=done, total=total, heartbeat_at=datetime.now(UTC)))
            if session.scalar(select(Job.cancel_requested).where(Job.id == job_id)):
                return "cancel"
            return "go on" if getattr(updated, "rowcount", 0) == 1 else "lost"

        return self.database.write(write)

    def _mine(self, job_id: str) -> tuple[Any, ...]:
        """The row of ``job_id`` while this node runs it."""
        return Job.id == job_id, Job.node == self.node, Job.state == JobState.RUNNING.value

    def heartbeat(self, job_ids: Collection[str]) -> None:
        if not job_ids:
            return
        self.database.write(lambda session: session.execute(
            update(Job).where(Job.id.in_(list(job_ids)), Job.node == self.node,
                              Job.state == JobState.RUNNING.value).values(heartbeat_at=datetime.now(UTC))))

    def finish(self, job_id: str, state: JobState, result: dict[str, Any], error: str = "") -> bool:
        """End this node's run of the job; False when another node has taken it over meanwhile (nothing written)."""
        def write(session: Session) -> bool:
            updated = session.execute(update(Job).where(*self._mine(job_id)).values(
                state=state.value, result_json=json.dumps(result, default=str), error=error[:10_000],
                phase=state.value, finished_at=datetime.now(UTC), node=""))
            return getattr(updated, "rowcount", 0) == 1

        return self.database.write(write)

    def requeue(self, job_id: str, reason: str) -> None:
        """Back to the queue, this run not counted as an attempt (its node is stopping, not failing)."""
        self.database.write(lambda session: session.execute(
            update(Job).where(*self._mine(job_id)).values(
                state=JobState.QUEUED.value, node="", phase="queued again", error=reason,
                attempts=Job.attempts - 1)))

    def cancel(self, job_id: str) -> JobView | None:
        """A queued job is cancelled at once; a running one is asked to stop (at its next progress report)."""
        def write(session: Session) -> JobView | None:
            row = session.get(Job, job_id)
            if row is None:
                return None
            if row.state == JobState.QUEUED.value:
                row.state, row.phase, row.finished_at = JobState.CANCELLED.value, "cancelled", datetime.now(UTC)
            elif row.state == JobState.RUNNING.value:
                row.cancel_requested = True
            session.flush()
            return JobView.of(row)

        return self.database.write(write)

    def recover(self, now: datetime | None = None) -> list[str]:
        """Jobs whose node stopped reporting (crashed, killed, restarted) go back to the queue, or fail once they
        had ``max_attempts`` runs. A node of this host whose process is gone counts at once; others after
        ``stale_seconds`` without a heartbeat. The ids of the jobs taken back."""
        now = now or datetime.now(UTC)
        stale_before = now - timedelta(seconds=self.settings.stale_seconds)
        host = socket.gethostname()

        def write(session: Session) -> list[str]:
            taken: list[str] = []
            for row in session.scalars(select(Job).where(Job.state == JobState.RUNNING.value)).all():
                beat = as_utc(row.heartbeat_at)
                gone = row.node != self.node and _process_gone(row.node, host)
                if not gone and beat is not None and beat >= stale_before:
                    continue
                interrupted = f"interrupted on {row.node or 'an unknown node'} (attempt {row.attempts})"
                if row.cancel_requested:
                    row.state, row.phase, row.error = JobState.CANCELLED.value, "cancelled", interrupted
                    row.finished_at = now
                elif row.attempts >= self.settings.max_attempts:
                    row.state, row.phase, row.finished_at = JobState.FAILED.value, "failed", now
                    row.error = f"{interrupted}; no attempts left (jobs.max_attempts = {self.settings.max_attempts})"
                else:
                    row.state, row.phase, row.error = JobState.QUEUED.value, "queued again", interrupted
                log.warning("job %s (%s) %s: now %s", row.id, row.kind, interrupted, row.state)
                row.node = ""
                taken.append(row.id)
            return taken

        return self.database.write(write)


def _process_gone(node: str, host: str) -> bool:
    """Whether ``node`` (host:pid) is a process of this host that no longer exists."""
    name, _, pid = node.rpartition(":")
    return name == host and pid.isdigit() and not running(int(pid))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
