"""Legal holds: a patient's or one study's data may not be deleted, by anyone, until the hold is released.

A hold on a patient (PatientID + IssuerOfPatientID, empty StudyInstanceUID) covers every study of that patient,
present and future — a hold without an issuer covers the PatientID under every issuer (a hold must rather cover
too much than miss the patient); a hold on a study covers that study. Released holds stay in the table (who,
when) as history.
These are the rules of holds; :class:`~mosaic.retention.holds.HoldService` places, releases and lists them.
:func:`covering_hold` is the one check every deletion path makes, inside the deleting transaction
(:class:`~mosaic.services.delete.DeleteService`). Doors audit
placing and releasing (:func:`hold_audit_entry`), as for every other change made by a principal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from mosaic.core.errors import MosaicError
from mosaic.core.times import as_utc
from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import Principal
from mosaic.index.schema import LegalHold


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


def hold_request(reason: str, patient_id: str, issuer: str, study_instance_uid: str) -> tuple[str, str, str, str]:
    """What a hold may be placed on: a patient (PatientID, optionally IssuerOfPatientID) or one study, with a
    reason; the four values trimmed, or :class:`HoldError` saying what is wrong."""
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
    return reason, patient_id, issuer, study_instance_uid


def hold_audit_entry(principal: Principal, hold: Hold, change: str, outcome: str = "") -> AuditEntry:
    """The audit record of placing or releasing ``hold`` (``change``: placed, released; an HTTP door leaves
    ``outcome`` empty for the middleware to fill in from the answer)."""
    return AuditEntry.of(principal, AuditAction.LEGAL_HOLD, outcome, PatientID=hold.PatientID,
                         IssuerOfPatientID=hold.IssuerOfPatientID, StudyInstanceUID=hold.StudyInstanceUID,
                         detail={"change": change, "hold": hold.id, "reason": hold.reason})
