"""Retrieve service: which stored instances a C-MOVE / C-GET, WADO or an export asks for (always within the
caller's scope), and their bytes on the way out: :meth:`RetrieveService.egress` is the one path every door sends
an instance through (as stored, transcoded, or with its header coerced: :mod:`mosaic.services.egress`)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select

from mosaic.core.errors import QueryError
from mosaic.index.database import Database
from mosaic.index.query import LEVELS, Scope
from mosaic.index.schema import Instance, Patient, Series, Study
from mosaic.services.egress import EgressContext, HeaderCoercion, change_version, no_coercion
from mosaic.services.rendition.syntaxes import EXPLICIT_LE
from mosaic.services.rendition.transcode import TranscodeError, as_explicit_little_endian
from mosaic.storage.base import BlobStore
from mosaic.storage.ranged import RangeReader


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
    def __init__(self, database: Database, blobs: BlobStore, *, coercion: HeaderCoercion = no_coercion) -> None:
        self.database = database
        self.blobs = blobs
        self.coercion = coercion

    def instances_for_identifier(self, identifier: Dataset, *, scope: Scope) -> list[StoredInstance]:
        """Instances named by a C-MOVE/C-GET identifier's unique keys (PS3.4 C.4.2.2.1), only those of studies
        in ``scope``."""
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in LEVELS:
            raise QueryError(f"Query/Retrieve Level {level!r} is not one of {', '.join(LEVELS)}")
        statement = (select(Instance, Study.StudyInstanceUID, Patient.PatientID, Patient.IssuerOfPatientID)
                     .join(Series, Instance.series_pk == Series.pk)
                     .join(Study, Series.study_pk == Study.pk).join(Patient, Study.patient_pk == Patient.pk)
                     .where(scope.study_condition()))
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

    def instances_by_uid(self, sop_instance_uids: list[str], *, scope: Scope) -> dict[str, StoredInstance]:
        """The stored instances among ``sop_instance_uids``, only those of studies in ``scope``."""
        statement = select(Instance).where(Instance.SOPInstanceUID.in_(sop_instance_uids))
        if not scope.unrestricted:
            statement = (statement.join(Series, Instance.series_pk == Series.pk)
                         .join(Study, Series.study_pk == Study.pk).where(scope.study_condition()))
        with self.database.session() as session:
            rows = session.scalars(statement).all()
            return {row.SOPInstanceUID: StoredInstance(row.SOPInstanceUID, row.SOPClassUID, row.TransferSyntaxUID,
                                                       row.blob_key, row.size, row.sha256, row.dataset_offset)
                    for row in rows}

    # --- the bytes on the way out ---------------------------------------------------------------------

    def sends_as_stored(self, instance: StoredInstance, context: EgressContext) -> bool:
        """Does :meth:`egress` (without a transfer syntax) send ``instance`` byte for byte as stored?"""
        return self.coercion(instance, context) is None

    def egress_version(self, instance: StoredInstance, context: EgressContext) -> str | None:
        """None when :meth:`egress` sends ``instance`` as stored; else what names the change it makes (for the
        answer's ETag: it changes when the change does, e.g. after the next HL7 update of the patient)."""
        change = self.coercion(instance, context)
        return None if change is None else change_version(change)

    @contextmanager
    def egress(self, instance: StoredInstance, context: EgressContext, *,
               transfer_syntax: str | None = None) -> Iterator[Path]:
        """The Part 10 file that goes out for ``instance`` in ``context``: the stored file itself (or, from object
        storage, a temporary copy) when nothing changes; otherwise a temporary file with the header coerced
        (:class:`~mosaic.services.egress.HeaderCoercion`) and/or transcoded to ``transfer_syntax`` (Explicit VR
        Little Endian only: raises :class:`~mosaic.services.rendition.transcode.TranscodeError`). Temporary files
        are removed when the block ends; the stored file is never written."""
        change = self.coercion(instance, context)
        transcode = transfer_syntax not in (None, instance.TransferSyntaxUID)
        if transcode and transfer_syntax != EXPLICIT_LE:
            raise TranscodeError(f"Mosaic transcodes only to Explicit VR Little Endian, not {transfer_syntax}")
        if change is None and not transcode:
            with self._stored_file(instance) as path:
                yield path
            return
        handle = tempfile.NamedTemporaryFile(prefix="mosaic-egress-", suffix=".dcm", delete=False)  # noqa: SIM115
        path = Path(handle.name)
        try:
            with handle, self.open(instance) as source:
                try:
                    dataset = pydicom.dcmread(source, force=True)
                    if change is not None:
                        change(dataset)
                    if transcode:
                        as_explicit_little_endian(dataset)
                    pydicom.dcmwrite(handle, dataset, enforce_file_format=True)
                except Exception as exc:  # decoders and the writer raise many kinds on data they cannot handle
                    raise TranscodeError(f"{type(exc).__name__}: {exc}") from exc
            yield path
        finally:
            path.unlink(missing_ok=True)

    @contextmanager
    def _stored_file(self, instance: StoredInstance) -> Iterator[Path]:
        local = self.blobs.local_files()
        if local is not None:
            yield local.local_path(instance.blob_key)
            return
        with tempfile.NamedTemporaryFile(suffix=".dcm") as temporary, self.blobs.open(instance.blob_key) as src:
            shutil.copyfileobj(src, temporary)
            temporary.flush()
            yield Path(temporary.name)

    def open(self, instance: StoredInstance) -> BinaryIO:
        """A seekable stream of the stored file, for readers of parts of it (frames, bulk data, headers): the file
        itself on the filesystem backend, ranged reads otherwise."""
        local = self.blobs.local_files()
        if local is not None:
            return open(local.local_path(instance.blob_key), "rb")
        return RangeReader(self.blobs, instance.blob_key, instance.size)  # type: ignore[return-value]

    def read_range(self, instance: StoredInstance, start: int, length: int) -> bytes:
        """``length`` bytes of the stored file from offset ``start`` (one value, never the whole object)."""
        return self.blobs.read_range(instance.blob_key, start, length)

    def stored_path(self, instance: StoredInstance) -> Path | None:
        """The stored file itself when the blob store keeps files on this machine (a value can be streamed from
        it by offset), else None."""
        local = self.blobs.local_files()
        return local.local_path(instance.blob_key) if local is not None else None

    # --- WADO (DICOMweb) ----------------------------------------------------------------------------

    @staticmethod
    def _stored(row: Instance) -> StoredInstance:
        return StoredInstance(row.SOPInstanceUID, row.SOPClassUID, row.TransferSyntaxUID, row.blob_key, row.size,
                              row.sha256, row.dataset_offset)

    def instances_in(self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None, *,
                     scope: Scope) -> list[StoredInstance]:
        """The stored instances of a study, of one series of it, or one instance of that series (WADO), in
        series and instance order: the UIDs must name a real hierarchy, of a study in ``scope``."""
        statement = (select(Instance).join(Series, Instance.series_pk == Series.pk)
                     .join(Study, Series.study_pk == Study.pk)
                     .where(Study.StudyInstanceUID == study_uid, scope.study_condition()))
        if series_uid is not None:
            statement = statement.where(Series.SeriesInstanceUID == series_uid)
        if sop_instance_uid is not None:
            statement = statement.where(Instance.SOPInstanceUID == sop_instance_uid)
        with self.database.session() as session:
            rows = session.scalars(statement.order_by(Series.pk, Instance.InstanceNumber, Instance.pk)).all()
            return [self._stored(row) for row in rows]

    def missing_uid(self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None, *,
                    scope: Scope) -> str:
        """Why :meth:`instances_in` found nothing, naming the UID that is not there (for a 404); a study outside
        ``scope`` is named exactly like one that is not in the archive."""
        with self.database.session() as session:
            study = session.scalar(select(Study.pk).where(Study.StudyInstanceUID == study_uid,
                                                          scope.study_condition()))
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

    def representative(self, study_uid: str, series_uid: str | None = None, *,
                       scope: Scope) -> StoredInstance | None:
        """The image that stands for a study or series (thumbnails): the middle image of its first series
        with images (by Series Number), in instance order; None when it has no images or is outside ``scope``."""
        statement = (select(Series.pk).join(Study, Series.study_pk == Study.pk)
                     .join(Instance, Instance.series_pk == Series.pk)
                     .where(Study.StudyInstanceUID == study_uid, Instance.Rows.is_not(None),
                            scope.study_condition()))
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
