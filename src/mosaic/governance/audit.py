"""The audit trail: every access to patient data and every change, append-only and hash-chained.

Doors call :meth:`AuditTrail.record`, which only queues the entry: a writer thread appends queued entries in
batches, each record's ``hash`` covering its fields and the previous record's hash, the chain's head kept in
``audit_cursor('chain')``. So auditing never makes a clinical request wait for the index, and a failed write is
retried, never dropped (entries queued at a crash are the only ones at risk; ``stop()`` writes the queue out).
Several processes and nodes append to one chain: the head row is locked for each batch. ``verify()`` walks
the chain and names the first record that was edited, removed or reordered. The chain is anchored outside the
index by signed checkpoints (``audit_anchor``): each writer signs the last record it committed, and ``verify()``
checks that every checkpointed record is still there with that hash, so cutting records off the end or
rewriting a record and recomputing the later hashes is found too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from mosaic.governance.audit_anchor import Checkpoint
from mosaic.governance.audit_entry import AuditAction as AuditAction
from mosaic.governance.audit_entry import AuditEntry as AuditEntry
from mosaic.governance.audit_journal import AuditJournal
from mosaic.index.database import Database
from mosaic.index.schema import AuditCursor, AuditRecord

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from mosaic.governance.audit_anchor import AuditAnchor

log = logging.getLogger("mosaic.audit")

GENESIS = "0" * 64
CHAIN = "chain"


_COALESCED = (("store", "dimse"), ("store", "cli"))
"""Instances stored one by one over an association (or an import) are recorded per series, as PS3.15's 'DICOM
Instances Transferred' does: one record naming every SOP Instance UID, instead of one record each."""


def coalesce(entries: list[AuditEntry]) -> list[AuditEntry]:
    """Merge the queued per-instance store entries of one sender, series and outcome into one record."""
    merged: list[AuditEntry] = []
    groups: dict[tuple[Any, ...], AuditEntry] = {}
    for entry in entries:
        if (entry.action, entry.interface) not in _COALESCED or not entry.SOPInstanceUID:
            merged.append(entry)
            continue
        key = (entry.action, entry.interface, entry.outcome, entry.actor, entry.address, entry.PatientID,
               entry.IssuerOfPatientID, entry.StudyInstanceUID, entry.SeriesInstanceUID)
        group = groups.get(key)
        if group is None:
            group = groups[key] = AuditEntry(
                action=entry.action, outcome=entry.outcome, actor=entry.actor, actor_kind=entry.actor_kind,
                roles=entry.roles, address=entry.address, interface=entry.interface, PatientID=entry.PatientID,
                IssuerOfPatientID=entry.IssuerOfPatientID, StudyInstanceUID=entry.StudyInstanceUID,
                SeriesInstanceUID=entry.SeriesInstanceUID, recorded_at=entry.recorded_at,
                detail={key: value for key, value in entry.detail.items() if key != "outcome"} | {"instances": []})
            merged.append(group)
        group.detail["instances"].append(
            {"SOPInstanceUID": entry.SOPInstanceUID, **({"outcome": entry.detail["outcome"]}
                                                         if "outcome" in entry.detail else {})})
    for group in groups.values():
        instances = group.detail["instances"]
        if len(instances) == 1:  # a single instance keeps its own record shape
            group.SOPInstanceUID = instances[0]["SOPInstanceUID"]
            group.detail.pop("instances")
            if "outcome" in instances[0]:
                group.detail["outcome"] = instances[0]["outcome"]
        else:
            group.detail["count"] = len(instances)
    return merged


QUERY_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1"
"""Explicit VR Little Endian: how a C-FIND identifier is kept in its audit record."""


def query_detail(identifier: Dataset, sop_class_uid: str) -> dict[str, str]:
    """What PS3.15's Query message names: the SOP Class queried and the query data set itself (base64 of its
    Explicit VR Little Endian encoding), kept in the record's detail."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    try:
        write_dataset(buffer, identifier)
    except Exception as exc:  # an identifier pydicom cannot write again: say so, keep the rest of the record
        return {"SOPClassUID": sop_class_uid, "identifier_error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"SOPClassUID": sop_class_uid, "identifier": base64.b64encode(buffer.getvalue()).decode(),
            "TransferSyntaxUID": QUERY_TRANSFER_SYNTAX}


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def record_hash(seq: int, recorded_at: datetime, values: dict[str, Any], previous_hash: str) -> str:
    """SHA-256 over the record's canonical form (seq, UTC time to the microsecond, every field, previous hash)."""
    canonical = [seq, _naive_utc(recorded_at).strftime("%Y-%m-%dT%H:%M:%S.%f"),
                 *(values[name] for name in _HASHED), previous_hash]
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


_HASHED = ("actor", "actor_kind", "roles", "address", "interface", "action", "outcome", "PatientID",
           "IssuerOfPatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "break_glass", "detail")
_WIDTHS = {"actor": 128, "actor_kind": 16, "roles": 256, "address": 64, "interface": 16, "action": 32,
           "outcome": 16, "PatientID": 64, "IssuerOfPatientID": 64, "StudyInstanceUID": 64,
           "SeriesInstanceUID": 64, "SOPInstanceUID": 64}


_INSERT_RECORD = insert(cast(Table, AuditRecord.__table__))


def _values(entry: AuditEntry) -> dict[str, Any]:
    values: dict[str, Any] = {name: str(getattr(entry, name) or "")[:width] for name, width in _WIDTHS.items()}
    values["break_glass"] = bool(entry.break_glass)
    values["detail"] = json.dumps(entry.detail, ensure_ascii=False, sort_keys=True, default=str) if entry.detail \
        else ""
    return values


def records_after(database: Database, seq: int, limit: int) -> list[AuditRecord]:
    """The next ``limit`` records of the chain after ``seq``, in order (read, not locked)."""
    with database.session() as session:
        return list(session.scalars(select(AuditRecord).where(AuditRecord.seq > seq)
                                    .order_by(AuditRecord.seq).limit(limit)))


def row_values(row: AuditRecord) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _HASHED}


@dataclass
class ChainReport:
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""
    checkpoints: int = 0
    """Signed checkpoints that match the chain."""
    anchored_seq: int = 0
    """The newest record a matching checkpoint names: records after it could still be cut off undetected."""
    bad_checkpoint_line: int | None = None
    """The anchor-file line that is not a validly signed checkpoint (forged, altered, unknown key)."""

    @property
    def intact(self) -> bool:
        return self.first_bad_seq is None and self.bad_checkpoint_line is None


class AuditTrail:
    """Queues entries and appends them to the hash chain from a writer thread."""

    def __init__(self, database: Database, *, batch_size: int = 2000, linger: float = 0.25,
                 journal: Path | None = None, anchor: AuditAnchor | None = None) -> None:
        self.database = database
        self.anchor = anchor
        """Signs checkpoints of what this trail's writer committed (None: the chain is not anchored)."""
        self.batch_size = batch_size
        self.linger = linger
        self.journal_folder = journal
        """Where queued entries are journaled until written (``audit_journal``); None: not journaled."""
        self._journal: AuditJournal | None = None
        """How long the writer gathers entries before one transaction appends them (one commit, not one per
        entry: on SQLite each commit is an fsync that C-STORE would wait behind)."""
        self._queue: queue.Queue[AuditEntry] = queue.Queue()
        self._pending = 0
        self._pending_lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.listeners: list[Callable[[], None]] = []
        """Called after each batch is written (the syslog forwarder wakes up)."""

    # --- writing ----------------------------------------------------------------------------

    def record(self, entry: AuditEntry) -> None:
        """Queue ``entry``; never blocks on the index. Without a running writer, it is written at once."""
        if self._thread is None:
            self._write([entry])
            if self.anchor is not None:
                self.anchor.checkpoint()
            return
        journal = self._journal
        line = journal.encode(entry) if journal is not None else b""
        with self._pending_lock:  # journal order is queue order: a batch is always the journal's oldest entries
            self._pending += 1
            if journal is not None:
                journal.append(line)
            self._queue.put(entry)

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.anchor is not None:
            self.anchor.open()
        if self.journal_folder is not None:
            self._journal = AuditJournal(self.journal_folder)
            self._recover(self._journal)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self.flush()
        self._stopping.set()
        self._thread.join(timeout=10)
        self._thread = None
        self.checkpoint()
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def checkpoint(self) -> bool:
        """Anchor now what this process committed and has not anchored yet (at stop, and for tests)."""
        return self.anchor is not None and self.anchor.checkpoint()

    def _recover(self, journal: AuditJournal) -> None:
        """Write what stopped processes of this host had queued but not written (see ``audit_journal``)."""

        def write(entries: list[AuditEntry]) -> None:
            for entry in entries:
                entry.detail["recovered"] = "queued by a process that stopped before writing it"
            self._write(coalesce(entries))

        journal.recover(write)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued entry is in the index (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._pending_lock:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._pending_lock.wait(remaining)
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            if self.anchor is not None:
                self.anchor.checkpoint_if_due()
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.linger
            while len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            entries = coalesce(batch)
            while True:
                try:
                    self._write(entries)
                    break
                except Exception:
                    # the index is unreachable or busy: keep the entries and try again
                    log.exception("audit: cannot append %d records yet; retrying", len(batch))
                    time.sleep(1.0)
            with self._pending_lock:
                self._pending -= len(batch)
                if self._journal is not None:
                    self._journal.mark_committed(len(batch))
                self._pending_lock.notify_all()
            for listener in self.listeners:
                listener()
            if self.anchor is not None:
                self.anchor.checkpoint_if_due()

    def _write(self, entries: list[AuditEntry]) -> None:
        appended: list[tuple[int, str]] = []

        def append(session: Session) -> None:
            appended.clear()
            head = session.scalar(select(AuditCursor).where(AuditCursor.name == CHAIN).with_for_update())
            if head is None:  # the first writer creates the head (a racing second one retries and finds it)
                head = AuditCursor(name=CHAIN, seq=0, hash=GENESIS, updated_at=datetime.now(UTC))
                session.add(head)
            seq, previous = head.seq, head.hash
            rows: list[dict[str, Any]] = []
            for entry in entries:
                seq += 1
                values = _values(entry)
                digest = record_hash(seq, entry.recorded_at, values, previous)
                rows.append({"seq": seq, "recorded_at": _naive_utc(entry.recorded_at), **values,
                             "previous_hash": previous, "hash": digest})
                previous = digest
            if rows:  # one executemany, not an ORM object per record: a busy node writes thousands a second
                session.execute(_INSERT_RECORD, rows)
            head.seq, head.hash, head.updated_at = seq, previous, datetime.now(UTC)
            appended.append((seq, previous))

        self.database.write(append)
        if self.anchor is not None and appended and entries:
            self.anchor.committed(*appended[-1])

    # --- reading ----------------------------------------------------------------------------

    def search(self, *, patient_id: str | None = None, user: str | None = None, study: str | None = None,
               action: str | None = None, since: datetime | None = None, until: datetime | None = None,
               limit: int = 100, offset: int = 0) -> tuple[list[AuditRecord], int]:
        """Records matching every given filter, newest first, and how many match in all."""
        statement = select(AuditRecord)
        if patient_id:
            statement = statement.where(AuditRecord.PatientID == patient_id)
        if user:
            statement = statement.where(AuditRecord.actor == user)
        if study:
            statement = statement.where(AuditRecord.StudyInstanceUID == study)
        if action:
            statement = statement.where(AuditRecord.action == action)
        if since:
            statement = statement.where(AuditRecord.recorded_at >= _naive_utc(since))
        if until:
            statement = statement.where(AuditRecord.recorded_at <= _naive_utc(until))
        with self.database.session() as session:
            total = int(session.scalar(select(func.count()).select_from(statement.subquery())) or 0)
            rows = session.scalars(statement.order_by(AuditRecord.seq.desc()).offset(offset).limit(limit)).all()
        return list(rows), total

    def total(self) -> int:
        with self.database.session() as session:
            return int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)

    def _walk(self, page: int = 2000) -> Iterator[AuditRecord]:
        last = -1
        while True:
            with self.database.session() as session:
                rows = list(session.scalars(select(AuditRecord).where(AuditRecord.seq > last)
                                            .order_by(AuditRecord.seq).limit(page)))
            yield from rows
            if len(rows) < page:
                return
            last = rows[-1].seq

    def verify(self, progress: Callable[[int], None] | None = None,
               anchor_files: list[Path] | None = None) -> ChainReport:
        """Walk the chain from its first record and check it against every signed checkpoint (of this node's
        anchor file and ``anchor_files``); the report names the first record edited, removed or moved, or the
        checkpoint line that is not validly signed."""
        reading = self.anchor.read(anchor_files) if self.anchor is not None else None
        if reading is not None and reading.bad_line is not None:
            return ChainReport(0, reason=reading.reason, bad_checkpoint_line=reading.bad_line)
        anchors: dict[int, list[Checkpoint]] = {}
        for checkpoint in reading.checkpoints if reading is not None else []:
            anchors.setdefault(checkpoint.seq, []).append(checkpoint)
        matched, anchored = 0, 0
        expected_seq, previous, checked = 1, GENESIS, 0
        for row in self._walk():
            if row.seq != expected_seq:
                return ChainReport(checked, expected_seq, f"record {expected_seq} is missing (the next record is "
                                                          f"{row.seq})" if row.seq > expected_seq else
                                   f"record {row.seq} is out of order")
            if row.previous_hash != previous:
                return ChainReport(checked, row.seq, f"record {row.seq} does not follow record {row.seq - 1} "
                                                     "(removed, inserted or reordered records)")
            if record_hash(row.seq, row.recorded_at, row_values(row), row.previous_hash) != row.hash:
                return ChainReport(checked, row.seq, f"record {row.seq} was changed after it was written "
                                                     "(its hash does not match its content)")
            for checkpoint in anchors.get(row.seq, ()):
                if checkpoint.hash != row.hash:
                    return ChainReport(checked, anchored + 1, f"records {anchored + 1}…{row.seq} were rewritten "
                                       f"(record {row.seq}'s hash differs from the one signed in the checkpoint "
                                       f"on line {checkpoint.line} by {checkpoint.node} at {checkpoint.at})",
                                       matched, anchored)
                matched, anchored = matched + 1, row.seq
            previous = row.hash
            expected_seq += 1
            checked += 1
            if progress is not None:
                progress(1)
        with self.database.session() as session:
            head = session.scalar(select(AuditCursor).where(AuditCursor.name == CHAIN))
        if head is not None and (head.seq != expected_seq - 1 or head.hash != previous):
            return ChainReport(checked, expected_seq, f"records {expected_seq}…{head.seq} were removed from the end "
                                                      f"(the chain head names record {head.seq})", matched, anchored)
        beyond = [checkpoint for seq, found in anchors.items() if seq >= expected_seq for checkpoint in found]
        if beyond:
            last = max(beyond, key=lambda checkpoint: checkpoint.seq)
            return ChainReport(checked, expected_seq, f"records {expected_seq}…{last.seq} were removed from the end "
                               f"(the checkpoint on line {last.line}, signed by {last.node} at {last.at}, names "
                               f"record {last.seq}; the chain and its head stop at {expected_seq - 1})",
                               matched, anchored)
        return ChainReport(checked, checkpoints=matched, anchored_seq=anchored)
