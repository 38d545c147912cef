"""Study availability: a study no instance has reached for ``workflow.study_stable_seconds`` is announced once,
as a ``StudyAvailable`` event in the outbox, and again after a later change has settled.

The sweeper asks the index for studies not announced since their last change (``Study.available_at`` NULL, set
back to NULL by ingest with every stored or replaced instance) whose last change is old enough, oldest first,
over one index (``ix_study_unannounced``); it never reads instances. Each study is announced in one transaction:
a conditional update (still unannounced, still the change it saw) marks it, and the event is written with it,
so sweepers on several nodes announce a study once, and a study that changed meanwhile waits for its next
stable period. The consumers (``hl7.outbound``, ``fhir.notifications``) read the announcements with
:meth:`StudyAvailability.consumer`: an outbox consumer of their own that starts at the end of the outbox the
first time.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mosaic.config import WorkflowSettings
from mosaic.core.events import EventType
from mosaic.core.times import as_utc
from mosaic.index.database import Database
from mosaic.index.schema import AuditCursor, Event, Patient, ScheduledStep, Study
from mosaic.jobs.outbox import OutboxConsumer

log = logging.getLogger("mosaic.availability")


@dataclass(frozen=True)
class StudyAvailable:
    """One announcement: the study as it was when it became stable (the ``StudyAvailable`` event's payload)."""

    seq: int
    announced_at: datetime
    StudyInstanceUID: str
    PatientID: str
    IssuerOfPatientID: str
    AccessionNumber: str
    StudyDate: str
    StudyTime: str
    StudyDescription: str
    NumberOfStudyRelatedSeries: int
    NumberOfStudyRelatedInstances: int
    ModalitiesInStudy: tuple[str, ...]

    @classmethod
    def of(cls, event: Event) -> StudyAvailable:
        payload: dict[str, Any] = json.loads(event.payload or "{}")
        return cls(
            seq=event.seq, announced_at=as_utc(event.created_at), StudyInstanceUID=event.StudyInstanceUID,
            PatientID=event.PatientID, IssuerOfPatientID=event.IssuerOfPatientID,
            AccessionNumber=str(payload.get("AccessionNumber", "")), StudyDate=str(payload.get("StudyDate", "")),
            StudyTime=str(payload.get("StudyTime", "")), StudyDescription=str(payload.get("StudyDescription", "")),
            NumberOfStudyRelatedSeries=int(payload.get("NumberOfStudyRelatedSeries", 0)),
            NumberOfStudyRelatedInstances=int(payload.get("NumberOfStudyRelatedInstances", 0)),
            ModalitiesInStudy=tuple(payload.get("ModalitiesInStudy", ())))


@dataclass(frozen=True)
class AnnouncedPatient:
    """The patient of an announcement as the index knows them now (ADT may have changed them since)."""

    PatientName: str
    PatientBirthDate: str
    PatientSex: str


@dataclass(frozen=True)
class AnnouncedOrder:
    """The order (a scheduled step from HL7 ORM) an announced study was made for, when the worklist knows it."""

    placer_order: str
    filler_order: str
    RequestedProcedureCode: str
    RequestedProcedureDescription: str


class StudyAvailability:
    """Announces studies that have become stable (a thread in ``mosaic serve``) and reads the announcements."""

    def __init__(self, database: Database, settings: WorkflowSettings, *, batch: int = 100) -> None:
        self.database = database
        self.settings = settings
        self.batch = batch
        self.listeners: list[Callable[[], None]] = []
        """Called after announcements were written (the consumers' ``wake``)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        """Seconds between sweeps: ``workflow.sweep_seconds``, shorter when the stable time is."""
        return max(0.05, min(self.settings.sweep_seconds, self.settings.study_stable_seconds / 4))

    def start(self) -> None:
        if self.settings.study_stable_seconds <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="study-availability", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception:
                log.exception("study availability sweep failed; trying again in %.1f s", self.interval)

    def sweep(self, now: datetime | None = None) -> int:
        """Announce every study whose last change is ``study_stable_seconds`` before ``now`` and that was not
        announced since; the number announced."""
        now = now or datetime.now(UTC)
        stable_since = now - timedelta(seconds=self.settings.study_stable_seconds)
        announced = 0
        while not self._stop.is_set():
            with self.database.session() as session:
                due = session.execute(
                    select(Study.pk, Study.updated_at).where(Study.available_at.is_(None),
                                                             Study.updated_at <= stable_since)
                    .order_by(Study.updated_at, Study.pk).limit(self.batch)).all()
            for pk, seen in due:
                if self.database.write(functools.partial(self._announce, pk=pk, seen=seen, now=now)):
                    announced += 1
            if announced:
                for listener in self.listeners:
                    listener()
            if len(due) < self.batch:
                break
        return announced

    @staticmethod
    def _announce(session: Session, pk: int, seen: datetime, now: datetime) -> bool:
        """Mark the study announced and write its event, unless it changed or was announced meanwhile."""
        marked = session.execute(
            update(Study).where(Study.pk == pk, Study.available_at.is_(None), Study.updated_at == seen)
            .values(available_at=now).execution_options(synchronize_session=False))
        if getattr(marked, "rowcount", 0) != 1:
            return False
        _serialise_announcements(session, now)
        row = session.execute(select(Study, Patient.PatientID, Patient.IssuerOfPatientID)
                              .join(Patient, Study.patient_pk == Patient.pk).where(Study.pk == pk)).one()
        study: Study = row[0]
        payload = {
            "AccessionNumber": study.AccessionNumber, "StudyDate": study.StudyDate, "StudyTime": study.StudyTime,
            "StudyDescription": study.StudyDescription,
            "NumberOfStudyRelatedSeries": study.NumberOfStudyRelatedSeries,
            "NumberOfStudyRelatedInstances": study.NumberOfStudyRelatedInstances,
            "ModalitiesInStudy": [value for value in study.ModalitiesInStudy.split("\\") if value],
        }
        session.add(Event(type=EventType.STUDY_AVAILABLE.value, created_at=now, PatientID=row[1],
                          IssuerOfPatientID=row[2], StudyInstanceUID=study.StudyInstanceUID,
                          payload=json.dumps(payload)))
        return True

    # --- what the consumers read ------------------------------------------------------------

    def announcements_after(self, seq: int, limit: int) -> list[StudyAvailable]:
        with self.database.session() as session:
            events = session.scalars(select(Event).where(Event.seq > seq,
                                                         Event.type == EventType.STUDY_AVAILABLE.value)
                                     .order_by(Event.seq).limit(limit)).all()
        return [StudyAvailable.of(event) for event in events]

    def last_seq(self) -> int:
        """The newest event of the outbox (0 when empty): where a new consumer starts."""
        with self.database.session() as session:
            return int(session.scalar(select(func.max(Event.seq))) or 0)

    def consumer(self, name: str, deliver: Callable[[StudyAvailable], None], *,
                 on_failure: Callable[[Exception, float], None] | None = None, retry_seconds: float = 5.0,
                 max_retry_seconds: float | None = None,
                 thread_name: str = "") -> OutboxConsumer[StudyAvailable]:
        """An outbox consumer of the announcements under the cursor ``name``; created at the end of the outbox (a
        new receiver is not sent the archive's past), then moved past each announcement delivered."""
        consumer: OutboxConsumer[StudyAvailable] = OutboxConsumer(
            self.database, name, read=self.announcements_after, deliver=deliver,
            position=lambda announcement: (announcement.seq, ""), on_failure=on_failure,
            retry_seconds=retry_seconds, max_retry_seconds=max_retry_seconds, batch=50,
            thread_name=thread_name, initial=self.last_seq)
        self.listeners.append(consumer.wake)
        return consumer

    def forget(self, consumer: OutboxConsumer[StudyAvailable]) -> None:
        """Stop waking a consumer that was stopped."""
        if consumer.wake in self.listeners:
            self.listeners.remove(consumer.wake)

    def patient(self, patient_id: str, issuer: str) -> AnnouncedPatient | None:
        with self.database.session() as session:
            row = session.execute(select(Patient.PatientName, Patient.PatientBirthDate, Patient.PatientSex)
                                  .where(Patient.PatientID == patient_id,
                                         Patient.IssuerOfPatientID == issuer)).first()
        return None if row is None else AnnouncedPatient(row[0], row[1], row[2])

    def order(self, announcement: StudyAvailable) -> AnnouncedOrder | None:
        """The order of the study: by its Study Instance UID, else by accession for the same patient."""
        with self.database.session() as session:
            columns = (ScheduledStep.placer_order, ScheduledStep.filler_order, ScheduledStep.RequestedProcedureCode,
                       ScheduledStep.RequestedProcedureDescription)
            row: Sequence[Any] | None = session.execute(
                select(*columns).where(ScheduledStep.StudyInstanceUID == announcement.StudyInstanceUID)
                .order_by(ScheduledStep.pk).limit(1)).first()
            if row is None and announcement.AccessionNumber:
                row = session.execute(
                    select(*columns).where(ScheduledStep.AccessionNumber == announcement.AccessionNumber,
                                           ScheduledStep.PatientID == announcement.PatientID,
                                           ScheduledStep.IssuerOfPatientID == announcement.IssuerOfPatientID)
                    .order_by(ScheduledStep.pk).limit(1)).first()
        return None if row is None else AnnouncedOrder(row[0], row[1], row[2], row[3])


ANNOUNCE_LOCK = "lock:announcements"
"""The ``audit_cursor`` row every announcing transaction locks before it writes its event."""


def _serialise_announcements(session: Session, now: datetime) -> None:
    """Announcements commit in the order of their ``seq``: each announcing transaction locks one row first.

    A consumer moves its cursor past the announcements it has read; on PostgreSQL two sweepers' transactions could
    otherwise take seq 7 and 8 and commit 8 first, and a consumer reading then would pass 7 before it is visible.
    (SQLite's writers are serial already; FOR UPDATE is a no-op there.)"""
    held = session.execute(select(AuditCursor.name).where(AuditCursor.name == ANNOUNCE_LOCK).with_for_update())
    if held.first() is None:  # the first announcement creates it (a racing creator's transaction is retried)
        session.add(AuditCursor(name=ANNOUNCE_LOCK, seq=0, hash="", updated_at=now))
        session.flush()
