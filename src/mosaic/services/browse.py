"""Browsing the archive for people: the most recently updated studies (the landing page)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from mosaic.index.database import Database
from mosaic.index.query import Scope
from mosaic.index.schema import Patient, Study


@dataclass(frozen=True)
class StudySummary:
    StudyInstanceUID: str
    PatientName: str
    PatientID: str
    StudyDate: str
    StudyDescription: str
    AccessionNumber: str
    ModalitiesInStudy: list[str]
    NumberOfStudyRelatedSeries: int
    NumberOfStudyRelatedInstances: int


class BrowseService:
    def __init__(self, database: Database) -> None:
        self.database = database

    def recent_studies(self, limit: int = 50, *, scope: Scope) -> list[StudySummary]:
        # a scoped caller sees the patient as its own studies describe it (docs/architecture.md, shared patients)
        name = Patient.PatientName if scope.unrestricted else Study.PatientName
        statement = (
            select(Study.StudyInstanceUID, name, Patient.PatientID, Study.StudyDate,
                   Study.StudyDescription, Study.AccessionNumber, Study.ModalitiesInStudy,
                   Study.NumberOfStudyRelatedSeries, Study.NumberOfStudyRelatedInstances)
            .join(Patient, Study.patient_pk == Patient.pk)
            .where(scope.study_condition())
            .order_by(Study.updated_at.desc(), Study.pk.desc())
            .limit(limit)
        )
        with self.database.session() as session:
            return [StudySummary(row[0], row[1], row[2], row[3], row[4], row[5],
                                 [value for value in row[6].split("\\") if value], row[7], row[8])
                    for row in session.execute(statement)]
