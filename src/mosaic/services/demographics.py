"""Current demographics on egress (decision 2 of ../shared/ARCHITECTURE.md: originals are immutable,
corrections are applied on the way out).

A patient whose identity or demographics the hospital's systems changed (HL7 ADT: an update, a merge, a new
identifier; anything recorded in ``patient_history``) is sent with its current Patient module: PatientID,
IssuerOfPatientID, PatientName, birth date and time, sex, ethnic group as the index holds them now. Pixel data
and every other attribute go out as stored; a patient no message ever changed goes out byte for byte.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from sqlalchemy import exists, select

from mosaic.index.database import Database
from mosaic.index.schema import Instance, Patient, PatientHistory, Series, Study
from mosaic.services.egress import EgressContext, HeaderChange
from mosaic.services.retrieve import StoredInstance

_MODULE = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientSex",
           "EthnicGroup")


class CurrentDemographics:
    """A :class:`~mosaic.services.egress.HeaderCoercion`: the current Patient module for patients with a history."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def __call__(self, instance: StoredInstance, context: EgressContext) -> HeaderChange | None:
        statement = (
            select(*(getattr(Patient, keyword) for keyword in _MODULE))
            .select_from(Instance).join(Series, Instance.series_pk == Series.pk)
            .join(Study, Series.study_pk == Study.pk).join(Patient, Study.patient_pk == Patient.pk)
            .where(Instance.SOPInstanceUID == instance.SOPInstanceUID,
                   exists().where(PatientHistory.patient_pk == Patient.pk))
        )
        with self.database.session() as session:
            row = session.execute(statement).first()
        if row is None:
            return None
        current = dict(zip(_MODULE, row, strict=True))

        def change(dataset: Dataset) -> None:
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
        return change
