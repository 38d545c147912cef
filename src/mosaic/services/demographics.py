"""Current demographics on egress (decision 2 of ../shared/ARCHITECTURE.md: originals are immutable,
corrections are applied on the way out).

A patient whose identity or demographics the hospital's systems changed (HL7 ADT: an update, a merge, a new
identifier; anything recorded in ``patient_history``) is sent with its current Patient module: PatientID,
IssuerOfPatientID, PatientName, birth date and time, sex, ethnic group as the index holds them now. Pixel data
and every other attribute go out as stored; a patient no message ever changed goes out byte for byte.
"""

from __future__ import annotations

import json

from pydicom.dataset import Dataset
from sqlalchemy import func, select

from mosaic.index.database import Database
from mosaic.index.schema import Instance, Patient, PatientHistory, Series, Study
from mosaic.services.egress import EgressContext, HeaderChange
from mosaic.services.retrieve import StoredInstance

_MODULE = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientSex",
           "EthnicGroup")
_JSON = {"PatientID": ("00100020", "LO"), "IssuerOfPatientID": ("00100021", "LO"), "PatientName": ("00100010", "PN"),
         "PatientBirthDate": ("00100030", "DA"), "PatientBirthTime": ("00100032", "TM"),
         "PatientSex": ("00100040", "CS"), "EthnicGroup": ("00102160", "SH")}


def patched_metadata(metadata_json: str, current: dict[str, str]) -> str:
    """Stored DICOM JSON of one instance with its Patient module replaced by ``current`` (WADO-RS metadata)."""
    elements = json.loads(metadata_json)
    for keyword, value in current.items():
        tag, vr = _JSON[keyword]
        if not value:
            elements[tag] = {"vr": vr}
        elif vr == "PN":
            groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False))
            elements[tag] = {"vr": vr, "Value": [{key: text for key, text in groups.items() if text}]}
        else:
            elements[tag] = {"vr": vr, "Value": [value]}
    return json.dumps(elements, ensure_ascii=False, separators=(",", ":"))


class CurrentDemographics:
    """A :class:`~mosaic.services.egress.HeaderCoercion`: the current Patient module for patients with a history."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def of_study(self, study_instance_uid: str) -> tuple[dict[str, str], str] | None:
        """The current Patient module of a study's patient, if its patient has a history, and a version that
        changes with each recorded change (for ETags); None when the study goes out as stored."""
        statement = (
            select(*(getattr(Patient, keyword) for keyword in _MODULE), func.max(PatientHistory.pk))
            .select_from(Study).join(Patient, Study.patient_pk == Patient.pk)
            .join(PatientHistory, PatientHistory.patient_pk == Patient.pk)
            .where(Study.StudyInstanceUID == study_instance_uid).group_by(Patient.pk)
        )
        with self.database.session() as session:
            row = session.execute(statement).first()
        if row is None:
            return None
        return dict(zip(_MODULE, row[:-1], strict=True)), str(row[-1])

    def __call__(self, instance: StoredInstance, context: EgressContext) -> HeaderChange | None:
        statement = (
            select(*(getattr(Patient, keyword) for keyword in _MODULE), func.max(PatientHistory.pk))
            .select_from(Instance).join(Series, Instance.series_pk == Series.pk)
            .join(Study, Series.study_pk == Study.pk).join(Patient, Study.patient_pk == Patient.pk)
            .join(PatientHistory, PatientHistory.patient_pk == Patient.pk)
            .where(Instance.SOPInstanceUID == instance.SOPInstanceUID).group_by(Patient.pk)
        )
        with self.database.session() as session:
            row = session.execute(statement).first()
        if row is None:
            return None
        return _CurrentModule(dict(zip(_MODULE, row[:-1], strict=True)), str(row[-1]))


class _CurrentModule:
    """The change that writes a patient's current Patient module; ``version``: the patient history's latest row."""

    def __init__(self, current: dict[str, str], version: str) -> None:
        self.current = current
        self.version = version

    def __call__(self, dataset: Dataset) -> None:
        current = self.current
        for keyword, value in current.items():
            if value:
                setattr(dataset, keyword, value)
            elif keyword in dataset:
                if keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
                    setattr(dataset, keyword, None)  # type 2: present, empty
                else:
                    delattr(dataset, keyword)
        if any(not str(value).isascii() for value in current.values() if value):
            dataset.decode()  # every text value as text first: then all of it is written in the new set
            dataset.SpecificCharacterSet = "ISO_IR 192"  # a name from HL7 may not fit the stored character set
