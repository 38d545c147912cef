"""The patient portal's reads: patients found by name (wildcards, accents ignored), ID with issuer or birth date;
one patient's longitudinal record (every study of every specialty, newest first, with what a timeline shows of
each); one study's objects, each as what a person opens it with (the viewer, a lightbox, a video player, a
document). Always within the caller's :class:`~mosaic.index.query.Scope`: what is outside is neither listed nor
counted.

A study's specialty is the department it is filed under (a capture's, or the sender's label), else what its
series' departments say, else what its modalities are used for (radiology for CT, MR, …; cardiology for ECG,
IVUS, …; ophthalmology for OP, OPT, …; endoscopy for ES; pathology for SM; dentistry for IO, PX; clinical
photography for XC)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from mosaic.index.database import Database
from mosaic.index.query import MatchKey, Query, Scope
from mosaic.index.schema import Instance, Patient, Series, Study
from mosaic.services.query import QueryService

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
VIDEO_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic
                           "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic
                           "1.2.840.10008.5.1.4.1.1.77.1.2.1"})  # Video Microscopic
PHOTO_CLASSES = frozenset({VL_PHOTOGRAPHIC,
                           "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic
                           "1.2.840.10008.5.1.4.1.1.77.1.2",  # VL Microscopic
                           "1.2.840.10008.5.1.4.1.1.77.1.3",  # VL Slide-Coordinates Microscopic
                           "1.2.840.10008.5.1.4.1.1.7"})  # Secondary Capture
DOCUMENT_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.104.1"})  # Encapsulated PDF
REPORT_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # Structured Reports

_STUDY_COLUMNS = (Study.pk, Study.StudyInstanceUID, Study.StudyDate, Study.StudyTime, Study.StudyDescription,
                  Study.AccessionNumber, Study.ModalitiesInStudy, Study.department, Study.facility,
                  Study.InstitutionName, Study.NumberOfStudyRelatedSeries, Study.NumberOfStudyRelatedInstances,
                  Study.PatientName, Study.PatientBirthDate, Study.PatientSex)
"""What the timeline reads of a study (tuples, not ORM objects: 500 studies load in a fraction of the time)."""
_StudyRow = Any
"""A :class:`Study` or a row of :data:`_STUDY_COLUMNS`: what :func:`_summaries` and :func:`_hit` read of it."""

SPECIALTY_OF_MODALITY: dict[str, str] = {
    **{modality: "radiology" for modality in ("CT", "MR", "CR", "DX", "MG", "US", "NM", "PT", "RF", "XA", "RG",
                                              "DR", "DG", "BMD", "BDUS", "TG", "RTIMAGE", "RTSTRUCT", "RTPLAN",
                                              "RTDOSE", "RTRECORD", "SEG", "KO", "PR")},
    **{modality: "cardiology" for modality in ("ECG", "EPS", "HD", "IVUS", "IVOCT", "CATH", "BI", "HC")},
    **{modality: "ophthalmology" for modality in ("OP", "OPT", "OPM", "OPV", "OAM", "OCT", "OSS", "OPTBSV",
                                                  "OPTENF", "VA", "LEN", "KER", "SRF", "IOL")},
    "ES": "endoscopy", "SM": "pathology", "GM": "pathology", "IO": "dentistry", "PX": "dentistry",
    "DOC": "documents", "XC": "clinical photography", "SR": "reports",
}
"""Modality (PS3.3 C.7.3.1.1.1 defined terms) → the specialty that uses it, when a study says no department."""


def kind_of(sop_class_uid: str) -> str:
    """How a person opens an object: ``photo`` (lightbox), ``video`` (the browser's player), ``document`` (inline
    PDF), ``report`` (structured report text) or ``image`` (the DICOM viewer)."""
    if sop_class_uid in PHOTO_CLASSES:
        return "photo"
    if sop_class_uid in VIDEO_CLASSES:
        return "video"
    if sop_class_uid in DOCUMENT_CLASSES:
        return "document"
    if sop_class_uid.startswith(REPORT_PREFIX):
        return "report"
    return "image"


@dataclass(frozen=True)
class PatientHit:
    pk: int
    PatientID: str
    IssuerOfPatientID: str
    PatientName: str
    PatientBirthDate: str
    PatientSex: str
    studies: int
    """Studies of this patient the caller may see."""


@dataclass(frozen=True)
class Cover:
    """The object a study or series is shown by (its thumbnail, or what opens first)."""

    SeriesInstanceUID: str
    SOPInstanceUID: str
    kind: str


@dataclass(frozen=True)
class TimelineStudy:
    StudyInstanceUID: str
    StudyDate: str
    StudyTime: str
    StudyDescription: str
    AccessionNumber: str
    modalities: list[str]
    specialty: str
    facility: str
    body_sites: list[str]
    series: int
    instances: int
    kinds: list[str]
    cover: Cover | None


@dataclass
class Timeline:
    patient: PatientHit
    studies: list[TimelineStudy]
    specialties: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    facilities: list[str] = field(default_factory=list)
    """What the filters offer: the values of the caller's studies of this patient (before filtering)."""


@dataclass(frozen=True)
class StudyObject:
    SeriesInstanceUID: str
    SOPInstanceUID: str
    SOPClassUID: str
    kind: str
    Modality: str
    SeriesDescription: str
    InstanceNumber: int | None
    NumberOfFrames: int | None
    count: int = 1
    """Objects it stands for: an image series is one entry (its images open in the viewer, not one by one)."""


@dataclass(frozen=True)
class StudyView:
    study: TimelineStudy
    patient: PatientHit
    objects: list[StudyObject]


class PortalService:
    def __init__(self, database: Database, query: QueryService) -> None:
        self.database = database
        self.query = query

    def search_patients(self, *, name: str = "", patient_id: str = "", issuer: str = "", birth_date: str = "",
                        scope: Scope, limit: int = 50) -> list[PatientHit]:
        """Patients matching every given term (a name without regard to case or accents, its components by
        their beginning, ``*`` and ``?`` as wildcards), as the caller sees them; at most ``limit``."""
        keys = [MatchKey(keyword, value.strip(), vr) for keyword, value, vr in (
            ("PatientName", name, "PN"), ("PatientID", patient_id, "LO"), ("IssuerOfPatientID", issuer, "LO"),
            ("PatientBirthDate", birth_date.replace("-", ""), "DA")) if value.strip()]
        matches = self.query.find(Query("PATIENT", keys, ["PatientName", "PatientBirthDate", "PatientSex"],
                                        fuzzy=True, limit=limit), door="portal", scope=scope)
        hits = []
        for match in matches:
            patient = match.rows["PATIENT"]
            studies = match.overrides.get("NumberOfPatientRelatedStudies",
                                          getattr(patient, "NumberOfPatientRelatedStudies", 0))
            hits.append(PatientHit(int(patient.pk), patient.PatientID, patient.IssuerOfPatientID,
                                   str(patient.PatientName or ""), str(patient.PatientBirthDate or ""),
                                   str(patient.PatientSex or ""), int(studies or 0)))
        return hits

    def timeline(self, patient_pk: int, *, scope: Scope, specialty: str = "", modality: str = "",
                 facility: str = "", since: str = "", until: str = "") -> Timeline | None:
        """The caller's studies of the patient numbered ``patient_pk``, newest first, filtered; None when the
        caller may see none of them (and the patient has no studies at all, or is not in the archive)."""
        with self.database.session() as session:
            patient = session.get(Patient, patient_pk)
            if patient is None:
                return None
            of_patient = and_(Study.patient_pk == patient_pk, scope.study_condition())
            rows = list(session.execute(select(*_STUDY_COLUMNS).where(of_patient)
                                        .order_by(Study.StudyDate.desc(), Study.StudyTime.desc(), Study.pk.desc())))
            if not rows and not scope.unrestricted:
                return None  # none of the patient's studies is the caller's: it is told nothing of the patient
            studies = _summaries(session, rows, of_patient)
            hit = _hit(patient, rows, len(rows), scope)
        timeline = Timeline(hit, [], sorted({study.specialty for study in studies}),
                            sorted({modality for study in studies for modality in study.modalities}),
                            sorted({study.facility for study in studies if study.facility}))
        day_from, day_to = since.replace("-", ""), until.replace("-", "")
        timeline.studies = [study for study in studies
                            if (not specialty or study.specialty == specialty)
                            and (not modality or modality in study.modalities)
                            and (not facility or study.facility == facility)
                            and (not day_from or study.StudyDate >= day_from)
                            and (not day_to or (study.StudyDate and study.StudyDate <= day_to))]
        return timeline

    def study(self, study_instance_uid: str, *, scope: Scope) -> StudyView | None:
        """One study the caller may see, with its objects in series and instance order (None otherwise)."""
        with self.database.session() as session:
            row = session.scalar(select(Study).where(Study.StudyInstanceUID == study_instance_uid,
                                                     scope.study_condition()))
            if row is None:
                return None
            patient = session.get(Patient, row.patient_pk)
            assert patient is not None  # a study always has its patient
            [summary] = _summaries(session, [row], Study.pk == row.pk)
            objects = _objects(session, row.pk)
            visible = session.scalar(select(func.count()).select_from(Study).where(
                Study.patient_pk == patient.pk, scope.study_condition())) or 0
            return StudyView(summary, _hit(patient, [row], int(visible), scope), objects)


_OPENED_ONE_BY_ONE = sorted(PHOTO_CLASSES | VIDEO_CLASSES | DOCUMENT_CLASSES)


def _objects(session: Session, study_pk: int) -> list[StudyObject]:
    """A study's objects as its page lists them: each photo, video, document and report, and each image series
    once (with its first image and how many it has), in series order; two statements, whatever the study's size
    (a CT of thousands of slices is one entry, not thousands)."""
    one_by_one = or_(Instance.SOPClassUID.in_(_OPENED_ONE_BY_ONE), Instance.SOPClassUID.like(f"{REPORT_PREFIX}%"))
    columns = (Series.SeriesInstanceUID, Series.Modality, Series.SeriesDescription, Instance.SOPInstanceUID,
               Instance.SOPClassUID, Instance.InstanceNumber, Instance.NumberOfFrames, Series.SeriesNumber, Series.pk)
    listed: list[tuple[tuple[Any, ...], int]] = [(tuple(row), 1) for row in session.execute(
        select(*columns).join(Instance, Instance.series_pk == Series.pk)
        .where(Series.study_pk == study_pk, one_by_one))]
    images = (select(Instance.series_pk, func.min(Instance.pk).label("first"), func.count().label("images"))
              .join(Series, Instance.series_pk == Series.pk)
              .where(Series.study_pk == study_pk, ~one_by_one).group_by(Instance.series_pk).subquery())
    listed += [(tuple(row)[:-1], int(row[-1])) for row in session.execute(
        select(*columns, images.c.images).join(Instance, Instance.series_pk == Series.pk)
        .join(images, Instance.pk == images.c.first))]
    listed.sort(key=lambda item: (item[0][7] is None, item[0][7] or 0, item[0][8], item[0][5] or 0))
    return [StudyObject(series_uid, sop_uid, sop_class, kind_of(sop_class), modality or "", description or "",
                        number, frames, count)
            for (series_uid, modality, description, sop_uid, sop_class, number, frames, _n, _pk), count in listed]


def _hit(patient: Patient, studies: Sequence[_StudyRow], visible: int, scope: Scope) -> PatientHit:
    """The patient as the caller sees it: a scoped caller, as its own newest study describes the patient."""
    source: Patient | _StudyRow = patient if scope.unrestricted or not studies else studies[0]
    return PatientHit(patient.pk, patient.PatientID, patient.IssuerOfPatientID, str(source.PatientName or ""),
                      str(source.PatientBirthDate or ""), str(source.PatientSex or ""), visible)


def _summaries(session: Session, studies: Sequence[_StudyRow], which: ColumnElement[bool]) -> list[TimelineStudy]:
    """What the timeline shows of each study, from two statements whatever the number of studies: the studies
    (given), and their series (``which``: the condition on :class:`Study` that chose them) each with its first
    instance (the cover). No list of keys is sent: the series are found by the studies' own condition."""
    if not studies:
        return []
    first = (select(func.min(Instance.pk)).where(Instance.series_pk == Series.pk).correlate(Series)
             .scalar_subquery())
    series_rows: dict[int, list[tuple[str, str, str, str, str | None, str | None]]] = {}
    for study_pk, series_uid, modality, body_part, department, sop_uid, sop_class in session.execute(
            select(Series.study_pk, Series.SeriesInstanceUID, Series.Modality, Series.BodyPartExamined,
                   Series.InstitutionalDepartmentName, Instance.SOPInstanceUID, Instance.SOPClassUID)
            .join(Study, Series.study_pk == Study.pk).outerjoin(Instance, Instance.pk == first)
            .where(which).order_by(Series.SeriesNumber, Series.pk)):
        series_rows.setdefault(study_pk, []).append((series_uid, modality or "", body_part or "", department or "",
                                                    sop_uid, sop_class))
    summaries = []
    for study in studies:
        rows = series_rows.get(study.pk, [])
        modalities = [value for value in (study.ModalitiesInStudy or "").split("\\") if value] or \
            sorted({row[1] for row in rows if row[1]})
        kinds = []
        cover: Cover | None = None
        for shown_series, _modality, _part, _department, shown_sop, shown_class in rows:
            if shown_sop is None or shown_class is None:
                continue  # a series without instances
            kind = kind_of(shown_class)
            if kind not in kinds:
                kinds.append(kind)
            # the cover: an image or photo first (they have thumbnails), else whatever comes first
            if cover is None or (cover.kind not in ("image", "photo") and kind in ("image", "photo")):
                cover = Cover(shown_series, shown_sop, kind)
        departments = [row[3] for row in rows if row[3]]
        summaries.append(TimelineStudy(
            study.StudyInstanceUID, study.StudyDate or "", study.StudyTime or "", study.StudyDescription or "",
            study.AccessionNumber or "", modalities, _specialty(study.department, departments, modalities),
            study.facility or study.InstitutionName or "", sorted({row[2] for row in rows if row[2]}),
            study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances, kinds, cover))
    return summaries


def _specialty(department: str, departments: Iterable[str], modalities: list[str]) -> str:
    for label in (department, *departments):
        if label and label.strip():
            return label.strip().lower()
    for modality in modalities:
        if modality in SPECIALTY_OF_MODALITY and SPECIALTY_OF_MODALITY[modality] not in ("reports", "documents"):
            return SPECIALTY_OF_MODALITY[modality]
    for modality in modalities:
        if modality in SPECIALTY_OF_MODALITY:
            return SPECIALTY_OF_MODALITY[modality]
    return "other"

