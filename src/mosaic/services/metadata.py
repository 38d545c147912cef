"""Instance metadata straight from the index (WADO-RS metadata): never reads a blob."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select

from mosaic.index.database import Database
from mosaic.index.query import Scope
from mosaic.index.schema import Instance, Series, Study

_instance: Table = Instance.__table__  # type: ignore[assignment]
_series: Table = Series.__table__  # type: ignore[assignment]
_study: Table = Study.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class InstanceMetadata:
    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPInstanceUID: str
    version: int
    metadata_json: str


class MetadataService:
    def __init__(self, database: Database) -> None:
        self.database = database

    def versions(self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None, *,
                 scope: Scope) -> list[tuple[str, int]]:
        """(SOPInstanceUID, version) of each instance in ``scope``: enough to tell whether cached metadata is
        current."""
        statement = self._select(study_uid, series_uid, sop_instance_uid, scope,
                                 (_instance.c.SOPInstanceUID, _instance.c.version))
        with self.database.engine.connect() as connection:
            return [(row[0], row[1]) for row in connection.execute(statement)]

    def metadata(self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None, *,
                 scope: Scope) -> list[InstanceMetadata]:
        """Every instance's stored DICOM JSON for a study, series or one instance in ``scope``, in a stable
        order."""
        statement = self._select(study_uid, series_uid, sop_instance_uid, scope, (
            _study.c.StudyInstanceUID, _series.c.SeriesInstanceUID, _instance.c.SOPInstanceUID,
            _instance.c.version, _instance.c.metadata_json))
        with self.database.engine.connect() as connection:
            return [InstanceMetadata(*row) for row in connection.execute(statement)]

    @staticmethod
    def _select(study_uid: str, series_uid: str | None, sop_instance_uid: str | None, scope: Scope,
                columns: tuple[Any, ...]) -> Any:
        statement = (
            select(*columns)
            .select_from(_instance.join(_series, _instance.c.series_pk == _series.c.pk)
                         .join(_study, _series.c.study_pk == _study.c.pk))
            .where(_study.c.StudyInstanceUID == study_uid, scope.study_condition())
        )
        if series_uid is not None:
            statement = statement.where(_series.c.SeriesInstanceUID == series_uid)
        if sop_instance_uid is not None:
            statement = statement.where(_instance.c.SOPInstanceUID == sop_instance_uid)
        return statement.order_by(_series.c.pk, _instance.c.InstanceNumber, _instance.c.pk)
