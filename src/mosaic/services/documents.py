"""A patient's documents and captured media as the EHR lists them (FHIR DocumentReference): every Encapsulated
PDF, photo (VL Photographic, Endoscopic, Microscopic) and video (Video Photographic, Endoscopic, Microscopic)
instance of the caller's studies, whatever door it came through (a capture in the portal, STOW-RS, an import, a
modality's C-STORE, an HL7 report's PDF: then with its report row, which says more)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, select

from mosaic.index.database import Database
from mosaic.index.query import Scope
from mosaic.index.schema import Instance, Patient, Series, Study
from mosaic.index.schema import Report as ReportRow
from mosaic.services.portal import DOCUMENT_CLASSES, PHOTO_CLASSES, VIDEO_CLASSES, kind_of

DOCUMENT_SOP_CLASSES = frozenset((DOCUMENT_CLASSES | PHOTO_CLASSES | VIDEO_CLASSES)
                                 - {"1.2.840.10008.5.1.4.1.1.7"})  # a Secondary Capture is an image, not a document


@dataclass(frozen=True)
class DocumentFound:
    SOPInstanceUID: str
    SOPClassUID: str
    TransferSyntaxUID: str
    SeriesInstanceUID: str
    StudyInstanceUID: str
    AccessionNumber: str
    SeriesDescription: str
    department: str
    received_at: datetime
    patient_pk: int
    PatientID: str
    IssuerOfPatientID: str
    report: ReportRow | None
    """The HL7 report the document is, when it is one."""

    @property
    def kind(self) -> str:
        return kind_of(self.SOPClassUID)


class DocumentService:
    def __init__(self, database: Database) -> None:
        self.database = database

    def find(self, *, scope: Scope, patient: tuple[str, str] | None = None, sop_instance_uid: str | None = None,
             accession: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[DocumentFound], int]:
        """Documents of studies in ``scope``, newest first, and how many match."""
        conditions: list[ColumnElement[bool]] = [scope.study_condition(),
                                                 Instance.SOPClassUID.in_(sorted(DOCUMENT_SOP_CLASSES))]
        if patient is not None:
            conditions += [Patient.PatientID == patient[0], Patient.IssuerOfPatientID == patient[1]]
        if sop_instance_uid is not None:
            conditions.append(Instance.SOPInstanceUID == sop_instance_uid)
        if accession is not None:
            conditions.append(Study.AccessionNumber == accession)
        joined = (select(Instance.SOPInstanceUID, Instance.SOPClassUID, Instance.TransferSyntaxUID,
                         Series.SeriesInstanceUID, Study.StudyInstanceUID, Study.AccessionNumber,
                         Series.SeriesDescription, Study.department, Instance.received_at, Patient.pk,
                         Patient.PatientID, Patient.IssuerOfPatientID, ReportRow)
                  .select_from(Instance).join(Series, Instance.series_pk == Series.pk)
                  .join(Study, Series.study_pk == Study.pk).join(Patient, Study.patient_pk == Patient.pk)
                  .outerjoin(ReportRow, ReportRow.SOPInstanceUID == Instance.SOPInstanceUID)
                  .where(and_(*conditions)))
        with self.database.session() as session:
            rows = session.execute(joined.order_by(Instance.pk.desc()).offset(offset).limit(limit)).all()
            found = [DocumentFound(str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5] or ""),
                                   str(row[6] or ""), str(row[7] or ""), row[8], int(row[9]), str(row[10] or ""),
                                   str(row[11] or ""), row[12]) for row in rows]
            for item in found:
                if item.report is not None:
                    session.expunge(item.report)
            total = len(found) if not offset and len(found) < limit else int(session.scalar(
                select(func.count()).select_from(joined.subquery())) or 0)
        return found, total
