"""The retention schedule of ``mosaic serve``: a thread that queues a retention run (a job,
:mod:`mosaic.retention.runs`) every ``retention.schedule_hours``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from mosaic.retention.service import RetentionBusy

log = logging.getLogger("mosaic.retention")


class RetentionScheduler:
    """Starts a retention run every ``schedule_hours`` in ``mosaic serve`` (first one interval, at most ten minutes,
    after start) through ``submit`` (which queues it as a job; :class:`RetentionBusy` while one is going on)."""

    def __init__(self, submit: Callable[[str], Any], hours: float) -> None:
        self.submit = submit
        self.interval = hours * 3600
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None or self.interval <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=60)
        self._thread = None

    def _loop(self) -> None:
        wait = min(self.interval, 600.0)
        while not self._stop.wait(wait):
            wait = self.interval
            try:
                self.submit("schedule")
            except RetentionBusy:
                log.info("scheduled retention run skipped: another run is queued or in progress")
            except Exception:
                log.exception("scheduled retention run could not be started; retrying at the next interval")
