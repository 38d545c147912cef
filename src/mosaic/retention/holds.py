"""Placing, releasing and listing legal holds (the rules they follow, and the check every deletion makes, are
:mod:`mosaic.governance.holds`)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from mosaic.core.errors import NotFound
from mosaic.core.times import as_utc
from mosaic.governance.holds import ActiveHolds, Hold, HoldError, covering_hold, hold_request
from mosaic.governance.policy import Principal
from mosaic.index.database import Database
from mosaic.index.schema import LegalHold, Patient, Study


class HoldService:
    """Places, releases and lists legal holds."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def place(self, principal: Principal, *, reason: str, patient_id: str = "", issuer: str = "",
              study_instance_uid: str = "") -> Hold:
        """Hold a patient (``patient_id`` and ``issuer``) or one study. A held study's patient is recorded too."""
        reason, patient_id, issuer, study_instance_uid = hold_request(reason, patient_id, issuer,
                                                                      study_instance_uid)
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
