"""Patient / Study / Series / Instance, the instance history and the event outbox.

Each level carries the PS3.4 Annex C matching keys of the Patient Root and Study Root
information models as indexed columns, plus the computed attributes (Number of … Related …,
ModalitiesInStudy, SOPClassesInStudy). Every instance keeps its full header as DICOM JSON so
metadata queries never read a blob. Person names are stored decoded (Unicode) with an
upper-case twin column for case-insensitive matching.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _key(length: int = 64) -> Mapped[str]:
    """A matching-key column: never NULL (empty string when absent), indexed."""
    return mapped_column(String(length), nullable=False, default="", index=True)


def _ordered_key(length: int) -> Mapped[str]:
    """A DA/TM/DT matching key: ranges compare it as text, so PostgreSQL must use byte order ("C"),
    whatever the database's locale (a locale collation ignores the punctuation range bounds rely on)."""
    text_type = String(length).with_variant(String(length, collation="C"), "postgresql")
    return mapped_column(text_type, nullable=False, default="", index=True)


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("PatientID", "IssuerOfPatientID", name="uq_patient_identity"),)

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    PatientID: Mapped[str] = _key()
    IssuerOfPatientID: Mapped[str] = _key()
    PatientName: Mapped[str] = mapped_column(String(320), nullable=False, default="")
    PatientNameUpper: Mapped[str] = _key(320)
    PatientNameFuzzy: Mapped[str] = _key(320)
    """The name folded for fuzzy matching: no case, no accents (mosaic.core.names.fold_name)."""
    PatientBirthDate: Mapped[str] = _ordered_key(8)
    PatientBirthTime: Mapped[str] = _ordered_key(16)
    PatientSex: Mapped[str] = _key(16)
    EthnicGroup: Mapped[str] = _key()
    NumberOfPatientRelatedStudies: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    NumberOfPatientRelatedSeries: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    NumberOfPatientRelatedInstances: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Study(Base):
    __tablename__ = "study"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.pk"), nullable=False, index=True)
    StudyInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    StudyDate: Mapped[str] = _ordered_key(8)
    StudyTime: Mapped[str] = _ordered_key(16)
    AccessionNumber: Mapped[str] = _key()
    StudyID: Mapped[str] = _key(16)
    ReferringPhysicianName: Mapped[str] = mapped_column(String(320), nullable=False, default="")
    ReferringPhysicianNameUpper: Mapped[str] = _key(320)
    ReferringPhysicianNameFuzzy: Mapped[str] = _key(320)
    StudyDescription: Mapped[str] = _key()
    PatientAge: Mapped[str] = _key(4)
    PatientSize: Mapped[str] = _key(16)
    PatientWeight: Mapped[str] = _key(16)
    NameOfPhysiciansReadingStudy: Mapped[str] = _key(320)
    InstitutionName: Mapped[str] = _key()
    # The patient as this study's objects described them (a patient shared across sites is shown to a scoped
    # caller only as the studies it may see describe it: see docs/architecture.md, "shared patients").
    PatientName: Mapped[str] = mapped_column(String(320), nullable=False, default="")
    PatientNameUpper: Mapped[str] = _key(320)
    PatientNameFuzzy: Mapped[str] = _key(320)
    PatientBirthDate: Mapped[str] = _ordered_key(8)
    PatientBirthTime: Mapped[str] = _ordered_key(16)
    PatientSex: Mapped[str] = _key(16)
    EthnicGroup: Mapped[str] = _key()
    facility: Mapped[str] = _key()
    """The site the study belongs to (access scope): the sending peer's configured facility, else InstitutionName."""
    department: Mapped[str] = _key()
    """The department or specialty (access scope): the peer's configured one, else InstitutionalDepartmentName."""
    deletion_marked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    """Set by retention (phase one): purged after the grace period unless a legal hold appears."""
    deletion_reason: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    ModalitiesInStudy: Mapped[str] = _key(256)
    """Backslash-separated, each value wrapped: ``\\CT\\SR\\`` so one LIKE finds one modality."""
    SOPClassesInStudy: Mapped[str] = mapped_column(Text, nullable=False, default="")
    NumberOfStudyRelatedSeries: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    NumberOfStudyRelatedInstances: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    available_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """When the study was last announced available (a ``StudyAvailable`` event); NULL: changed since (an instance
    stored or replaced), so the availability sweeper announces it once it has been stable long enough."""


class Series(Base):
    __tablename__ = "series"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.pk"), nullable=False, index=True)
    SeriesInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    Modality: Mapped[str] = _key(16)
    SeriesNumber: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    SeriesDate: Mapped[str] = _ordered_key(8)
    SeriesTime: Mapped[str] = _ordered_key(16)
    SeriesDescription: Mapped[str] = _key()
    BodyPartExamined: Mapped[str] = _key(16)
    Laterality: Mapped[str] = _key(16)
    StationName: Mapped[str] = _key(16)
    InstitutionalDepartmentName: Mapped[str] = _key()
    PerformedProcedureStepStartDate: Mapped[str] = _ordered_key(8)
    PerformedProcedureStepStartTime: Mapped[str] = _ordered_key(16)
    RequestedProcedureID: Mapped[str] = _key(16)
    ScheduledProcedureStepID: Mapped[str] = _key(16)
    NumberOfSeriesRelatedInstances: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Instance(Base):
    __tablename__ = "instance"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.pk"), nullable=False, index=True)
    SOPInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    SOPClassUID: Mapped[str] = _key()
    InstanceNumber: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    ContentDate: Mapped[str] = _ordered_key(8)
    ContentTime: Mapped[str] = _ordered_key(16)
    AcquisitionNumber: Mapped[int | None] = mapped_column(Integer, nullable=True)
    NumberOfFrames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    Rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    Columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    BitsAllocated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    TransferSyntaxUID: Mapped[str] = mapped_column(String(64), nullable=False)
    blob_key: Mapped[str] = mapped_column(String(256), nullable=False, index=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    dataset_offset: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    """Where the dataset starts in the blob (after preamble and File Meta Information)."""
    metadata_json: Mapped[str] = mapped_column(Text, nullable=False)
    """DICOM JSON of the header; values over the bulk-data threshold are BulkDataURIs."""
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    received_via: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    source_ae_title: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class InstanceVersion(Base):
    """A replaced version of an instance (ingest.duplicate_policy = keep-new-version)."""

    __tablename__ = "instance_version"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instance_pk: Mapped[int] = mapped_column(ForeignKey("instance.pk"), nullable=False, index=True)
    SOPInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    TransferSyntaxUID: Mapped[str] = mapped_column(String(64), nullable=False)
    blob_key: Mapped[str] = mapped_column(String(256), nullable=False, index=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    metadata_json: Mapped[str] = mapped_column(Text, nullable=False)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    replaced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Event(Base):
    """The transactional outbox: written with the index change it describes, read in ``seq`` order."""

    __tablename__ = "event"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    PatientID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    IssuerOfPatientID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    StudyInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    SeriesInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    SOPInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    payload: Mapped[str] = mapped_column(Text, nullable=False, default="{}")


class FhirSubscription(Base):
    """A FHIR R4 Subscription (Subscriptions Backport IG, rest-hook) on the ``study-available`` topic."""

    __tablename__ = "fhir_subscription"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    """The account that created it: notifications carry only the studies this account may see, when sent."""
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    """active, error (the endpoint keeps failing; still retried), off (its account is gone or inactive)."""
    topic: Mapped[str] = mapped_column(String(256), nullable=False)
    endpoint: Mapped[str] = mapped_column(String(2048), nullable=False)
    payload_content: Mapped[str] = mapped_column(String(16), nullable=False)
    """empty, id-only or full-resource (the backport's payloadContent)."""
    headers_json: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    """channel.header: ``Name: value`` lines sent with each notification (e.g. the EHR's Authorization)."""
    resource_json: Mapped[str] = mapped_column(Text, nullable=False)
    """The Subscription as accepted (status and id as Mosaic keeps them)."""
    events_since_start: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_event_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    """The outbox event the last eventNumber was given to: a re-sent notification keeps its number."""
    error: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class StorageCommitment(Base):
    """A storage commitment request (N-ACTION) and its outcome (N-EVENT-REPORT)."""

    __tablename__ = "storage_commitment"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    TransactionUID: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    requestor_ae_title: Mapped[str] = mapped_column(String(16), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="PENDING")
    request_json: Mapped[str] = mapped_column(Text, nullable=False)
    result_json: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class UserAccount(Base):
    """A person or system that signs in: roles and the facilities/departments they may see."""

    __tablename__ = "user_account"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    display_name: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    password_hash: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    """argon2id; empty for accounts that only use API tokens."""
    roles: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    """Comma-separated role names."""
    facilities: Mapped[str] = mapped_column(Text, nullable=False, default="*")
    """Comma-separated facilities the account may see; ``*`` for all."""
    departments: Mapped[str] = mapped_column(Text, nullable=False, default="*")
    """Comma-separated departments/specialties the account may see; ``*`` for all."""
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    source: Mapped[str] = mapped_column(String(16), nullable=False, default="local", server_default="local")
    """local (managed in Mosaic) or oidc (created and updated from the identity provider's claims at sign-in)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ApiToken(Base):
    """A bearer token for a system (or a person's script); only its SHA-256 is stored."""

    __tablename__ = "api_token"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("user_account.pk"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    token_sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebSession(Base):
    """A browser session (cookie); only the SHA-256 of its identifier is stored, with its CSRF token."""

    __tablename__ = "web_session"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("user_account.pk"), nullable=False, index=True)
    csrf_token: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


class AuditRecord(Base):
    """One audited action; append-only, each record's ``hash`` covers its fields and the previous hash."""

    __tablename__ = "audit_record"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    actor: Mapped[str] = mapped_column(String(128), nullable=False, default="", index=True)
    actor_kind: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    """user, token, oidc, ae, anonymous."""
    roles: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    address: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    interface: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    """http, dicomweb, dimse, hl7, fhir, cli."""
    action: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    """success, denied, failure."""
    PatientID: Mapped[str] = mapped_column(String(64), nullable=False, default="", index=True)
    IssuerOfPatientID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    StudyInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, default="", index=True)
    SeriesInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    SOPInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    break_glass: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="")
    previous_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditCursor(Base):
    """How far a consumer of the audit trail (the syslog forwarder, the chain head) has got."""

    __tablename__ = "audit_cursor"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    hash: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class PatientHistory(Base):
    """One change of a patient's identity or demographics (an HL7 ADT message, later a merge): what it was, what
    it became, who sent it. Stored files are never rewritten; this is where a change is kept."""

    __tablename__ = "patient_history"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.pk"), nullable=False, index=True)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    """created, updated."""
    source: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    """Who sent it: ``hl7:<application>^<facility>``."""
    reference: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    """The sender's reference: the message type and control ID (MSH-9, MSH-10)."""
    before_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    after_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")


class PatientAlias(Base):
    """An identity that is no longer a patient of its own: merged into another (HL7 A40) or replaced by a new
    identifier (A47). Images and messages that still carry it are filed under ``patient_pk``; a query for it finds
    nothing."""

    __tablename__ = "patient_alias"
    __table_args__ = (UniqueConstraint("PatientID", "IssuerOfPatientID", name="uq_patient_alias_identity"),)

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    PatientID: Mapped[str] = mapped_column(String(64), nullable=False)
    IssuerOfPatientID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.pk"), nullable=False, index=True)
    reason: Mapped[str] = mapped_column(String(32), nullable=False)
    """merged, identifier-changed."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ScheduledStep(Base):
    """A scheduled procedure step of an order (HL7 ORM^O01): what the Modality Worklist answers."""

    __tablename__ = "scheduled_step"
    __table_args__ = (UniqueConstraint("AccessionNumber", "ScheduledProcedureStepID", name="uq_scheduled_step"),)

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    PatientID: Mapped[str] = _key()
    IssuerOfPatientID: Mapped[str] = _key()
    PatientName: Mapped[str] = mapped_column(String(320), nullable=False, default="")
    PatientNameUpper: Mapped[str] = _key(320)
    PatientBirthDate: Mapped[str] = mapped_column(String(8), nullable=False, default="")
    PatientSex: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    AccessionNumber: Mapped[str] = _key(16)
    RequestedProcedureID: Mapped[str] = _key(16)
    RequestedProcedureDescription: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    RequestedProcedureCode: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    """code^meaning^scheme of the universal service (OBR-4)."""
    RequestedProcedurePriority: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    StudyInstanceUID: Mapped[str] = _key()
    ReferringPhysicianName: Mapped[str] = mapped_column(String(320), nullable=False, default="")
    ScheduledProcedureStepID: Mapped[str] = _key(16)
    ScheduledProcedureStepDescription: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    Modality: Mapped[str] = _key(16)
    ScheduledStationAETitle: Mapped[str] = _key(16)
    ScheduledStationName: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    ScheduledProcedureStepLocation: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    ScheduledProcedureStepStartDate: Mapped[str] = _ordered_key(8)
    ScheduledProcedureStepStartTime: Mapped[str] = _ordered_key(16)
    ScheduledProcedureStepStatus: Mapped[str] = _key(16)
    """SCHEDULED, or CANCELED / DISCONTINUED (no longer on the worklist)."""
    placer_order: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    filler_order: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    facility: Mapped[str] = _key()
    source: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class PerformedStep(Base):
    """A Modality Performed Procedure Step (PS3.4 F.7): what a modality reports it did, by its SOP Instance UID."""

    __tablename__ = "performed_step"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    SOPInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    PerformedProcedureStepStatus: Mapped[str] = mapped_column(String(16), nullable=False)
    """IN PROGRESS, then COMPLETED or DISCONTINUED (final: no more N-SET)."""
    scheduled_step_pk: Mapped[int | None] = mapped_column(ForeignKey("scheduled_step.pk"), nullable=True, index=True)
    performed_by: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    attributes_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Report(Base):
    """A report stored from HL7 (ORU^R01, MDM^T02) as a DICOM instance (Basic Text SR or Encapsulated PDF): what
    FHIR DiagnosticReport and DocumentReference answer without reading the object. Its patient, study and scope
    are those of its instance (joined by SOP Instance UID), so merges and deletions need no change here."""

    __tablename__ = "report"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    SOPInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    StudyInstanceUID: Mapped[str] = _key()
    SeriesInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(8), nullable=False)
    """SR (Basic Text SR) or PDF (Encapsulated PDF)."""
    status: Mapped[str] = _key(16)
    """As FHIR DiagnosticReport.status names it: final, corrected (a correction), preliminary, entered-in-error, …"""
    code: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    """code^meaning^coding system of the report (OBR-4 universal service), else LOINC 11528-7."""
    title: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    text: Mapped[str] = mapped_column(Text, nullable=False, default="")
    """Its findings (empty for a PDF)."""
    document_length: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """An embedded PDF's length in bytes (its Encapsulated Document Length; the element is padded to even)."""
    conclusion: Mapped[str] = mapped_column(Text, nullable=False, default="")
    """Its impression / conclusion observations."""
    observed: Mapped[str] = mapped_column(String(26), nullable=False, default="")
    """When it was observed or reported (OBR-22, else OBR-7) as a DICOM DT, without a UTC offset."""
    performer: Mapped[str] = mapped_column(String(320), nullable=False, default="")
    """Principal result interpreter (OBR-32) as a DICOM person name."""
    AccessionNumber: Mapped[str] = _key(16)
    scheduled_step_pk: Mapped[int | None] = mapped_column(ForeignKey("scheduled_step.pk"), nullable=True, index=True)
    """The order's scheduled step (FHIR basedOn ServiceRequest), when the accession names one."""
    source: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    control_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    """MSH-10 of the message that brought it."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


class BreakGlassGrant(Base):
    """An out-of-scope study opened on purpose, with the reason given; time-limited and audited."""

    __tablename__ = "break_glass_grant"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    StudyInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class LegalHold(Base):
    """Blocks every deletion of a patient's (empty StudyInstanceUID) or one study's data until released."""

    __tablename__ = "legal_hold"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    PatientID: Mapped[str] = mapped_column(String(64), nullable=False, default="", index=True)
    IssuerOfPatientID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    StudyInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, default="", index=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    placed_by: Mapped[str] = mapped_column(String(128), nullable=False)
    placed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    released_by: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DeidProject(Base):
    """A research project: the secret that keys its pseudonyms, UIDs and date shifts (never leaves Mosaic)."""

    __tablename__ = "deid_project"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret_hex: Mapped[str] = mapped_column(String(128), nullable=False)
    created_by: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class DeidManifestEntry(Base):
    """Which original patient or study a pseudonym of a project stands for (re-identification stays inside)."""

    __tablename__ = "deid_manifest"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    export_id: Mapped[str] = mapped_column(String(36), nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    """patient or study."""
    original: Mapped[str] = mapped_column(String(200), nullable=False)
    pseudonym: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Job(Base):
    """A durable unit of long work (a de-identified export, a retention run): its parameters, progress and
    outcome, so any node can show it, and work a crashed or restarted node left behind is run again."""

    __tablename__ = "job"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    """queued, running, done, failed, cancelled (``cancel_requested`` asks a running job to stop)."""
    requested_by: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    params_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    result_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    phase: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    node: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    """The process running it (host:pid), while it runs."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


Index("ix_study_patient_date", Study.patient_pk, Study.StudyDate)
Index("ix_study_unannounced", Study.available_at, Study.updated_at)
"""The availability sweeper's query: studies not announced since their last change, oldest change first."""


class EncounterStudy(Base):
    """The study of an encounter's orderless captures (IHE Encounter-Based Imaging Workflow): content captured
    without an order during one visit of a patient goes into one study, with a Study Instance UID and an accession
    number the archive generated; an order that later names that accession (or the encounter) is its order."""

    __tablename__ = "encounter_study"
    __table_args__ = (UniqueConstraint("PatientID", "IssuerOfPatientID", "encounter", "facility",
                                       name="uq_encounter_study"),)

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    PatientID: Mapped[str] = mapped_column(String(64), nullable=False)
    IssuerOfPatientID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    encounter: Mapped[str] = mapped_column(String(64), nullable=False)
    """The visit (AdmissionID; HL7 PV1-19); "" never: captures without an encounter get a study each."""
    facility: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    """The facility of the captures: a visit number is a facility's, and one site's captures must not go into (or
    be kept out of) another's study."""
    StudyInstanceUID: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    AccessionNumber: Mapped[str] = _key(16)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ShareLink(Base):
    """A link that shares studies of one patient with someone outside the hospital (``/share/<token>``): only the
    SHA-256 of its token is stored, its PIN (when it has one) as an argon2id hash; ``studies`` the Study Instance
    UIDs it opens, backslash-separated. Its recipients' browser sessions are :class:`ShareSession` rows."""

    __tablename__ = "share_link"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_by: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    recipient_kind: Mapped[str] = mapped_column(String(32), nullable=False)
    """provider (an outside provider), patient, tumour-board."""
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")
    PatientID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    IssuerOfPatientID: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    studies: Mapped[str] = mapped_column(Text, nullable=False)
    pin_hash: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    """The PIN's argon2id hash; "" for a link without a PIN."""
    pin_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    deidentified: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    deid_secret_hex: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    """The link's own de-identification secret (its pseudonyms, date shift and UIDs stay the same per download)."""
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_by: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    uses: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ShareSession(Base):
    """A recipient's browser let in by a link (the ``mosaic_share`` cookie); only the SHA-256 of its identifier."""

    __tablename__ = "share_session"

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    share_pk: Mapped[int] = mapped_column(ForeignKey("share_link.pk"), nullable=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    address: Mapped[str] = mapped_column(String(64), nullable=False, default="")
