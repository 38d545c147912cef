"""A consumer of an append-only table with a durable cursor: the table is the queue.

Rows are read after the consumer's cursor (a named row of ``audit_cursor``: ``seq`` and, for a hash chain, the
hash of the last row delivered), delivered one by one by a handler, and the cursor is moved past what was
delivered, also when delivery stops halfway. No transaction is open while the handler delivers, so a slow or
stuck destination delays only this consumer, never the writers of the table. The move is a conditional update
from the position read: consumers of one name on several nodes never move it backwards, and deliver each row at
least once (two racing may both deliver one), in order, never dropping any. A failure is retried after
``retry_seconds``, doubling up to ``max_retry_seconds`` while it goes on; :meth:`OutboxConsumer.wake` (a writer's
notification) ends the idle wait at once.

Its users, each under a cursor name of its own: the audit trail's syslog forwarder
(:class:`~mosaic.governance.audit_export.SyslogForwarder`), and the consumers of the "study available"
announcements (:mod:`mosaic.services.availability`): each HL7 receiver (``hl7:<name>``) and each FHIR
Subscription (``fhir:<pk>``). Routing and edge sync are meant to be others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Generic, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mosaic.index.database import Database
from mosaic.index.schema import AuditCursor

log = logging.getLogger("mosaic.outbox")

Row = TypeVar("Row")

RESERVED = frozenset({"chain"})
"""Cursor names that are not a consumer's: ``chain`` is the audit trail's head (:mod:`mosaic.governance.audit`);
names beginning ``lock:`` are rows writers lock (``lock:announcements``, :mod:`mosaic.services.availability`)."""


class OutboxConsumer(Generic[Row]):
    """Delivers every row after its cursor, in order, with ``deliver``; resumes where it stopped.

    ``read(seq, limit)`` returns the next ``limit`` rows after ``seq`` in order; ``position(row)`` is the row's
    ``(seq, hash)`` (hash ``""`` when the table has none); ``before`` runs ahead of each batch (e.g. sending what
    is queued in memory); ``on_failure(exc, delay)`` reports a failed attempt (default: logged with its
    traceback) before the consumer waits ``delay`` seconds and tries again. ``initial()`` is the seq a cursor
    created now starts after (default 0: every row of the table; a consumer added to a running archive may
    start at the end instead); such a cursor is created by :meth:`start`, before any row can be appended that
    the consumer must not miss.
    """

    def __init__(self, database: Database, name: str, *, read: Callable[[int, int], Sequence[Row]],
                 deliver: Callable[[Row], None], position: Callable[[Row], tuple[int, str]],
                 before: Callable[[], None] | None = None,
                 on_failure: Callable[[Exception, float], None] | None = None, retry_seconds: float = 5.0,
                 max_retry_seconds: float | None = None, batch: int = 200, idle_seconds: float = 1.0,
                 thread_name: str = "", initial: Callable[[], int] | None = None) -> None:
        if name in RESERVED or name.startswith("lock:") or not name or len(name) > 64:
            raise ValueError(f"{name!r} cannot name an outbox cursor (1-64 characters, not {', '.join(RESERVED)})")
        self.database = database
        self.name = name
        self.read = read
        self.deliver = deliver
        self.position = position
        self.before = before
        self.on_failure = on_failure
        self.initial = initial
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max(max_retry_seconds or retry_seconds, retry_seconds)
        self.batch = batch
        self.idle_seconds = idle_seconds
        self.thread_name = thread_name or f"outbox-{name}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.initial is not None:
            self.cursor()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for new rows now (a writer appended some) instead of at the end of the idle wait."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self.before is not None:
                    self.before()
                more = self.deliver_batch()
            except Exception as exc:
                delay = min(self.retry_seconds * 2 ** min(failures, 32), self.max_retry_seconds)
                failures += 1
                if self.on_failure is not None:
                    self.on_failure(exc, delay)
                else:
                    log.exception("outbox %s: delivery failed; retrying in %.1f s", self.name, delay)
                self._stop.wait(delay)
                continue
            failures = 0
            if not more:
                self._wake.wait(self.idle_seconds)
                self._wake.clear()

    def deliver_batch(self, size: int | None = None) -> bool:
        """Deliver the next rows after the cursor; the cursor moves past what was delivered, also when delivery
        stops halfway (the failure is raised after). True if there may be more."""
        size = size or self.batch
        seq = self.cursor()
        rows = self.read(seq, size)
        delivered: Row | None = None
        try:
            for row in rows:
                self.deliver(row)
                delivered = row
        finally:
            if delivered is not None:
                self._advance(seq, *self.position(delivered))
        return len(rows) == size

    def cursor(self) -> int:
        """The seq of the last row delivered (0, and the cursor created, the first time)."""
        with self.database.session() as session:
            seq = session.scalar(select(AuditCursor.seq).where(AuditCursor.name == self.name))
        if seq is not None:
            return int(seq)

        start = self.initial() if self.initial is not None else 0

        def create(session: Session) -> int:
            existing = session.get(AuditCursor, self.name)
            if existing is not None:
                return int(existing.seq)
            session.add(AuditCursor(name=self.name, seq=start, hash="", updated_at=datetime.now(UTC)))
            return start

        return self.database.write(create)

    def _advance(self, seq: int, to_seq: int, to_hash: str) -> None:
        """Move the cursor from ``seq`` to ``to_seq`` (unless another node's consumer moved it meanwhile)."""
        self.database.write(lambda session: session.execute(
            update(AuditCursor).where(AuditCursor.name == self.name, AuditCursor.seq == seq)
            .values(seq=to_seq, hash=to_hash, updated_at=datetime.now(UTC))))
