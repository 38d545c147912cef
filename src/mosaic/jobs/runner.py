"""Runs queued jobs: claims them, hands them to the handler of their kind, keeps their heartbeat, records how
they ended; and takes back the jobs a stopped or crashed node left running.

A handler is ``handler(context) -> result``: it reads ``context.params``, calls ``context.progress(phase, done,
total)`` as it goes (which raises :class:`JobCancelled` once someone cancelled the job), and returns what the
job's ``result`` shows. A handler must be safe to run again from the start: that is how an interrupted job is
resumed. It raises :class:`JobFailed` (with a result) for an outcome users should read as a failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mosaic.config import JobSettings
from mosaic.jobs.store import JobState, JobStore, JobView

log = logging.getLogger("mosaic.jobs")

PROGRESS_INTERVAL = 0.5
"""Seconds between two progress writes of one job (a phase change is written at once)."""


class JobCancelled(Exception):
    """The job was cancelled while it ran; raised by :meth:`JobContext.progress`."""


class JobInterrupted(Exception):
    """This node is stopping: the job goes back to the queue (any node resumes it); raised by progress()."""


class JobFailed(Exception):
    """The job ended in failure; ``result`` says how far it got."""

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result or {}


class JobContext:
    """What a running job sees: its row, and where it reports progress."""

    def __init__(self, store: JobStore, job: JobView,
                 on_progress: Callable[[str, int, int], None] | None = None,
                 stopping: threading.Event | None = None) -> None:
        self.store = store
        self.job = job
        self.on_progress = on_progress
        self.stopping = stopping or threading.Event()
        self._last = 0.0
        self._phase = ""

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def progress(self, phase: str, done: int, total: int) -> None:
        if self.stopping.is_set():
            raise JobInterrupted(f"job {self.job.id}: this node is stopping")
        if self.on_progress is not None:
            self.on_progress(phase, done, total)
        now = time.monotonic()
        if phase == self._phase and now - self._last < PROGRESS_INTERVAL and done < total:
            return
        self._phase, self._last = phase, now
        answer = self.store.report(self.job.id, phase, done, total)
        if answer == "cancel":
            raise JobCancelled(f"job {self.job.id} was cancelled")
        if answer == "lost":
            raise JobInterrupted(f"job {self.job.id} was taken over by another node (this one was taken for "
                                 "stopped)")


Handler = Callable[[JobContext], dict[str, Any]]


class JobRunner:
    """``jobs.workers`` threads that run queued jobs of the kinds with a handler."""

    def __init__(self, store: JobStore, settings: JobSettings) -> None:
        self.store = store
        self.settings = settings
        self.handlers: dict[str, Handler] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    # --- running one job --------------------------------------------------------------------

    def run_now(self, job: JobView, on_progress: Callable[[str, int, int], None] | None = None) -> JobView:
        """Run a job submitted ``here`` in this thread (a command's foreground run); the job as it ended."""
        if job.state != JobState.RUNNING or job.node != self.store.node:
            raise ValueError(f"job {job.id} is not this process's to run (submit it with here=True)")
        return self._execute(job, on_progress)

    def _execute(self, job: JobView, on_progress: Callable[[str, int, int], None] | None = None) -> JobView:
        handler = self.handlers[job.kind]
        with self._lock:
            self._running.add(job.id)
        beating = None
        if not self._threads:  # no watch thread in this process (a CLI run): keep this job's heartbeat here
            beating = threading.Event()
            threading.Thread(target=self._beat, args=(job.id, beating), name="job-heartbeat", daemon=True).start()
        log.info("job %s (%s) started, attempt %d", job.id, job.kind, job.attempts)
        try:
            result = handler(JobContext(self.store, job, on_progress, self._stopping))
            if not self.store.finish(job.id, JobState.DONE, result):
                log.warning("job %s finished here after another node took it over; its run there stands", job.id)
        except JobInterrupted:
            log.info("job %s goes back to the queue: this node is stopping", job.id)
            self.store.requeue(job.id, "interrupted: its node was stopped")
        except KeyboardInterrupt:  # Ctrl+C on a command's foreground run: the user stopped it, nobody resumes it
            self.store.finish(job.id, JobState.CANCELLED, {}, "interrupted by the user (Ctrl+C)")
            raise
        except JobCancelled as exc:
            log.info("job %s cancelled", job.id)
            self.store.finish(job.id, JobState.CANCELLED, {}, str(exc))
        except JobFailed as exc:
            log.warning("job %s failed: %s", job.id, exc)
            self.store.finish(job.id, JobState.FAILED, exc.result, str(exc))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self.store.finish(job.id, JobState.FAILED, {}, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running.discard(job.id)
            if beating is not None:
                beating.set()
        finished = self.store.get(job.id)
        assert finished is not None
        return finished

    # --- the background workers -------------------------------------------------------------

    def wake(self) -> None:
        """A job was submitted on this node: look now, not at the next poll."""
        self._wake.set()

    def start(self) -> None:
        """The workers (``jobs.workers``) and the watch thread (heartbeats, taking back interrupted jobs)."""
        if self._threads:
            return
        self._stopping.clear()
        self._threads = [threading.Thread(target=self._work, name=f"job-worker-{number}", daemon=True)
                         for number in range(self.settings.workers)]
        self._threads.append(threading.Thread(target=self._keep_watch, name="job-watch", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []

    def _work(self) -> None:
        while not self._stopping.is_set():
            job = self._claim_quietly()
            if job is not None:
                self._execute(job)
                continue
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    def _keep_watch(self) -> None:
        every = max(1.0, self.settings.stale_seconds / 4)
        while not self._stopping.is_set():
            self._watch()
            self._stopping.wait(every)

    def _beat(self, job_id: str, done: threading.Event) -> None:
        while not done.wait(max(1.0, self.settings.stale_seconds / 4)):
            try:
                self.store.heartbeat({job_id})
            except Exception:
                log.exception("jobs: cannot record the heartbeat of job %s", job_id)

    def _watch(self) -> None:
        try:
            with self._lock:
                running = set(self._running)
            self.store.heartbeat(running)
            if self.store.recover():
                self._wake.set()
        except Exception:
            log.exception("jobs: cannot check for interrupted jobs")

    def _claim_quietly(self) -> JobView | None:
        if not self.handlers:
            return None
        try:
            return self.store.claim(list(self.handlers))
        except Exception:
            log.exception("jobs: cannot claim a queued job")
            return None
