"""Retrieve service: which stored instances a C-MOVE / C-GET (later WADO) asks for, and their bytes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select

from mosaic.core.errors import QueryError
from mosaic.index.database import Database
from mosaic.index.query import LEVELS
from mosaic.index.schema import Instance, Patient, Series, Study
from mosaic.storage.base import BlobStore


@dataclass(frozen=True)
class StoredInstance:
    SOPInstanceUID: str
    SOPClassUID: str
    TransferSyntaxUID: str
    blob_key: str
    size: int
    sha256: str
    dataset_offset: int


_UID_LISTS = (("PatientID", Patient.PatientID), ("StudyInstanceUID", Study.StudyInstanceUID),
              ("SeriesInstanceUID", Series.SeriesInstanceUID), ("SOPInstanceUID", Instance.SOPInstanceUID))


class RetrieveService:
    def __init__(self, database: Database, blobs: BlobStore) -> None:
        self.database = database
        self.blobs = blobs

    def instances_for_identifier(self, identifier: Dataset) -> list[StoredInstance]:
        """Instances named by a C-MOVE/C-GET identifier's unique keys (PS3.4 C.4.2.2.1)."""
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in LEVELS:
            raise QueryError(f"Query/Retrieve Level {level!r} is not one of {', '.join(LEVELS)}")
        statement = (select(Instance).join(Series, Instance.series_pk == Series.pk)
                     .join(Study, Series.study_pk == Study.pk).join(Patient, Study.patient_pk == Patient.pk))
        constrained = False
        for keyword, column in _UID_LISTS:
            value = identifier.get(keyword)
            if value in (None, ""):
                continue
            values = [str(item).strip() for item in (value if isinstance(value, list | tuple)
                                                     or type(value).__name__ == "MultiValue" else [value])]
            values = [item for item in values if item]
            if values:
                statement = statement.where(column.in_(values))
                constrained = True
        if not constrained:
            raise QueryError(f"a {level} level retrieve needs the unique key of that level")
        issuer = str(identifier.get("IssuerOfPatientID", "") or "").strip()
        if issuer and identifier.get("PatientID"):
            # the same Patient ID from two issuers is two patients
            statement = statement.where(Patient.IssuerOfPatientID == issuer)
        with self.database.session() as session:
            rows = session.scalars(statement.order_by(Series.pk, Instance.InstanceNumber, Instance.pk)).all()
            return [StoredInstance(row.SOPInstanceUID, row.SOPClassUID, row.TransferSyntaxUID, row.blob_key,
                                   row.size, row.sha256, row.dataset_offset) for row in rows]

    def instances_by_uid(self, sop_instance_uids: list[str]) -> dict[str, StoredInstance]:
        with self.database.session() as session:
            rows = session.scalars(select(Instance).where(Instance.SOPInstanceUID.in_(sop_instance_uids))).all()
            return {row.SOPInstanceUID: StoredInstance(row.SOPInstanceUID, row.SOPClassUID, row.TransferSyntaxUID,
                                                       row.blob_key, row.size, row.sha256, row.dataset_offset)
                    for row in rows}

    @contextmanager
    def local_file(self, instance: StoredInstance) -> Iterator[Path]:
        """A local path to the stored Part 10 file (the blob itself, or a temporary copy)."""
        local = getattr(self.blobs, "local_path", None)
        if local is not None:
            yield local(instance.blob_key)
            return
        import shutil
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".dcm") as temporary, self.blobs.open(instance.blob_key) as src:
            shutil.copyfileobj(src, temporary)
            temporary.flush()
            yield Path(temporary.name)

    def read_dataset(self, instance: StoredInstance) -> Dataset:
        """The stored dataset, read as-is (so it is re-encoded byte-identical on the wire)."""
        with self.blobs.open(instance.blob_key) as stream:
            return pydicom.dcmread(stream, force=True)
