"""The one ingest path: C-STORE, STOW-RS, uploads, imports and migration all call :class:`IngestService`.

parse → validate → access check → coerce → (duplicate check) → store blob (phase one) → index rows + outbox event in
one transaction → commit blob (phase two), or revoke the blob when anything after phase one fails → audit record.

Every door says who is at it with an :class:`~mosaic.services.origin.IngestOrigin`; ingest asks the access policy
of it and writes the store's audit record, once per object, whatever the door. Objects that arrive as something
else than DICOM (a PDF, a photo or video, an HL7 report) are built into their IOD (Encapsulated PDF, VL
Photographic, …) by a builder beside this module, which hands ``store`` the Part 10 bytes: HL7 reports by
:mod:`mosaic.services.reports` (Basic Text SR, Encapsulated PDF).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, case, select, update
from sqlalchemy import exc as sql_errors
from sqlalchemy.orm import Session

from mosaic.config import DuplicatePolicy, IngestSettings
from mosaic.core.dicom import ParsedInstance, metadata_json, parse_instance
from mosaic.core.errors import DuplicateInstance, InstanceMismatch, InvalidObject, StorageFailure
from mosaic.core.events import EventType
from mosaic.core.status import StorageStatus
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail
from mosaic.governance.policy import AccessPolicy, Permission
from mosaic.index.attributes import (
    DEMOGRAPHIC_KEYS,
    INSTANCE_KEYS,
    PATIENT_KEYS,
    SERIES_KEYS,
    STUDY_KEYS,
    column_values,
    column_widths,
)
from mosaic.index.database import Database
from mosaic.index.schema import (
    Event,
    Instance,
    InstanceVersion,
    Patient,
    PatientAlias,
    ScheduledStep,
    Series,
    Study,
)
from mosaic.services.metrics import INGEST_BYTES, INGEST_SECONDS, INGEST_TOTAL
from mosaic.services.origin import IngestOrigin
from mosaic.storage.base import BlobStore, StoredBlob, sha256_of

log = logging.getLogger("mosaic.ingest")

_WIDTHS = {model: column_widths(model) for model in (Patient, Study, Series, Instance)}

# prepared once: the hot path binds parameters instead of building statements per instance
_instance, _series, _study, _patient, _event = (
    cast(Table, model.__table__) for model in (Instance, Series, Study, Patient, Event))
_FIND_INSTANCE = select(_instance.c.pk).where(_instance.c.SOPInstanceUID == bindparam("uid"))
_FIND_SERIES = (
    select(_series.c.pk, _series.c.study_pk, _study.c.patient_pk, _study.c.SOPClassesInStudy,
           _patient.c.PatientID, _patient.c.IssuerOfPatientID, _study.c.StudyInstanceUID)
    .join(_study, _series.c.study_pk == _study.c.pk).join(_patient, _study.c.patient_pk == _patient.c.pk)
    .where(_series.c.SeriesInstanceUID == bindparam("uid"))
)
_EXISTING = (
    select(_instance.c.sha256, _study.c.StudyInstanceUID, _instance.c.blob_key, _instance.c.dataset_offset,
           _instance.c.TransferSyntaxUID)
    .join(_series, _instance.c.series_pk == _series.c.pk).join(_study, _series.c.study_pk == _study.c.pk)
    .where(_instance.c.SOPInstanceUID == bindparam("uid"))
)
"""A stored instance's SHA-256 and the study it is filed under."""
_INSERT_INSTANCE = _instance.insert()
_INSERT_EVENT = _event.insert()
_BUMP_SERIES = _series.update().where(_series.c.pk == bindparam("b_pk")).values(
    NumberOfSeriesRelatedInstances=_series.c.NumberOfSeriesRelatedInstances + 1, updated_at=bindparam("b_now"))
_BUMP_STUDY = _study.update().where(_study.c.pk == bindparam("b_pk")).values(
    NumberOfStudyRelatedInstances=_study.c.NumberOfStudyRelatedInstances + 1, updated_at=bindparam("b_now"),
    available_at=None)
"""One more instance: the study has changed, so it is no longer announced (``services.availability``)."""
_BUMP_STUDY_KEEP_ANNOUNCED = _study.update().where(_study.c.pk == bindparam("b_pk")).values(
    NumberOfStudyRelatedInstances=_study.c.NumberOfStudyRelatedInstances + 1, updated_at=bindparam("b_now"))
"""One more object that is not an image (a report, a key object, a presentation state): the study's images are
no more available than before, so "images available" is not announced again for it."""
_CHANGED_STUDY = _study.update().where(_study.c.pk == select(_series.c.study_pk).where(
    _series.c.pk == bindparam("b_series")).scalar_subquery()).values(updated_at=bindparam("b_now"), available_at=None)
"""A replaced instance changes its study too."""


NOT_IMAGES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.104.", "1.2.840.10008.5.1.4.1.1.11.",
              "1.2.840.10008.5.1.4.1.1.66")
"""SOP Class UID prefixes of objects that are not images: structured reports and key object selections (88.x),
encapsulated documents (104.x), presentation states (11.x), raw data, registrations and segmentations
(66.x)."""


def not_an_image(sop_class_uid: str) -> bool:
    return sop_class_uid.startswith(NOT_IMAGES)


def _append_to_list(column: Any) -> Any:
    """An atomic "add this value to a backslash-wrapped list unless present" (no lost update under
    concurrency: the row lock is taken by the UPDATE itself, and PostgreSQL re-checks the WHERE)."""
    table = column.table
    wrapped = case((column == "", "\\"), else_=column)
    return table.update().where(table.c.pk == bindparam("b_pk"), ~column.like(bindparam("b_pattern"), escape="!")) \
        .values({column.name: wrapped + bindparam("b_value")})


_ADD_SOP_CLASS = _append_to_list(_study.c.SOPClassesInStudy)
_ADD_MODALITY = _append_to_list(_study.c.ModalitiesInStudy)


def _list_parameters(value: str) -> dict[str, str]:
    escaped = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return {"b_pattern": f"%\\{escaped}\\%", "b_value": f"{value}\\"}


_BUMP_PATIENT = _patient.update().where(_patient.c.pk == bindparam("b_pk")).values(
    NumberOfPatientRelatedInstances=_patient.c.NumberOfPatientRelatedInstances + 1)


OUT_OF_RESOURCES = StorageStatus.REFUSED_OUT_OF_RESOURCES
"""PS3.4 B.2.3 "Refused: Out of Resources": the archive cannot take the object now; the sender may try again."""
RETRY_AFTER_SECONDS = 30
"""What an HTTP 503 for want of resources tells the client to wait (a full disk or an index restart takes a while)."""


def out_of_resources(exc: BaseException) -> str | None:
    """Why a store failed for want of resources rather than because of the object, or None.

    A full disk or quota, a file system gone read-only (any ``OSError`` writing a spool or blob file), a blob
    store that cannot write (:class:`StorageFailure`), an index that cannot be reached or has no free connection
    (SQLAlchemy's ``OperationalError``, ``InterfaceError``, pool ``TimeoutError``, or a connection found broken):
    the same object may be stored later. Every door answers these alike: C-STORE 0xA700 (both receive paths),
    STOW-RS 0xA700 in the Failed SOP Sequence, and 503 with Retry-After when nothing of the request was stored.
    """
    if isinstance(exc, StorageFailure):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot write the data set: {exc.strerror or exc}"
    if isinstance(exc, sql_errors.OperationalError | sql_errors.InterfaceError | sql_errors.TimeoutError) or (
            isinstance(exc, sql_errors.DBAPIError) and exc.connection_invalidated):
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return f"the index is unavailable: {first[0] if first else type(exc).__name__}"
    return None


class Coercion(Protocol):
    """The coerce stage: what ingest changes in a parsed header before it is checked against the sender's scope
    and indexed (PS3.4 B.4.1.3 "coercion of data elements"). Tag morphing per sender and reconciliation with
    HL7 ADT/ORM (current demographics) plug in here. The stored bytes stay as received (originals are immutable):
    a coercion changes what is indexed and answered. It returns ``parsed`` itself when it changes nothing."""

    def __call__(self, parsed: ParsedInstance, origin: IngestOrigin) -> ParsedInstance: ...


def no_coercion(parsed: ParsedInstance, origin: IngestOrigin) -> ParsedInstance:
    """The coerce stage as it is today: every header indexed as received."""
    return parsed


class StoreGuard(Protocol):
    """A sender's access policy as ingest asks it (``AccessPolicy.store_check``): may it add to an existing study,
    and which labels does a new study it creates get (None: refused)."""

    def __call__(self, study_instance_uid: str) -> bool: ...

    def labels(self, facility: str, department: str) -> tuple[str, str] | None: ...


@dataclass(frozen=True)
class _Stored:
    """The instance already stored under a SOP Instance UID, as the duplicate check needs it."""

    sha256: str
    StudyInstanceUID: str
    blob_key: str
    dataset_offset: int
    TransferSyntaxUID: str


class IngestOutcome(enum.StrEnum):
    STORED = "stored"
    ALREADY_STORED = "already-stored"
    """Same SOP Instance UID, identical bytes: success, nothing stored twice."""
    REPLACED = "replaced"
    """Same SOP Instance UID, different bytes, policy keep-new-version: the old one is in history."""


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sha256: str
    size: int
    patient_id: str = ""
    issuer_of_patient_id: str = ""


class IngestService:
    """Stores DICOM objects: the only code that writes instances into the index and the blob store."""

    def __init__(self, database: Database, blobs: BlobStore, settings: IngestSettings, *, policy: AccessPolicy,
                 audit: AuditTrail, coercion: Coercion = no_coercion) -> None:
        self.database = database
        self.blobs = blobs
        self.settings = settings
        self.policy = policy
        """Asked, for every object, whether its sender may store it where it goes."""
        self.audit = audit
        """Where every store is recorded (once per object, whatever the door)."""
        self.coercion = coercion
        """The coerce stage (:class:`Coercion`): none yet."""

    def store(
        self,
        source: Path | bytes,
        origin: IngestOrigin | None = None,
        *,
        expected_sop_class_uid: str | None = None,
        sha256: str | None = None,
        parsed: ParsedInstance | None = None,
        expected_sop_instance_uid: str | None = None,
        door: str | None = None,
        source_ae_title: str = "",
        facility: str = "",
        department: str = "",
    ) -> IngestResult:
        """Store one Part 10 object (file path or bytes) that ``origin`` offers. Raises :class:`InvalidObject`
        with the reason (and its DIMSE status).

        The origin's principal must have the store permission, may create any study (labelled with the origin's
        facility and department, else the object's InstitutionName and InstitutionalDepartmentName, within its
        scope) but add only to studies it may see, checked before anything is written (0x0124). The store is then
        audited (a refusal too, unless the origin says otherwise), or added to the origin's batch.

        ``sha256`` may be given by a door that hashed the bytes as it received them, ``parsed`` by a door
        that already parsed them (both must describe exactly ``source``). ``expected_sop_class_uid`` and
        ``expected_sop_instance_uid`` (a C-STORE request's Affected SOP Class / Instance UID) refuse a data set
        that is another object (0xA900, 0xC000).

        Without an origin, ``door`` (with ``source_ae_title``, ``facility``, ``department``) describes one with
        no principal: nothing checked or audited, for the archive's own stores and tests seeding an archive.
        """
        if origin is None:
            if door is None:
                raise TypeError("store() needs the object's origin (or a door for an unattended store)")
            origin = IngestOrigin(door=door, calling_ae_title=source_ae_title, facility=facility,
                                  department=department)
        elif door is not None or source_ae_title or facility or department:
            raise TypeError("store() takes an origin or door=…, not both")
        started = time.perf_counter()
        try:
            result = self._store(source, origin, expected_sop_class_uid, sha256, parsed, expected_sop_instance_uid)
        except InvalidObject as exc:
            INGEST_TOTAL.labels(origin.door, "rejected").inc()
            log.warning("ingest rejected via %s from %r: %s", origin.door, origin.source_ae_title or "-", exc)
            self._audit_refused(origin, exc, expected_sop_instance_uid)
            raise
        INGEST_TOTAL.labels(origin.door, result.outcome.value).inc()
        INGEST_SECONDS.labels(origin.door).observe(time.perf_counter() - started)
        if result.outcome != IngestOutcome.ALREADY_STORED:
            INGEST_BYTES.labels(origin.door).inc(result.size)
        self._audit_stored(origin, result)
        return result

    def _audit_stored(self, origin: IngestOrigin, result: IngestResult) -> None:
        """The one record of a store (PS3.15 'DICOM Instances Transferred'; the trail merges one sender's
        records per series), or its place in the origin's batch."""
        principal = origin.principal
        if principal is None:
            return
        if origin.batch is not None:
            origin.batch.stored.append(result.sop_instance_uid)
            return
        door = {} if principal.interface == origin.door else {"door": origin.door}
        self.audit.record(AuditEntry.of(
            principal, AuditAction.STORE, "success", PatientID=result.patient_id,
            IssuerOfPatientID=result.issuer_of_patient_id, StudyInstanceUID=result.study_instance_uid,
            SeriesInstanceUID=result.series_instance_uid, SOPInstanceUID=result.sop_instance_uid,
            detail={**door, "outcome": result.outcome.value}))

    def _audit_refused(self, origin: IngestOrigin, exc: InvalidObject, requested: str | None) -> None:
        """A refused object, named as its door named it (a C-STORE request's Affected SOP Instance UID: the data
        set may not even name itself)."""
        if origin.principal is None or origin.batch is not None or not origin.audit_refusals:
            return
        uid = requested if requested is not None else exc.sop_instance_uid or ""
        self.audit.record(AuditEntry.of(origin.principal, AuditAction.STORE, "failure", SOPInstanceUID=uid,
                                        detail={"reason": exc.reason}))

    def _store(self, source: Path | bytes, origin: IngestOrigin, expected_sop_class_uid: str | None,
               known_sha256: str | None, known_parse: ParsedInstance | None,
               expected_sop_instance_uid: str | None = None) -> IngestResult:
        may_add_to = self._store_check(origin)
        parsed = known_parse if known_parse is not None else parse_instance(source)
        if expected_sop_instance_uid and parsed.sop_instance_uid != expected_sop_instance_uid:
            raise InstanceMismatch(expected_sop_instance_uid, parsed.sop_instance_uid)
        parsed = self.coercion(parsed, origin)
        _check_may_add_to(may_add_to, parsed, parsed.study_instance_uid)
        if expected_sop_class_uid and parsed.sop_class_uid != expected_sop_class_uid:
            raise InvalidObject(
                f"SOP Class UID {parsed.sop_class_uid} in the data set does not match the negotiated "
                f"SOP Class {expected_sop_class_uid}",
                sop_instance_uid=parsed.sop_instance_uid,
                status=StorageStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            )
        if known_sha256 is not None and isinstance(source, Path):
            sha256, size = known_sha256, source.stat().st_size
        else:
            sha256, size = sha256_of(source)
        stored = self._existing(parsed.sop_instance_uid)
        existing = None if stored is None else stored.sha256
        if stored is not None:  # even "already stored" or "duplicate" tells whether it exists
            _check_may_add_to(may_add_to, parsed, stored.StudyInstanceUID)
        if stored is not None and (stored.sha256 == sha256 or self._same_data_set(stored, source, parsed)):
            # identical content, whatever its File Meta Information says (another AE, STOW-RS, a CD's copy)
            return self._result(IngestOutcome.ALREADY_STORED, parsed, stored.sha256, size)
        if existing is not None and self.settings.duplicate_policy == DuplicatePolicy.REJECT:
            raise DuplicateInstance(parsed.sop_instance_uid)
        blob = self.blobs.write(source, sha256=sha256)
        try:
            # built while the blob store makes the bytes durable (flushed before the index commit)
            metadata = json.dumps(metadata_json(parsed.dataset, self.settings.bulk_data_threshold),
                                  separators=(",", ":"), ensure_ascii=False)
            self.blobs.flush(blob)  # bytes durable before the row that names them commits
            outcome = self._index_with_retry(parsed, blob, metadata, origin.door, origin.source_ae_title,
                                             (origin.facility, origin.department), may_add_to)
        except BaseException:
            self.blobs.revoke(blob)
            raise
        if outcome == IngestOutcome.ALREADY_STORED:
            self.blobs.revoke(blob)  # a concurrent association stored the same bytes first
        else:
            self.blobs.commit(blob)
        return self._result(outcome, parsed, blob.sha256, blob.size)

    def _store_check(self, origin: IngestOrigin) -> StoreGuard | None:
        """The sender's rights, asked of every study a row goes into (None: it may store anywhere)."""
        principal = origin.principal
        if principal is None:
            return None
        if Permission.STORE not in principal.permissions:
            raise InvalidObject(f"{principal.name} may not store", status=StorageStatus.NOT_AUTHORIZED)
        return self.policy.store_check(principal)

    @staticmethod
    def _result(outcome: IngestOutcome, parsed: ParsedInstance, sha256: str, size: int) -> IngestResult:
        return IngestResult(outcome, parsed.sop_instance_uid, parsed.sop_class_uid,
                            parsed.study_instance_uid, parsed.series_instance_uid, sha256, size,
                            _text(parsed.dataset, "PatientID"), _text(parsed.dataset, "IssuerOfPatientID"))

    def _existing(self, sop_instance_uid: str) -> _Stored | None:
        """What is stored under this SOP Instance UID (None when nothing is)."""
        with self.database.engine.connect() as connection:
            row = connection.execute(_EXISTING, {"uid": sop_instance_uid}).first()
        return None if row is None else _Stored(*row)

    def _same_data_set(self, stored: _Stored, source: Path | bytes, parsed: ParsedInstance) -> bool:
        """Do the stored object and this one carry the same data set, byte for byte, in the same transfer syntax?
        Only the File Meta Information (group 0002: who sent it, which implementation wrote it) may differ; that
        is the same object sent again by another route, not a conflicting duplicate."""
        if stored.TransferSyntaxUID != parsed.transfer_syntax_uid:
            return False
        incoming = hashlib.sha256()
        if isinstance(source, bytes):
            incoming.update(memoryview(source)[parsed.dataset_offset:])
        else:
            with open(source, "rb") as stream:
                stream.seek(parsed.dataset_offset)
                while chunk := stream.read(1 << 20):
                    incoming.update(chunk)
        kept = hashlib.sha256()
        with self.blobs.open(stored.blob_key) as stream:
            if stream.seekable():
                stream.seek(stored.dataset_offset)
            else:
                stream.read(stored.dataset_offset)  # the File Meta Information: small
            while chunk := stream.read(1 << 20):
                kept.update(chunk)
        return incoming.digest() == kept.digest()

    def _index_with_retry(
        self, parsed: ParsedInstance, blob: StoredBlob, metadata: str, door: str, source_ae_title: str,
        labels: tuple[str, str] = ("", ""), may_add_to: StoreGuard | None = None,
    ) -> IngestOutcome:
        # concurrent associations may create the same patient/study/series at once (PostgreSQL):
        # the loser of the unique constraint retries and then finds the winner's rows
        return self.database.write(lambda session: _IndexWriter(
            session, parsed, blob, metadata, door, source_ae_title, self.settings.duplicate_policy, labels,
            may_add_to).write())


def _check_may_add_to(may_add_to: StoreGuard | None, parsed: ParsedInstance, study: str) -> None:
    """Refuse (0x0124) an object that would go into ``study`` (its own, the study of the series it joins, or of
    the instance it replaces) when the sender may not add to it. The answer names only the object's own study,
    and is the same whatever the reason, so it reveals nothing of another site's."""
    if may_add_to is not None and study and not may_add_to(study):
        raise InvalidObject(f"study {parsed.study_instance_uid} is outside what the sender may store into",
                            sop_instance_uid=parsed.sop_instance_uid, status=StorageStatus.NOT_AUTHORIZED)


def _labels_within(guard: StoreGuard | None, parsed: ParsedInstance, facility: str,
                   department: str) -> tuple[str, str]:
    """The facility and department a new study is labelled with: a sender whose scope is restricted may only
    create studies inside it (an InstitutionName of another site must not put a study in that site's lists)."""
    if guard is None:
        return facility, department
    labels = guard.labels(facility, department)
    if labels is None:
        raise InvalidObject(
            f"study {parsed.study_instance_uid} would belong to facility {facility!r}, department {department!r}, "
            "outside what the sender may store into", sop_instance_uid=parsed.sop_instance_uid,
            status=StorageStatus.NOT_AUTHORIZED)
    return labels


class _IndexWriter:
    """Index rows and outbox events for one instance, inside one transaction."""

    def __init__(self, session: Session, parsed: ParsedInstance, blob: StoredBlob, metadata: str,
                 door: str, source_ae_title: str, policy: DuplicatePolicy,
                 labels: tuple[str, str] = ("", ""), may_add_to: StoreGuard | None = None) -> None:
        self.session = session
        self.may_add_to = may_add_to
        """The sender's access check, asked of the study a row really goes into (see :func:`_check_may_add_to`)."""
        self.labels = labels
        self.parsed = parsed
        self.dataset = parsed.dataset
        self.blob = blob
        self.metadata = metadata
        self.door = door
        self.source_ae_title = source_ae_title
        self.policy = policy
        self.now = datetime.now(UTC)
        self.events: list[Event] = []

    def write(self) -> IngestOutcome:
        connection = self.session.connection()
        existing_pk = connection.execute(_FIND_INSTANCE, {"uid": self.parsed.sop_instance_uid}).scalar()
        if existing_pk is not None:
            existing = self.session.scalars(select(Instance).where(Instance.pk == existing_pk)
                                            .with_for_update()).one()
            if self.may_add_to is not None:
                replaced_in = self.session.scalar(select(Study.StudyInstanceUID)
                                                  .join(Series, Series.study_pk == Study.pk)
                                                  .where(Series.pk == existing.series_pk))
                _check_may_add_to(self.may_add_to, self.parsed, replaced_in or "")
            return self._replace(existing)
        # the common case (the series is known): one joined lookup, then prepared Core statements
        known = connection.execute(_FIND_SERIES, {"uid": self.parsed.series_instance_uid}).first()
        if known is None:
            patient = self._patient()
            study = self._study(patient)
            series = self._series(study, patient)
            self.session.add_all(self.events)
            self.session.flush()
            series_pk, study_pk, patient_pk = series.pk, study.pk, study.patient_pk
            sop_classes, patient_id, issuer = study.SOPClassesInStudy, patient.PatientID, patient.IssuerOfPatientID
        else:
            series_pk, study_pk, patient_pk, sop_classes, patient_id, issuer, filed_under = known
            _check_may_add_to(self.may_add_to, self.parsed, filed_under)  # a known series files it under its study
        values = column_values(self.dataset, INSTANCE_KEYS, _WIDTHS[Instance])
        values.update(
            series_pk=series_pk, SOPInstanceUID=self.parsed.sop_instance_uid, SOPClassUID=self.parsed.sop_class_uid,
            TransferSyntaxUID=self.parsed.transfer_syntax_uid, blob_key=self.blob.key, size=self.blob.size,
            sha256=self.blob.sha256, dataset_offset=self.parsed.dataset_offset, metadata_json=self.metadata,
            version=1, received_via=self.door, source_ae_title=self.source_ae_title[:16], received_at=self.now,
        )
        connection.execute(_INSERT_INSTANCE, values)
        connection.execute(_BUMP_SERIES, {"b_pk": series_pk, "b_now": self.now})
        connection.execute(_BUMP_STUDY_KEEP_ANNOUNCED if not_an_image(self.parsed.sop_class_uid) else _BUMP_STUDY,
                           {"b_pk": study_pk, "b_now": self.now})
        if f"\\{self.parsed.sop_class_uid}\\" not in (sop_classes or ""):
            connection.execute(_ADD_SOP_CLASS, {"b_pk": study_pk, **_list_parameters(self.parsed.sop_class_uid)})
        connection.execute(_BUMP_PATIENT, {"b_pk": patient_pk})
        connection.execute(_INSERT_EVENT, {
            "type": EventType.INSTANCE_STORED.value, "created_at": self.now, "PatientID": patient_id,
            "IssuerOfPatientID": issuer, "StudyInstanceUID": self.parsed.study_instance_uid,
            "SeriesInstanceUID": self.parsed.series_instance_uid, "SOPInstanceUID": self.parsed.sop_instance_uid,
            "payload": json.dumps({"SOPClassUID": self.parsed.sop_class_uid, "size": self.blob.size,
                                   "door": self.door, "source_ae_title": self.source_ae_title}),
        })
        return IngestOutcome.STORED

    def _replace(self, existing: Instance) -> IngestOutcome:
        if existing.sha256 == self.blob.sha256:
            return IngestOutcome.ALREADY_STORED
        if self.policy == DuplicatePolicy.REJECT:
            raise DuplicateInstance(self.parsed.sop_instance_uid)
        self.session.add(InstanceVersion(
            instance_pk=existing.pk, SOPInstanceUID=existing.SOPInstanceUID, version=existing.version,
            TransferSyntaxUID=existing.TransferSyntaxUID, blob_key=existing.blob_key, size=existing.size,
            sha256=existing.sha256, metadata_json=existing.metadata_json, received_at=existing.received_at,
            replaced_at=self.now,
        ))
        for key, value in column_values(self.dataset, INSTANCE_KEYS, _WIDTHS[Instance]).items():
            if key not in ("SOPInstanceUID", "SOPClassUID"):
                setattr(existing, key, value)
        existing.TransferSyntaxUID = self.parsed.transfer_syntax_uid
        existing.blob_key = self.blob.key
        existing.size = self.blob.size
        existing.sha256 = self.blob.sha256
        existing.dataset_offset = self.parsed.dataset_offset
        existing.metadata_json = self.metadata
        existing.version += 1
        existing.received_via = self.door
        existing.source_ae_title = self.source_ae_title[:16]
        existing.received_at = self.now
        self.session.execute(_CHANGED_STUDY, {"b_series": existing.series_pk, "b_now": self.now})
        self.session.add(Event(
            type=EventType.INSTANCE_REPLACED.value, created_at=self.now,
            StudyInstanceUID=self.parsed.study_instance_uid, SeriesInstanceUID=self.parsed.series_instance_uid,
            SOPInstanceUID=self.parsed.sop_instance_uid,
            payload=json.dumps({"version": existing.version, "door": self.door}),
        ))
        return IngestOutcome.REPLACED

    def _patient(self) -> Patient:
        values = column_values(self.dataset, PATIENT_KEYS, _WIDTHS[Patient])
        patient = self.session.scalar(select(Patient).where(
            Patient.PatientID == values["PatientID"], Patient.IssuerOfPatientID == values["IssuerOfPatientID"]))
        if patient is None:  # an identity merged into another patient (HL7 A40, A47): filed under that one
            alias = self.session.scalar(select(PatientAlias.patient_pk).where(
                PatientAlias.PatientID == values["PatientID"],
                PatientAlias.IssuerOfPatientID == values["IssuerOfPatientID"]))
            patient = self.session.get(Patient, alias) if alias is not None else None
        if patient is None:
            patient = Patient(**values, created_at=self.now, updated_at=self.now)
            self.session.add(patient)
            self.session.flush()
            self._event(EventType.PATIENT_CREATED, patient, {})
        return patient

    def _study(self, patient: Patient) -> Study:
        study = self.session.scalar(select(Study).where(
            Study.StudyInstanceUID == self.parsed.study_instance_uid))
        if study is None:
            values = column_values(self.dataset, STUDY_KEYS, _WIDTHS[Study])
            values["StudyInstanceUID"] = self.parsed.study_instance_uid
            if not values.get("AccessionNumber") or not values.get("StudyDescription"):
                self._from_order(values)
            demographics = column_values(self.dataset, DEMOGRAPHIC_KEYS, _WIDTHS[Study])
            values.update(demographics)  # the patient as this study describes it (what a scoped caller sees)
            facility, department = self.labels
            facility = (facility or values.get("InstitutionName") or "")[:64]
            department = (department or _text(self.dataset, "InstitutionalDepartmentName"))[:64]
            values["facility"], values["department"] = _labels_within(self.may_add_to, self.parsed,
                                                                      facility, department)
            study = Study(patient_pk=patient.pk, **values, created_at=self.now, updated_at=self.now,
                          # a study that begins with a report has no images to announce until some arrive
                          available_at=self.now if not_an_image(self.parsed.sop_class_uid) else None)
            self.session.add(study)
            self.session.flush()
            self._increment(Patient, patient.pk, "NumberOfPatientRelatedStudies")
            self._event(EventType.STUDY_CREATED, patient, {})
        elif study.patient_pk != patient.pk:
            log.warning("study %s already belongs to another patient; instance %s filed under the existing "
                        "patient", study.StudyInstanceUID, self.parsed.sop_instance_uid)
        else:
            study.updated_at = self.now
        return study

    def _from_order(self, values: dict[str, Any]) -> None:
        """A new study that an order scheduled (by its Study Instance UID) takes the order's accession number and
        requested procedure into the index where its objects carry none (the stored files stay as they came)."""
        ordered = self.session.execute(
            select(ScheduledStep.AccessionNumber, ScheduledStep.RequestedProcedureDescription)
            .where(ScheduledStep.StudyInstanceUID == values["StudyInstanceUID"]).limit(1)).first()
        if ordered is not None:
            values["AccessionNumber"] = values.get("AccessionNumber") or ordered[0]
            values["StudyDescription"] = values.get("StudyDescription") or ordered[1][:64]

    def _series(self, study: Study, patient: Patient) -> Series:
        series = self.session.scalar(select(Series).where(
            Series.SeriesInstanceUID == self.parsed.series_instance_uid))
        if series is None:
            values = column_values(self.dataset, SERIES_KEYS, _WIDTHS[Series])
            values["SeriesInstanceUID"] = self.parsed.series_instance_uid
            series = Series(study_pk=study.pk, **values, created_at=self.now, updated_at=self.now)
            self.session.add(series)
            self.session.flush()
            self._increment(Study, study.pk, "NumberOfStudyRelatedSeries")
            self._increment(Patient, study.patient_pk, "NumberOfPatientRelatedSeries")
            modality = series.Modality
            if modality:
                self.session.execute(_ADD_MODALITY, {"b_pk": study.pk, **_list_parameters(modality)})
            self._event(EventType.SERIES_CREATED, patient, {"Modality": modality})
        else:
            series.updated_at = self.now
        return series

    def _increment(self, model: type[Any], pk: int, column: str) -> None:
        self.session.execute(
            update(model).where(model.pk == pk).values({column: getattr(model, column) + 1})
            .execution_options(synchronize_session=False)
        )

    def _event(self, event_type: EventType, patient: Patient, payload: dict[str, Any]) -> None:
        self.events.append(Event(
            type=event_type.value, created_at=self.now, PatientID=patient.PatientID,
            IssuerOfPatientID=patient.IssuerOfPatientID,
            StudyInstanceUID=self.parsed.study_instance_uid if event_type != EventType.PATIENT_CREATED else "",
            SeriesInstanceUID=self.parsed.series_instance_uid
            if event_type in (EventType.SERIES_CREATED, EventType.INSTANCE_STORED) else "",
            SOPInstanceUID=self.parsed.sop_instance_uid if event_type == EventType.INSTANCE_STORED else "",
            payload=json.dumps(payload),
        ))


def _text(dataset: Any, keyword: str) -> str:
    try:
        value = dataset.get(keyword)
    except Exception:
        return ""
    return str(value or "").strip()
