"""Patient identity and demographics as the hospital's information systems state them (HL7 ADT).

A patient is one identity, PatientID + IssuerOfPatientID. An ADT message creates the patient (before any image
arrives) or changes its demographics; each change is applied in one transaction with its history row
(:class:`~mosaic.index.schema.PatientHistory`: what it was, what it became, who said so) and its outbox event,
and the studies' own copies of the demographics (what a caller with a restricted scope sees) follow at once.
Stored files are never rewritten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mosaic.core.events import EventType
from mosaic.index.attributes import DEMOGRAPHIC_KEYS, PATIENT_KEYS, column_values, column_widths
from mosaic.index.database import Database
from mosaic.index.schema import Event, Patient, PatientHistory, Study

_WIDTHS = column_widths(Patient)
_STUDY_WIDTHS = column_widths(Study)
DEMOGRAPHICS = ("PatientName", "PatientBirthDate", "PatientBirthTime", "PatientSex", "EthnicGroup")
"""What an ADT message may change (Patient module attributes the index keeps)."""


@dataclass(frozen=True)
class PatientChange:
    """What :meth:`PatientService.apply` did: ``created`` a patient, or changed these attributes (old, new)."""

    PatientID: str
    IssuerOfPatientID: str
    created: bool
    changed: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class PatientRecord:
    PatientID: str
    IssuerOfPatientID: str
    demographics: dict[str, str]
    history: list[dict[str, Any]]


class PatientService:
    def __init__(self, database: Database) -> None:
        self.database = database

    def apply(self, patient_id: str, issuer: str, demographics: dict[str, str | None], *, source: str,
              reference: str) -> PatientChange:
        """Create the patient ``patient_id`` + ``issuer`` or update its demographics, in one transaction.

        ``demographics``: keyword → new value; None leaves the attribute as it is (the field was not sent), ""
        clears it (HL7 ``""``)."""
        wanted = {keyword: value for keyword, value in demographics.items()
                  if keyword in DEMOGRAPHICS and value is not None}

        def work(session: Session) -> PatientChange:
            now = datetime.now(UTC)
            patient = session.scalar(select(Patient).where(Patient.PatientID == patient_id,
                                                           Patient.IssuerOfPatientID == issuer))
            created = patient is None
            before = {} if patient is None else _demographics(patient)
            after = {**{keyword: "" for keyword in DEMOGRAPHICS}, **before, **wanted}
            values = _columns(patient_id, issuer, after)
            if patient is None:
                patient = Patient(**values, created_at=now, updated_at=now)
                session.add(patient)
                session.flush()
            else:
                for column, value in values.items():
                    setattr(patient, column, value)
                patient.updated_at = now
            changed = {keyword: (before.get(keyword, ""), after[keyword]) for keyword in DEMOGRAPHICS
                       if before.get(keyword, "") != after[keyword]}
            if created or changed:
                study_values = column_values(_dataset(after), DEMOGRAPHIC_KEYS, _STUDY_WIDTHS)
                session.execute(update(Study).where(Study.patient_pk == patient.pk).values(**study_values))
                session.add(PatientHistory(patient_pk=patient.pk, changed_at=now,
                                           action="created" if created else "updated", source=source[:128],
                                           reference=reference[:128], before_json=json.dumps(before),
                                           after_json=json.dumps(after)))
                session.add(Event(type=(EventType.PATIENT_CREATED if created else EventType.PATIENT_UPDATED).value,
                                  created_at=now, PatientID=patient_id, IssuerOfPatientID=issuer,
                                  payload=json.dumps({"changed": sorted(changed), "source": source})))
            return PatientChange(patient_id, issuer, created, {} if created else changed)

        return self.database.write(work)

    def record(self, patient_id: str, issuer: str) -> PatientRecord | None:
        """The patient's current demographics and every recorded change, oldest first (for administrators)."""
        with self.database.session() as session:
            patient = session.scalar(select(Patient).where(Patient.PatientID == patient_id,
                                                           Patient.IssuerOfPatientID == issuer))
            if patient is None:
                return None
            rows = session.scalars(select(PatientHistory).where(PatientHistory.patient_pk == patient.pk)
                                   .order_by(PatientHistory.pk)).all()
            history = [{"changed_at": row.changed_at.isoformat(), "action": row.action, "source": row.source,
                        "reference": row.reference, "before": json.loads(row.before_json),
                        "after": json.loads(row.after_json)} for row in rows]
            return PatientRecord(patient.PatientID, patient.IssuerOfPatientID, _demographics(patient), history)


def _demographics(patient: Patient) -> dict[str, str]:
    return {keyword: str(getattr(patient, keyword) or "") for keyword in DEMOGRAPHICS}


def _dataset(demographics: dict[str, str]) -> Dataset:
    dataset = Dataset()
    for keyword, value in demographics.items():
        if value:
            setattr(dataset, keyword, value)
    return dataset


def _columns(patient_id: str, issuer: str, demographics: dict[str, str]) -> dict[str, Any]:
    dataset = _dataset(demographics)
    dataset.PatientID = patient_id
    if issuer:
        dataset.IssuerOfPatientID = issuer
    return column_values(dataset, PATIENT_KEYS, _WIDTHS)
