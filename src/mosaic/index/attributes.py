"""Which DICOM attributes become which indexed columns, and how values are normalised."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from mosaic.core.names import fold_name
from mosaic.index.schema import Instance, Patient, Series, Study

PATIENT_KEYS = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientBirthTime",
                "PatientSex", "EthnicGroup")
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
              "ReferringPhysicianName", "StudyDescription", "PatientAge", "PatientSize", "PatientWeight",
              "NameOfPhysiciansReadingStudy", "InstitutionName")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDate", "SeriesTime",
               "SeriesDescription", "BodyPartExamined", "Laterality", "StationName",
               "InstitutionalDepartmentName", "PerformedProcedureStepStartDate",
               "PerformedProcedureStepStartTime", "RequestedProcedureID", "ScheduledProcedureStepID")
INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ContentDate", "ContentTime",
                 "AcquisitionNumber", "NumberOfFrames", "Rows", "Columns", "BitsAllocated")

DEMOGRAPHIC_KEYS = ("PatientName", "PatientBirthDate", "PatientBirthTime", "PatientSex", "EthnicGroup")
"""Patient-level keys each study also keeps as its own objects gave them (``Study.PatientName`` …): what a caller
whose scope is restricted sees and matches of a patient (see :class:`mosaic.index.query.Scope`)."""
PERSON_NAME_KEYS = frozenset({"PatientName", "ReferringPhysicianName", "NameOfPhysiciansReadingStudy"})
INTEGER_KEYS = frozenset({"SeriesNumber", "InstanceNumber", "AcquisitionNumber", "NumberOfFrames", "BitsAllocated",
                          "Rows", "Columns"})
_SEQUENCE_SOURCES = {
    "RequestedProcedureID": "RequestAttributesSequence",
    "ScheduledProcedureStepID": "RequestAttributesSequence",
}

MODEL_OF_LEVEL: dict[str, type[Any]] = {
    "PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance,
}
KEYS_OF_LEVEL = {"PATIENT": PATIENT_KEYS, "STUDY": STUDY_KEYS, "SERIES": SERIES_KEYS, "IMAGE": INSTANCE_KEYS}
COMPUTED_KEYS = {
    "PATIENT": ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                "NumberOfPatientRelatedInstances"),
    "STUDY": ("ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"),
    "SERIES": ("NumberOfSeriesRelatedInstances",),
    "IMAGE": (),
}


def text_value(dataset: Dataset, keyword: str) -> str:
    """A value as the index stores it: decoded text, multi-values joined by backslash."""
    source = _SEQUENCE_SOURCES.get(keyword)
    if source:
        sequence = dataset.get(source)
        if not sequence:
            return ""
        dataset = sequence[0]
    try:
        value = dataset.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, PersonName):
        return str(value).strip()
    if isinstance(value, list | tuple) or (hasattr(value, "__iter__") and not isinstance(value, str | bytes)):
        return "\\".join(str(item) for item in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\x00 ")
    return str(value).strip("\x00 ")


def int_value(dataset: Dataset, keyword: str) -> int | None:
    text = text_value(dataset, keyword).split("\\")[0]
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def column_values(dataset: Dataset, keys: tuple[str, ...], max_lengths: dict[str, int]) -> dict[str, Any]:
    """Column values for one level's keys, truncated to their column widths."""
    values: dict[str, Any] = {}
    for keyword in keys:
        if keyword in INTEGER_KEYS:
            values[keyword] = int_value(dataset, keyword)
            continue
        text = text_value(dataset, keyword)[: max_lengths.get(keyword, 64)]
        values[keyword] = text
        if keyword in PERSON_NAME_KEYS and keyword != "NameOfPhysiciansReadingStudy":
            values[f"{keyword}Upper"] = text.upper()
            values[f"{keyword}Fuzzy"] = fold_name(text)[: max_lengths.get(f"{keyword}Fuzzy", 320)]
    return values


def text_columns(values: dict[str, str], keys: tuple[str, ...], max_lengths: dict[str, int]) -> dict[str, Any]:
    """:func:`column_values` of text keys given as plain strings (as a message states them: no dataset to build)."""
    columns: dict[str, Any] = {}
    for keyword in keys:
        text = (values.get(keyword) or "").strip("\x00 ")[: max_lengths.get(keyword, 64)]
        columns[keyword] = text
        if keyword in PERSON_NAME_KEYS and keyword != "NameOfPhysiciansReadingStudy":
            columns[f"{keyword}Upper"] = text.upper()
            columns[f"{keyword}Fuzzy"] = fold_name(text)[: max_lengths.get(f"{keyword}Fuzzy", 320)]
    return columns


def column_widths(model: type[Any]) -> dict[str, int]:
    widths: dict[str, int] = {}
    for column in model.__table__.columns:
        length = getattr(column.type, "length", None)
        if length:
            widths[column.name] = length
    return widths
