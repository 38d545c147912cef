"""Reports from the hospital's systems (HL7 ORU^R01, MDM^T02) as standard DICOM objects of their study, and the
rows FHIR DiagnosticReport / DocumentReference answer from.

A :class:`Report` (what :mod:`mosaic.hl7.reports` reads from a message) is linked to its study — by the Study
Instance UID it names, else by its accession number — in the index, or in the worklist when the study was ordered
but has no images yet. Its text becomes a Basic Text SR (PS3.3 A.35.1; root CONTAINER 11528-7 "Radiology Report",
the findings and conclusions as TEXT items, TID 2000's sections), an embedded PDF an Encapsulated PDF (A.45.1);
either is stored through :class:`~mosaic.services.ingest.IngestService` like any object, so it is checked, indexed,
audited and answered by QIDO-RS, C-FIND and WADO-RS. The Patient module is the archive's current one for the
study's patient, the study's attributes are copied from the study. The SOP Instance UID is derived from the
sender, the message control ID (MSH-10), the study and a SHA-256 of the report's content (its text, PDF and
status), so a message sent again stores nothing twice while another report under a reused control ID is stored; a
correction (another message) is a new instance in the same series (one report series per study and kind), naming
its predecessor.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from mosaic.index.database import Database
from mosaic.index.query import Scope
from mosaic.index.schema import Instance, Patient, ScheduledStep, Series, Study
from mosaic.index.schema import Report as ReportRow
from mosaic.services.ingest import IngestOutcome, IngestService
from mosaic.services.origin import IngestOrigin
from mosaic.services.patients import resolve

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
LOINC = "LN"
DCM = "DCM"
REPORT_CODE = ("11528-7", LOINC, "Radiology Report")
_FINDINGS = (("121070", DCM, "Findings"), ("121071", DCM, "Finding"))
_CONCLUSIONS = (("121076", DCM, "Conclusions"), ("121077", DCM, "Conclusion"))
_SERIES_NUMBER = {"SR": 9001, "PDF": 9002}
_MANUFACTURER = "Mosaic"


class ReportError(Exception):
    """A report that cannot be stored as asked: ``location`` is what of the report was wrong (the reader maps it to
    the message's field)."""

    def __init__(self, text: str, location: str) -> None:
        super().__init__(text)
        self.location = location


class UnknownStudy(ReportError):
    """Neither the Study Instance UID nor the accession number is one the archive or its worklist knows."""


class WrongPatient(ReportError):
    """The study named belongs to another patient than the report's."""


@dataclass(frozen=True)
class Observation:
    text: str
    conclusion: bool = False
    """An impression / conclusion rather than a finding."""


@dataclass
class Report:
    """One report as a message states it (empty strings: not given)."""

    PatientID: str
    IssuerOfPatientID: str
    StudyInstanceUID: str
    AccessionNumber: str
    result_status: str
    """HL7 Table 0123 (OBR-25): F final, C corrected, P preliminary, …"""
    sender: str
    """``hl7:<application>^<facility>``: with ``control_id``, what makes a message the same message again."""
    control_id: str
    study_location: str = "OBR^1^18"
    """The field that named the study (ERR-2 of an unknown study)."""
    code: tuple[str, str, str] = ("", "", "")
    """OBR-4 (universal service): code, text, coding system."""
    title: str = ""
    observations: list[Observation] = field(default_factory=list)
    pdf: bytes | None = None
    pdf_title: str = ""
    interpreter: str = ""
    """Principal result interpreter (OBR-32) as a DICOM person name."""
    observed: str = ""
    """OBR-22 (status change) else OBR-7 (observation), as DICOM DT digits."""
    demographics: dict[str, str | None] = field(default_factory=dict)
    """The PID's, for a patient the archive does not know yet (an ordered study's patient always is)."""

    @property
    def complete(self) -> bool:
        return self.result_status in ("F", "C")

    @property
    def verified(self) -> bool:
        """Final or corrected, and someone verified it (OBR-32, MDM: TXA-22 / TXA-9): SR VERIFIED needs a
        Verifying Observer."""
        return self.complete and bool(self.interpreter)

    def digest(self) -> str:
        """SHA-256 of what the report says (its text, its PDF, its status): an identical message sent again has
        the same, another report under a reused control ID does not."""
        content = hashlib.sha256()
        for part in (self.result_status.encode(), *(f"{item.conclusion}:{item.text}".encode()
                                                     for item in self.observations), self.pdf or b""):
            content.update(len(part).to_bytes(8, "big"))
            content.update(part)
        return content.hexdigest()

    @property
    def corrected(self) -> bool:
        return self.result_status == "C"


@dataclass(frozen=True)
class StoredReport:
    SOPInstanceUID: str
    StudyInstanceUID: str
    kind: str
    outcome: str
    """An :class:`IngestOutcome` value."""


@dataclass(frozen=True)
class _Target:
    """The study a report goes into, with what the new object copies from it."""

    patient: dict[str, str]
    study: dict[str, str]
    step_pk: int | None
    placer_order: str = ""
    filler_order: str = ""


_PATIENT_KEYS = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientBirthTime",
                 "PatientSex", "EthnicGroup")
_STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
               "ReferringPhysicianName", "StudyDescription")


class ReportService:
    def __init__(self, database: Database, ingest: IngestService) -> None:
        self.database = database
        self.ingest = ingest

    def store(self, report: Report | list[Report], origin: IngestOrigin, *, scope: Scope) -> list[StoredReport]:
        """Store each report's objects (a text SR, an Encapsulated PDF, or both) in its study; returns them once
        each is durable. Every report is checked and its study found before anything is stored (a message is
        applied whole or not at all). Only studies and orders in the sender's ``scope`` are found: another
        facility's are unknown to it (and ingest's store check refuses them too). Raises :class:`UnknownStudy`,
        :class:`WrongPatient`, :class:`ReportError` (a "PDF" that is not one) or ingest's
        :class:`~mosaic.core.errors.InvalidObject`."""
        reports = report if isinstance(report, list) else [report]
        for each in reports:
            if each.pdf is not None and not each.pdf.startswith(b"%PDF"):
                raise ReportError("the embedded document is not a PDF (it does not start with %PDF)", "pdf")
            if not each.observations and each.pdf is None:
                raise ReportError("the report has neither text nor an embedded PDF", "observations")
        with self.database.session() as session:
            targets = [_target(session, each, scope) for each in reports]
        # every object is built before the first is stored: one that cannot be built stores none of them
        pending: dict[str, list[str]] = {}  # series → objects of this message before the next one in it
        prepared = [self._prepare(each, kind, target, pending) for each, target in zip(reports, targets, strict=True)
                    for kind in (["SR"] if each.observations else []) + (["PDF"] if each.pdf is not None else [])]
        stored = []
        for item in prepared:
            outcome = IngestOutcome.ALREADY_STORED.value
            if item.data is not None:
                outcome = self.ingest.store(item.data, origin).outcome.value
            self._record(item.report, item.kind, item.target, item.sop_uid, item.series_uid)
            stored.append(StoredReport(item.sop_uid, item.target.study["StudyInstanceUID"], item.kind, outcome))
        return stored

    def _prepare(self, report: Report, kind: str, target: _Target, pending: dict[str, list[str]]) -> _Prepared:
        study_uid = target.study["StudyInstanceUID"]
        sop_uid = generate_uid(entropy_srcs=["mosaic report", report.sender, report.control_id, kind, study_uid,
                                             report.digest()])
        series_uid = generate_uid(entropy_srcs=["mosaic report series", study_uid, kind])
        with self.database.session() as session:
            known = session.scalar(select(Instance.pk).where(Instance.SOPInstanceUID == sop_uid))
            earlier = list(session.scalars(
                select(ReportRow.SOPInstanceUID).where(
                    ReportRow.SeriesInstanceUID == series_uid, ReportRow.SOPInstanceUID != sop_uid)
                .order_by(ReportRow.pk)))
        earlier += pending.setdefault(series_uid, [])
        pending[series_uid].append(sop_uid)
        if known is not None:  # a message sent again is answered from what its first sending stored
            return _Prepared(report, kind, target, sop_uid, series_uid, None)
        dataset = (_text_sr if kind == "SR" else _encapsulated_pdf)(report, target)
        dataset.SOPInstanceUID, dataset.SeriesInstanceUID = sop_uid, series_uid
        dataset.InstanceNumber = len(earlier) + 1
        if kind == "SR" and report.corrected and earlier:
            dataset.PredecessorDocumentsSequence = _predecessors(study_uid, series_uid, earlier[-1])
        return _Prepared(report, kind, target, sop_uid, series_uid, _part10(dataset))

    def _record(self, report: Report, kind: str, target: _Target, sop_uid: str, series_uid: str) -> None:
        """The report's row, written (once) after its object is durable: an instance stored whose row a failure
        left unwritten gets it when the message is sent again."""
        def work(session: Session) -> None:
            if session.scalar(select(ReportRow.pk).where(ReportRow.SOPInstanceUID == sop_uid)) is not None:
                return
            findings = "\n\n".join(item.text for item in report.observations if not item.conclusion)
            conclusion = "\n\n".join(item.text for item in report.observations if item.conclusion)
            session.add(ReportRow(
                SOPInstanceUID=sop_uid, StudyInstanceUID=target.study["StudyInstanceUID"],
                SeriesInstanceUID=series_uid, kind=kind, status=fhir_status(report.result_status),
                code="^".join(report.code).rstrip("^")[:200], title=_title(report, kind)[:64],
                text=findings if kind == "SR" else "", conclusion=conclusion if kind == "SR" else "",
                document_length=len(report.pdf) if kind == "PDF" and report.pdf is not None else None,
                observed=report.observed[:26], performer=report.interpreter[:320],
                AccessionNumber=target.study["AccessionNumber"][:16], scheduled_step_pk=target.step_pk,
                source=report.sender[:128], control_id=report.control_id[:64], created_at=datetime.now(UTC)))

        self.database.write(work)

    def find(self, *, scope: Scope, patient: tuple[str, str] | None = None, kind: str | None = None,
             step_pk: int | None = None, status: str | None = None, accession: str | None = None,
             sop_instance_uid: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[ReportFound], int]:
        """Reports of studies in ``scope``, newest first, and how many match (FHIR searches and reads)."""
        conditions: list[ColumnElement[bool]] = [scope.study_condition()]
        if patient is not None:
            conditions += [Patient.PatientID == patient[0], Patient.IssuerOfPatientID == patient[1]]
        if kind is not None:
            conditions.append(ReportRow.kind == kind)
        if step_pk is not None:
            conditions.append(ReportRow.scheduled_step_pk == step_pk)
        if status is not None:
            conditions.append(ReportRow.status == status)
        if accession is not None:
            conditions.append(ReportRow.AccessionNumber == accession)
        if sop_instance_uid is not None:
            conditions.append(ReportRow.SOPInstanceUID == sop_instance_uid)
        joined = (select(ReportRow, Patient.pk, Patient.PatientID, Patient.IssuerOfPatientID).select_from(ReportRow)
                  .join(Instance, Instance.SOPInstanceUID == ReportRow.SOPInstanceUID)
                  .join(Series, Instance.series_pk == Series.pk).join(Study, Series.study_pk == Study.pk)
                  .join(Patient, Study.patient_pk == Patient.pk).where(and_(*conditions)))
        with self.database.session() as session:
            rows = session.execute(joined.order_by(ReportRow.pk.desc()).offset(offset).limit(limit)).all()
            found = [ReportFound(row[0], int(row[1]), str(row[2] or ""), str(row[3] or "")) for row in rows]
            for item in found:
                session.expunge(item.row)
            total = len(found) if not offset and len(found) < limit else int(session.scalar(
                select(func.count()).select_from(joined.subquery())) or 0)
        return found, total


@dataclass(frozen=True)
class ReportFound:
    row: ReportRow
    patient_pk: int
    PatientID: str = ""
    IssuerOfPatientID: str = ""
    """The patient the report's study belongs to now (what the audit entry names)."""


def fhir_status(result_status: str) -> str:
    """HL7 Table 0123 result status → FHIR DiagnosticReport.status."""
    return {"F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary", "S": "partial",
            "I": "registered", "X": "cancelled", "W": "entered-in-error"}.get(result_status, "preliminary")


def _title(report: Report, kind: str) -> str:
    if kind == "PDF" and report.pdf_title:
        return report.pdf_title
    return report.title or report.code[1] or REPORT_CODE[2]


@dataclass(frozen=True)
class _Prepared:
    """One object of a report, built and encoded (``data``), or None when an earlier sending stored it."""

    report: Report
    kind: str
    target: _Target
    sop_uid: str
    series_uid: str
    data: bytes | None


def _target(session: Session, report: Report, scope: Scope) -> _Target:
    patient = resolve(session, report.PatientID, report.IssuerOfPatientID)
    study = None
    step = None
    studies = select(Study).where(scope.study_condition())
    steps = select(ScheduledStep).where(scope.scheduled_step_condition())
    if report.StudyInstanceUID:
        study = session.scalar(studies.where(Study.StudyInstanceUID == report.StudyInstanceUID))
        if study is None:
            step = session.scalar(steps.where(
                ScheduledStep.StudyInstanceUID == report.StudyInstanceUID).order_by(ScheduledStep.pk).limit(1))
    if study is None and step is None and report.AccessionNumber:
        if patient is not None:
            study = session.scalar(studies.where(Study.AccessionNumber == report.AccessionNumber,
                                                 Study.patient_pk == patient.pk).order_by(Study.pk).limit(1))
        if study is None:
            study = session.scalar(studies.where(Study.AccessionNumber == report.AccessionNumber)
                                   .order_by(Study.pk).limit(1))
        if study is None:
            step = session.scalar(steps.where(
                ScheduledStep.AccessionNumber == report.AccessionNumber).order_by(ScheduledStep.pk).limit(1))
    if study is None and step is None:
        named = " and ".join(part for part in (
            f"Study Instance UID {report.StudyInstanceUID}" if report.StudyInstanceUID else "",
            f"accession number {report.AccessionNumber!r}" if report.AccessionNumber else "") if part)
        raise UnknownStudy(f"{named or 'no study'}: not a study the archive or its worklist knows; send the "
                           "report once the study is ordered or stored", report.study_location)
    if study is not None:
        if patient is None or patient.pk != study.patient_pk:
            raise WrongPatient(f"study {study.StudyInstanceUID} belongs to another patient than "
                               f"{report.PatientID} ({report.IssuerOfPatientID or 'no issuer'})", "patient")
        owner = session.get(Patient, study.patient_pk)
        assert owner is not None
        step_pk = session.scalar(select(ScheduledStep.pk).where(
            ScheduledStep.AccessionNumber == study.AccessionNumber, ScheduledStep.PatientID == owner.PatientID,
            ScheduledStep.IssuerOfPatientID == owner.IssuerOfPatientID).order_by(ScheduledStep.pk).limit(1)) \
            if study.AccessionNumber else None
        ordered = session.get(ScheduledStep, step_pk) if step_pk is not None else None
        return _Target({key: str(getattr(owner, key) or "") for key in _PATIENT_KEYS},
                       {key: str(getattr(study, key) or "") for key in _STUDY_KEYS}, step_pk,
                       ordered.placer_order if ordered else "", ordered.filler_order if ordered else "")
    assert step is not None
    ordered_patient = resolve(session, step.PatientID, step.IssuerOfPatientID)
    if patient is None or ordered_patient is None or patient.pk != ordered_patient.pk:
        raise WrongPatient(f"order {step.AccessionNumber} is for another patient than {report.PatientID} "
                           f"({report.IssuerOfPatientID or 'no issuer'})", "patient")
    values = {
        "StudyInstanceUID": step.StudyInstanceUID, "StudyDate": "", "StudyTime": "",
        "AccessionNumber": step.AccessionNumber, "StudyID": step.RequestedProcedureID,
        "ReferringPhysicianName": step.ReferringPhysicianName,
        "StudyDescription": step.RequestedProcedureDescription,
    }
    return _Target({key: str(getattr(patient, key) or "") for key in _PATIENT_KEYS}, values, step.pk,
                   step.placer_order, step.filler_order)


def _code(value: tuple[str, str, str]) -> Dataset:
    """A code item: ``(value, scheme, meaning)``; a value longer than 16 characters (CodeValue is SH) is a
    LongCodeValue (UC)."""
    item = Dataset()
    if len(value[0]) > 16:
        item.LongCodeValue = value[0]
    else:
        item.CodeValue = value[0]
    item.CodingSchemeDesignator, item.CodeMeaning = value[1], value[2][:64]
    return item


def _common(report: Report, target: _Target, sop_class: str, modality: str) -> Dataset:
    """SOP Common, Patient, General Study, the series' Modality / Number and General Equipment."""
    dataset = Dataset()
    texts = [*target.patient.values(), *target.study.values(), report.title, report.pdf_title, report.interpreter,
             *(item.text for item in report.observations)]
    if not all(text.isascii() for text in texts):  # ASCII needs no Specific Character Set
        dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.SOPClassUID = sop_class
    created = report.observed or datetime.now(UTC).strftime("%Y%m%d%H%M%S")  # SR content date: type 1
    date, time = created[:8], created[8:14].ljust(6, "0")  # a date-only report: 000000 (TM, HHMMSS)
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
    for keyword in _PATIENT_KEYS:
        value = target.patient.get(keyword, "")
        if keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
            setattr(dataset, keyword, value or None)  # type 2
        elif value:
            setattr(dataset, keyword, value)
    for keyword in _STUDY_KEYS:
        value = target.study.get(keyword, "")
        if keyword in ("StudyInstanceUID",) or value:
            setattr(dataset, keyword, value)
        elif keyword != "StudyDescription":
            setattr(dataset, keyword, None)  # type 2
    dataset.Modality = modality
    dataset.SeriesNumber = _SERIES_NUMBER["SR" if modality == "SR" else "PDF"]
    dataset.SeriesDescription = "Reports" if modality == "SR" else "Report documents"
    dataset.Manufacturer = _MANUFACTURER
    dataset.ContentDate, dataset.ContentTime = date, time
    return dataset


def _text_sr(report: Report, target: _Target) -> Dataset:
    """A Basic Text SR (PS3.3 A.35.1) of the report's text: findings and conclusions as TID 2000 sections."""
    dataset = _common(report, target, BASIC_TEXT_SR, "SR")
    dataset.ReferencedPerformedProcedureStepSequence = Sequence()
    dataset.CompletionFlag = "COMPLETE" if report.complete else "PARTIAL"
    dataset.VerificationFlag = "VERIFIED" if report.verified else "UNVERIFIED"
    if report.verified:
        observer = Dataset()
        observer.VerifyingObserverName = report.interpreter
        observer.VerifyingObserverIdentificationCodeSequence = Sequence()
        observer.VerifyingOrganization = (report.sender.removeprefix("hl7:").partition("^")[2]
                                          or report.sender.removeprefix("hl7:"))[:64] or "UNKNOWN"
        observer.VerificationDateTime = report.observed or dataset.ContentDate or "19000101"
        dataset.VerifyingObserverSequence = Sequence([observer])
    request = Dataset()
    request.StudyInstanceUID = target.study["StudyInstanceUID"]
    request.ReferencedStudySequence = Sequence()  # type 2: no Study SOP Instance to name
    request.AccessionNumber = target.study["AccessionNumber"] or None
    request.IssuerOfAccessionNumberSequence = Sequence()  # type 2: the archive keeps no issuer of accessions
    request.RequestedProcedureID = target.study["StudyID"] or None
    request.RequestedProcedureDescription = (report.code[1] or target.study["StudyDescription"])[:64] or None
    request.RequestedProcedureCodeSequence = Sequence(
        [_code((report.code[0], report.code[2], report.code[1]))]  # OBR-4 is code^text^system
        if report.code[0] and report.code[1] and report.code[2] else [])
    request.PlacerOrderNumberImagingServiceRequest = target.placer_order[:16] or None
    request.FillerOrderNumberImagingServiceRequest = target.filler_order[:16] or None
    dataset.ReferencedRequestSequence = Sequence([request])
    dataset.PerformedProcedureCodeSequence = Sequence()
    dataset.ValueType = "CONTAINER"
    dataset.ConceptNameCodeSequence = Sequence([_code(REPORT_CODE)])
    dataset.ContinuityOfContent = "SEPARATE"
    sections = []
    for (section, entry), conclusion in ((_FINDINGS, False), (_CONCLUSIONS, True)):
        texts = [item.text for item in report.observations if item.conclusion == conclusion]
        if not texts:
            continue
        container = _content("CONTAINER", section)
        container.ContinuityOfContent = "SEPARATE"
        children = []
        for text in texts:
            item = _content("TEXT", entry)
            item.TextValue = text
            children.append(item)
        container.ContentSequence = Sequence(children)
        sections.append(container)
    dataset.ContentSequence = Sequence(sections)
    return dataset


def _content(value_type: str, concept: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([_code(concept)])
    return item


def _encapsulated_pdf(report: Report, target: _Target) -> Dataset:
    """An Encapsulated PDF (PS3.3 A.45.1) of the report's embedded document."""
    assert report.pdf is not None and report.pdf.startswith(b"%PDF")
    dataset = _common(report, target, ENCAPSULATED_PDF, "DOC")
    dataset.ReferencedPerformedProcedureStepSequence = Sequence()
    dataset.ConversionType = "WSD"
    dataset.AcquisitionDateTime = report.observed or None
    dataset.BurnedInAnnotation = "YES"
    dataset.DocumentTitle = _title(report, "PDF")[:64]
    dataset.ConceptNameCodeSequence = Sequence([_code(REPORT_CODE)])
    dataset.VerificationFlag = "VERIFIED" if report.verified else "UNVERIFIED"
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    dataset.EncapsulatedDocumentLength = len(report.pdf)
    dataset.EncapsulatedDocument = report.pdf + (b"\0" if len(report.pdf) % 2 else b"")  # OB: even length
    return dataset


def _predecessors(study_uid: str, series_uid: str, sop_uid: str) -> Sequence:
    """PredecessorDocumentsSequence of a correction: the report it replaces."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = BASIC_TEXT_SR
    instance.ReferencedSOPInstanceUID = sop_uid
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedSOPSequence = Sequence([instance])
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = Sequence([series])
    return Sequence([study])


def _part10(dataset: Dataset) -> bytes:
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

