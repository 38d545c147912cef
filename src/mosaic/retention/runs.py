"""Retention runs as durable jobs: started by hand (CLI, API) or by the schedule, shown by every node
(``/api/retention/status``, ``/api/jobs``), run by whichever node's job workers take them, and run again
from the start if the node running one stops (marking and purging are both safe to repeat)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mosaic.jobs.runner import JobContext, JobRunner
from mosaic.jobs.store import JobState, JobStore, JobView
from mosaic.retention.service import RetentionBusy, RetentionService

KIND = "retention"


class RetentionRuns:
    def __init__(self, retention: RetentionService, jobs: JobStore, runner: JobRunner) -> None:
        self.retention = retention
        self.jobs = jobs
        self.runner = runner
        runner.register(KIND, self._run)

    def submit(self, triggered_by: str) -> JobView:
        """Queue a run (this node's workers start it at once); :class:`RetentionBusy` while one is queued or
        running anywhere."""
        job = self._queue(triggered_by)
        self.runner.wake()
        return job

    def run_now(self, triggered_by: str, progress: Callable[[str, int, int], None] | None = None) -> JobView:
        """Queue a run and run it in this thread (the CLI, a synchronous API call); the job as it ended."""
        return self.runner.run_now(self._queue(triggered_by, here=True), progress)

    def _queue(self, triggered_by: str, *, here: bool = False) -> JobView:
        for state in (JobState.QUEUED, JobState.RUNNING):
            if self.jobs.recent(kind=KIND, state=state.value, limit=1):
                raise RetentionBusy(f"a retention run is already {state.value}")
        return self.jobs.submit(KIND, triggered_by, {"triggered_by": triggered_by}, here=here)

    def status(self) -> dict[str, Any]:
        """The newest run (its phase and progress) and the report of the newest finished one."""
        latest = self.jobs.recent(kind=KIND, limit=1)
        finished = self.jobs.recent(kind=KIND, state=JobState.DONE.value, limit=1)
        if not latest:
            return {"running": False, "phase": "", "done": 0, "total": 0, "last": None, "job": None}
        job = latest[0]
        return {"running": not job.finished, "phase": job.phase, "done": job.done, "total": job.total,
                "last": finished[0].result if finished else None, "job": job.as_json()}

    def _run(self, context: JobContext) -> dict[str, Any]:
        report = self.retention.run(progress=context.progress,
                                    triggered_by=str(context.params.get("triggered_by", "")))
        return report.as_json()
