"""Retrieve service: which stored instances a C-MOVE / C-GET (later WADO) asks for, and their bytes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select

from mosaic.core.errors import QueryError
from mosaic.index.database import Database
from mosaic.index.query import LEVELS, Scope
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
    StudyInstanceUID: str = ""
    PatientID: str = ""
    IssuerOfPatientID: str = ""


_UID_LISTS = (("PatientID", Patient.PatientID), ("StudyInstanceUID", Study.StudyInstanceUID),
              ("SeriesInstanceUID", Series.SeriesInstanceUID), ("SOPInstanceUID", Instance.SOPInstanceUID))


class RetrieveService:
    def __init__(self, database: Database, blobs: BlobStore) -> None:
        self.database = database
        self.blobs = blobs

    def instances_for_identifier(self, identifier: Dataset, *, scope: Scope | None = None) -> list[StoredInstance]:
        """Instances named by a C-MOVE/C-GET identifier's unique keys (PS3.4 C.4.2.2.1), only those of studies
        in ``scope``."""
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in LEVELS:
            raise QueryError(f"Query/Retrieve Level {level!r} is not one of {', '.join(LEVELS)}")
        statement = (select(Instance, Study.StudyInstanceUID, Patient.PatientID, Patient.IssuerOfPatientID)
                     .join(Series, Instance.series_pk == Series.pk)
                     .join(Study, Series.study_pk == Study.pk).join(Patient, Study.patient_pk == Patient.pk)
                     .where((scope or Scope()).study_condition()))
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
            rows = session.execute(statement.order_by(Series.pk, Instance.InstanceNumber, Instance.pk)).all()
            return [StoredInstance(row.SOPInstanceUID, row.SOPClassUID, row.TransferSyntaxUID, row.blob_key,
                                   row.size, row.sha256, row.dataset_offset, study, patient_id, issuer)
                    for row, study, patient_id, issuer in rows]

    def instances_by_uid(self, sop_instance_uids: list[str], *, scope: Scope | None = None
                         ) -> dict[str, StoredInstance]:
        """The stored instances among ``sop_instance_uids`` (only those of studies in ``scope``, when given)."""
        statement = select(Instance).where(Instance.SOPInstanceUID.in_(sop_instance_uids))
        if scope is not None and not scope.unrestricted:
            statement = (statement.join(Series, Instance.series_pk == Series.pk)
                         .join(Study, Series.study_pk == Study.pk).where(scope.study_condition()))
        with self.database.session() as session:
            rows = session.scalars(statement).all()
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

    # --- WADO (DICOMweb) ----------------------------------------------------------------------------

    @staticmethod
    def _stored(row: Instance) -> StoredInstance:
        return StoredInstance(row.SOPInstanceUID, row.SOPClassUID, row.TransferSyntaxUID, row.blob_key, row.size,
                              row.sha256, row.dataset_offset)

    def instances_in(self, study_uid: str, series_uid: str | None = None,
                     sop_instance_uid: str | None = None) -> list[StoredInstance]:
        """The stored instances of a study, of one series of it, or one instance of that series (WADO), in
        series and instance order: the UIDs must name a real hierarchy."""
        statement = (select(Instance).join(Series, Instance.series_pk == Series.pk)
                     .join(Study, Series.study_pk == Study.pk).where(Study.StudyInstanceUID == study_uid))
        if series_uid is not None:
            statement = statement.where(Series.SeriesInstanceUID == series_uid)
        if sop_instance_uid is not None:
            statement = statement.where(Instance.SOPInstanceUID == sop_instance_uid)
        with self.database.session() as session:
            rows = session.scalars(statement.order_by(Series.pk, Instance.InstanceNumber, Instance.pk)).all()
            return [self._stored(row) for row in rows]

    def missing_uid(self, study_uid: str, series_uid: str | None = None,
                    sop_instance_uid: str | None = None) -> str:
        """Why :meth:`instances_in` found nothing, naming the UID that is not there (for a 404)."""
        with self.database.session() as session:
            study = session.scalar(select(Study.pk).where(Study.StudyInstanceUID == study_uid))
            if study is None:
                return f"study {study_uid} is not in the archive"
            if series_uid is not None:
                series = session.scalar(select(Series.pk).where(Series.SeriesInstanceUID == series_uid,
                                                                Series.study_pk == study))
                if series is None:
                    return f"series {series_uid} is not in study {study_uid}"
                if sop_instance_uid is not None:
                    return f"instance {sop_instance_uid} is not in series {series_uid} of study {study_uid}"
                return f"series {series_uid} has no instances"
            return f"study {study_uid} has no instances"

    def representative(self, study_uid: str, series_uid: str | None = None) -> StoredInstance | None:
        """The image that stands for a study or series (thumbnails): the middle image of its first series
        with images (by Series Number), in instance order; None when it has no images."""
        statement = (select(Series.pk).join(Study, Series.study_pk == Study.pk)
                     .join(Instance, Instance.series_pk == Series.pk)
                     .where(Study.StudyInstanceUID == study_uid, Instance.Rows.is_not(None)))
        if series_uid is not None:
            statement = statement.where(Series.SeriesInstanceUID == series_uid)
        statement = statement.order_by(Series.SeriesNumber.is_(None), Series.SeriesNumber, Series.pk).limit(1)
        with self.database.session() as session:
            series_pk = session.scalar(statement)
            if series_pk is None:
                return None
            rows = session.scalars(select(Instance).where(Instance.series_pk == series_pk, Instance.Rows.is_not(None))
                                   .order_by(Instance.InstanceNumber, Instance.pk)).all()
            return self._stored(rows[len(rows) // 2]) if rows else None
