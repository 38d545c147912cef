"""Legal holds: a patient's or one study's data may not be deleted, by anyone, until the hold is released.

A hold on a patient (PatientID + IssuerOfPatientID, empty StudyInstanceUID) covers every study of that patient,
present and future — a hold without an issuer covers the PatientID under every issuer (a hold must rather cover
too much than miss the patient); a hold on a study covers that study. Released holds stay in the table (who,
when) as history.
:func:`covering_hold` is the one check every deletion path makes, inside the deleting transaction. Doors audit
placing and releasing (:func:`hold_audit_entry`), as for every other change made by a principal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from mosaic.core.errors import MosaicError, NotFound
from mosaic.core.times import as_utc
from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import Principal
from mosaic.index.database import Database
from mosaic.index.schema import LegalHold, Patient, Study


@dataclass(frozen=True)
class Hold:
    """One legal hold, as placed (and maybe released)."""

    id: int
    PatientID: str
    IssuerOfPatientID: str
    StudyInstanceUID: str
    reason: str
    placed_by: str
    placed_at: datetime
    released_by: str = ""
    released_at: datetime | None = None

    @classmethod
    def of(cls, row: LegalHold) -> Hold:
        return cls(row.pk, row.PatientID, row.IssuerOfPatientID, row.StudyInstanceUID, row.reason, row.placed_by,
                   as_utc(row.placed_at), row.released_by, as_utc(row.released_at))

    @property
    def active(self) -> bool:
        return self.released_at is None

    @property
    def covers(self) -> str:
        """What the hold is on, in words: ``patient X (issuer Y)`` or ``study UID``."""
        if not self.StudyInstanceUID:
            issuer = f" (issuer {self.IssuerOfPatientID})" if self.IssuerOfPatientID else ""
            return f"patient {self.PatientID}{issuer}"
        return f"study {self.StudyInstanceUID}"

    def describe(self) -> str:
        """``legal hold #3 on patient P1, placed by alice on 2026-01-02: <reason>`` (for refusals and reports)."""
        return (f"legal hold #{self.id} on {self.covers}, placed by {self.placed_by} on "
                f"{self.placed_at.date().isoformat()}: {self.reason}")

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "PatientID": self.PatientID, "IssuerOfPatientID": self.IssuerOfPatientID,
                "StudyInstanceUID": self.StudyInstanceUID, "reason": self.reason, "placed_by": self.placed_by,
                "placed_at": self.placed_at.isoformat(), "released_by": self.released_by or None,
                "released_at": self.released_at.isoformat() if self.released_at else None, "active": self.active}


class UnderLegalHold(MosaicError):
    """A deletion was refused because a legal hold covers the study (the message names the hold and reason)."""

    def __init__(self, study_instance_uid: str, hold: Hold) -> None:
        self.study_instance_uid = study_instance_uid
        self.hold = hold
        super().__init__(f"study {study_instance_uid} cannot be deleted: {hold.describe()}")


class HoldError(MosaicError):
    """A hold cannot be placed or released as asked (the message says why)."""


def _active_condition(patient_id: str, issuer: str, study_instance_uid: str) -> Any:
    return and_(LegalHold.released_at.is_(None), or_(
        LegalHold.StudyInstanceUID == study_instance_uid,
        and_(LegalHold.StudyInstanceUID == "", LegalHold.PatientID == patient_id,
             LegalHold.IssuerOfPatientID.in_(sorted({issuer, ""})))))


def covering_hold(session: Session, study_instance_uid: str, patient_id: str, issuer: str) -> Hold | None:
    """The oldest active hold on this study or its patient, read in ``session`` (the deleting transaction)."""
    row = session.scalars(select(LegalHold).where(_active_condition(patient_id, issuer, study_instance_uid))
                          .order_by(LegalHold.pk).limit(1)).first()
    return Hold.of(row) if row is not None else None


def check_not_held(session: Session, study_instance_uid: str, patient_id: str, issuer: str) -> None:
    """Raise :class:`UnderLegalHold` when a hold covers the study: the check every deletion path makes."""
    hold = covering_hold(session, study_instance_uid, patient_id, issuer)
    if hold is not None:
        raise UnderLegalHold(study_instance_uid, hold)


@dataclass(frozen=True)
class ActiveHolds:
    """Every active hold at one moment, for evaluating many studies without a query each."""

    patients: dict[tuple[str, str], Hold]
    studies: dict[str, Hold]

    def hold_on(self, study_instance_uid: str, patient_id: str, issuer: str) -> Hold | None:
        return (self.studies.get(study_instance_uid) or self.patients.get((patient_id, issuer))
                or self.patients.get((patient_id, "")))


class HoldService:
    """Places, releases and lists legal holds."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def place(self, principal: Principal, *, reason: str, patient_id: str = "", issuer: str = "",
              study_instance_uid: str = "") -> Hold:
        """Hold a patient (``patient_id`` and ``issuer``) or one study. A held study's patient is recorded too."""
        reason, patient_id, issuer, study_instance_uid = (reason.strip(), patient_id.strip(), issuer.strip(),
                                                          study_instance_uid.strip())
        if not reason:
            raise HoldError("a legal hold needs a reason")
        if bool(patient_id) == bool(study_instance_uid):
            raise HoldError("a legal hold covers either a patient (PatientID, optionally IssuerOfPatientID) or one "
                            "study (StudyInstanceUID), not both and not neither")
        if study_instance_uid and issuer:
            raise HoldError("IssuerOfPatientID belongs to a hold on a patient, not on a study")
        for name, value in (("PatientID", patient_id), ("IssuerOfPatientID", issuer),
                            ("StudyInstanceUID", study_instance_uid)):
            if len(value) > 64:
                raise HoldError(f"{name} is longer than 64 characters")
        now = datetime.now(UTC)
        with self.database.session(write=True) as session:
            if study_instance_uid:
                known = session.execute(select(Patient.PatientID, Patient.IssuerOfPatientID)
                                        .join(Study, Study.patient_pk == Patient.pk)
                                        .where(Study.StudyInstanceUID == study_instance_uid)).first()
                if known is not None:
                    patient_id, issuer = known
            row = LegalHold(PatientID=patient_id, IssuerOfPatientID=issuer, StudyInstanceUID=study_instance_uid,
                            reason=reason[:4000], placed_by=principal.name[:128], placed_at=now, released_by="")
            session.add(row)
            session.flush()
            return Hold.of(row)

    def release(self, principal: Principal, hold_id: int) -> Hold:
        """Release an active hold (kept as history, with who released it and when)."""
        with self.database.session(write=True) as session:
            row = session.scalars(select(LegalHold).where(LegalHold.pk == hold_id).with_for_update()).first()
            if row is None:
                raise NotFound(f"there is no legal hold #{hold_id}")
            if row.released_at is not None:
                raise HoldError(f"legal hold #{hold_id} was already released by {row.released_by} on "
                                f"{as_utc(row.released_at).date().isoformat()}")
            row.released_by = principal.name[:128]
            row.released_at = datetime.now(UTC)
            session.flush()
            return Hold.of(row)

    def holds(self, *, include_released: bool = False) -> list[Hold]:
        """Holds in the order they were placed (active ones only unless ``include_released``)."""
        statement = select(LegalHold).order_by(LegalHold.pk)
        if not include_released:
            statement = statement.where(LegalHold.released_at.is_(None))
        with self.database.session() as session:
            return [Hold.of(row) for row in session.scalars(statement)]

    def active(self) -> ActiveHolds:
        patients: dict[tuple[str, str], Hold] = {}
        studies: dict[str, Hold] = {}
        for hold in self.holds():
            if hold.StudyInstanceUID:
                studies.setdefault(hold.StudyInstanceUID, hold)
            else:
                patients.setdefault((hold.PatientID, hold.IssuerOfPatientID), hold)
        return ActiveHolds(patients, studies)

    def hold_on(self, study_instance_uid: str) -> Hold | None:
        """The active hold covering a study (on the study itself or on its patient), if any."""
        with self.database.session() as session:
            patient = session.execute(select(Patient.PatientID, Patient.IssuerOfPatientID)
                                      .join(Study, Study.patient_pk == Patient.pk)
                                      .where(Study.StudyInstanceUID == study_instance_uid)).first()
            patient_id, issuer = patient if patient is not None else ("\0", "\0")  # unknown: only study holds
            return covering_hold(session, study_instance_uid, patient_id, issuer)

    def is_held(self, study_instance_uid: str) -> bool:
        return self.hold_on(study_instance_uid) is not None


def hold_audit_entry(principal: Principal, hold: Hold, change: str, outcome: str = "") -> AuditEntry:
    """The audit record of placing or releasing ``hold`` (``change``: placed, released; an HTTP door leaves
    ``outcome`` empty for the middleware to fill in from the answer)."""
    return AuditEntry.of(principal, AuditAction.LEGAL_HOLD, outcome, PatientID=hold.PatientID,
                         IssuerOfPatientID=hold.IssuerOfPatientID, StudyInstanceUID=hold.StudyInstanceUID,
                         detail={"change": change, "hold": hold.id, "reason": hold.reason})
