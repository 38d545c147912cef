"""The one deletion path: a study, series or instance leaves the index, then its bytes leave the blob store.

In ONE index transaction: the legal-hold check (:func:`~mosaic.governance.holds.check_not_held`), the instance
rows and their history (``InstanceVersion``), emptied series / study / patient rows, the parents' counters
(Number of … Related …, ModalitiesInStudy, SOPClassesInStudy) and the outbox events. Only after the commit are
the blobs (current and historical versions) deleted; a blob that cannot be deleted is logged and left as an
orphan for ``mosaic verify`` — never a row without bytes. Doors audit the deletion (the caller knows who asked).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from mosaic.core.errors import NotFound
from mosaic.governance.holds import check_not_held
from mosaic.index.database import Database
from mosaic.index.schema import Event, Instance, InstanceVersion, Patient, Report, Series, Study
from mosaic.storage.base import BlobStore

log = logging.getLogger("mosaic.delete")

# outbox event types written by deletions (beside mosaic.core.events.EventType's)
PATIENT_DELETED = "PatientDeleted"
STUDY_DELETED = "StudyDeleted"
SERIES_DELETED = "SeriesDeleted"
INSTANCE_DELETED = "InstanceDeleted"

_NO_SYNC = {"synchronize_session": False}


@dataclass
class DeletionResult:
    """What one deletion removed, and how freeing its blobs went."""

    level: str
    """STUDY, SERIES or IMAGE: what was asked for."""
    uid: str
    PatientID: str
    IssuerOfPatientID: str
    StudyInstanceUID: str
    series: int = 0
    instances: int = 0
    versions: int = 0
    """Historical versions (InstanceVersion rows) removed with the instances."""
    study_deleted: bool = False
    patient_deleted: bool = False
    blob_keys: list[str] = field(default_factory=list)
    blobs_failed: list[str] = field(default_factory=list)
    """Keys whose bytes could not be deleted: orphans for ``mosaic verify``."""

    @property
    def blobs_deleted(self) -> int:
        return len(self.blob_keys) - len(self.blobs_failed)

    def as_json(self) -> dict[str, Any]:
        return {"level": self.level, "uid": self.uid, "PatientID": self.PatientID,
                "IssuerOfPatientID": self.IssuerOfPatientID, "StudyInstanceUID": self.StudyInstanceUID,
                "series": self.series, "instances": self.instances, "versions": self.versions,
                "study_deleted": self.study_deleted, "patient_deleted": self.patient_deleted,
                "blobs_deleted": self.blobs_deleted, "blobs_failed": self.blobs_failed}


class DeleteService:
    """Deletes studies, series and instances: the only code that removes them from the index and storage."""

    def __init__(self, database: Database, blobs: BlobStore) -> None:
        self.database = database
        self.blobs = blobs

    def delete_study(self, study_instance_uid: str, *, reason: str, actor: str = "") -> DeletionResult:
        """Delete a study with everything in it (and its patient if no study is left).

        Raises :class:`~mosaic.core.errors.NotFound`, or :class:`~mosaic.governance.holds.UnderLegalHold`
        naming the hold and its reason.
        """
        return self._delete("STUDY", study_instance_uid, reason, actor)

    def delete_series(self, series_instance_uid: str, *, reason: str, actor: str = "") -> DeletionResult:
        """Delete a series (its study and patient too when they are left empty)."""
        return self._delete("SERIES", series_instance_uid, reason, actor)

    def delete_instance(self, sop_instance_uid: str, *, reason: str, actor: str = "") -> DeletionResult:
        """Delete an instance with its history (its series, study and patient too when left empty)."""
        return self._delete("IMAGE", sop_instance_uid, reason, actor)

    def _delete(self, level: str, uid: str, reason: str, actor: str) -> DeletionResult:
        # an instance stored into the study meanwhile (foreign key), a deadlock: the whole transaction again
        result = self.database.write(lambda session: _Deletion(session, reason, actor).run(level, uid))
        self._free(result)
        log.info("deleted %s %s (%d series, %d instances, %d older versions; patient %s%s): %s",
                 level.lower(), uid, result.series, result.instances, result.versions, result.PatientID,
                 " removed" if result.patient_deleted else "", reason)
        return result

    def _free(self, result: DeletionResult) -> None:
        """Delete the bytes once no row names them; a failure leaves an orphan blob, reported by verify."""
        for key in result.blob_keys:
            try:
                self.blobs.delete(key)
            except Exception as exc:
                result.blobs_failed.append(key)
                log.error("blob %s of deleted %s %s could not be deleted (%s); `mosaic verify` reports it as an "
                          "orphan", key, result.level.lower(), result.uid, exc)


class _Deletion:
    """The index side of one deletion, inside one transaction."""

    def __init__(self, session: Session, reason: str, actor: str) -> None:
        self.session = session
        self.reason = reason
        self.actor = actor
        self.now = datetime.now(UTC)

    def run(self, level: str, uid: str) -> DeletionResult:
        study_pk, series_pk, instance_pk = self._locate(level, uid)
        study = self.session.scalars(select(Study).where(Study.pk == study_pk).with_for_update()).one()
        patient = self.session.scalars(select(Patient).where(Patient.pk == study.patient_pk)).one()
        check_not_held(self.session, study.StudyInstanceUID, patient.PatientID, patient.IssuerOfPatientID)
        result = DeletionResult(level, uid, patient.PatientID, patient.IssuerOfPatientID, study.StudyInstanceUID)
        if level == "IMAGE":
            assert instance_pk is not None and series_pk is not None
            series_uid = self.session.scalar(select(Series.SeriesInstanceUID).where(Series.pk == series_pk)) or ""
            self._instances(Instance.pk == instance_pk, result)
            self._event(INSTANCE_DELETED, patient, study, series_uid, uid, {"instances": 1})
            self._counters(study, patient, series_pk, instances=1, series=0)
            if self._count(Instance.pk, Instance.series_pk == series_pk):
                self._refresh_study(study)
                return result
            level = "SERIES"  # the series is empty now: it goes too
        if level == "SERIES":
            assert series_pk is not None
            series_uid = self.session.scalar(select(Series.SeriesInstanceUID).where(Series.pk == series_pk)) or ""
            before = result.instances
            self._instances(Instance.series_pk == series_pk, result)
            self.session.execute(delete(Series).where(Series.pk == series_pk), execution_options=_NO_SYNC)
            result.series += 1
            self._event(SERIES_DELETED, patient, study, series_uid, "", {"instances": result.instances})
            self._counters(study, patient, None, instances=result.instances - before, series=1)
            if self._count(Series.pk, Series.study_pk == study.pk):
                self._refresh_study(study)
                return result
        if level in ("STUDY", "SERIES"):
            series_of_study = select(Series.pk).where(Series.study_pk == study.pk).scalar_subquery()
            before_instances, before_series = result.instances, result.series
            self._instances(Instance.series_pk.in_(series_of_study), result)
            removed_series = self.session.scalars(delete(Series).where(Series.study_pk == study.pk)
                                                  .returning(Series.pk), execution_options=_NO_SYNC).all()
            result.series += len(removed_series)
            self._counters(None, patient, None, instances=result.instances - before_instances,
                           series=result.series - before_series)
            self.session.execute(delete(Study).where(Study.pk == study.pk), execution_options=_NO_SYNC)
            result.study_deleted = True
            self._patient_counter(patient, NumberOfPatientRelatedStudies=-1)
            self._event(STUDY_DELETED, patient, study, "", "", {"series": result.series,
                                                               "instances": result.instances})
            if not self._count(Study.pk, Study.patient_pk == patient.pk):
                self.session.execute(delete(Patient).where(Patient.pk == patient.pk), execution_options=_NO_SYNC)
                result.patient_deleted = True
                self._event(PATIENT_DELETED, patient, None, "", "", {})
        return result

    def _locate(self, level: str, uid: str) -> tuple[int, int | None, int | None]:
        if level == "STUDY":
            pk = self.session.scalar(select(Study.pk).where(Study.StudyInstanceUID == uid))
            if pk is None:
                raise NotFound(f"study {uid} is not in the index")
            return pk, None, None
        if level == "SERIES":
            row = self.session.execute(select(Series.study_pk, Series.pk)
                                       .where(Series.SeriesInstanceUID == uid)).first()
            if row is None:
                raise NotFound(f"series {uid} is not in the index")
            return row[0], row[1], None
        found = self.session.execute(select(Series.study_pk, Series.pk, Instance.pk)
                                     .join(Series, Instance.series_pk == Series.pk)
                                     .where(Instance.SOPInstanceUID == uid)).first()
        if found is None:
            raise NotFound(f"instance {uid} is not in the index")
        return found[0], found[1], found[2]

    def _instances(self, condition: Any, result: DeletionResult) -> None:
        """Remove the matching instances and their history, collecting every blob key they named."""
        versions = self.session.scalars(
            delete(InstanceVersion).where(InstanceVersion.instance_pk.in_(
                select(Instance.pk).where(condition).scalar_subquery()))
            .returning(InstanceVersion.blob_key), execution_options=_NO_SYNC).all()
        self.session.execute(delete(Report).where(Report.SOPInstanceUID.in_(  # a report's row goes with it
            select(Instance.SOPInstanceUID).where(condition).scalar_subquery())), execution_options=_NO_SYNC)
        current = self.session.scalars(delete(Instance).where(condition).returning(Instance.blob_key),
                                       execution_options=_NO_SYNC).all()
        result.versions += len(versions)
        result.instances += len(current)
        result.blob_keys.extend(current)
        result.blob_keys.extend(versions)

    def _count(self, column: Any, condition: Any) -> int:
        return int(self.session.scalar(select(func.count(column)).where(condition)) or 0)

    def _counters(self, study: Study | None, patient: Patient, series_pk: int | None, *, instances: int,
                  series: int) -> None:
        if series_pk is not None and instances:
            self.session.execute(update(Series).where(Series.pk == series_pk).values(
                NumberOfSeriesRelatedInstances=Series.NumberOfSeriesRelatedInstances - instances,
                updated_at=self.now).execution_options(synchronize_session=False))
        if study is not None:
            self.session.execute(update(Study).where(Study.pk == study.pk).values(
                NumberOfStudyRelatedInstances=Study.NumberOfStudyRelatedInstances - instances,
                NumberOfStudyRelatedSeries=Study.NumberOfStudyRelatedSeries - series,
                updated_at=self.now).execution_options(synchronize_session=False))
        self._patient_counter(patient, NumberOfPatientRelatedInstances=-instances,
                              NumberOfPatientRelatedSeries=-series)

    def _patient_counter(self, patient: Patient, **changes: int) -> None:
        values = {name: getattr(Patient, name) + change for name, change in changes.items() if change}
        if values:
            values["updated_at"] = self.now
            self.session.execute(update(Patient).where(Patient.pk == patient.pk).values(values)
                                 .execution_options(synchronize_session=False))

    def _refresh_study(self, study: Study) -> None:
        """ModalitiesInStudy and SOPClassesInStudy from what is left, in the order it arrived."""
        modalities = self.session.execute(
            select(Series.Modality, func.min(Series.pk)).where(Series.study_pk == study.pk, Series.Modality != "")
            .group_by(Series.Modality).order_by(func.min(Series.pk))).all()
        classes = self.session.execute(
            select(Instance.SOPClassUID, func.min(Instance.pk)).join(Series, Instance.series_pk == Series.pk)
            .where(Series.study_pk == study.pk, Instance.SOPClassUID != "")
            .group_by(Instance.SOPClassUID).order_by(func.min(Instance.pk))).all()
        self.session.execute(update(Study).where(Study.pk == study.pk).values(
            ModalitiesInStudy=_wrapped(row[0] for row in modalities),
            SOPClassesInStudy=_wrapped(row[0] for row in classes)).execution_options(synchronize_session=False))

    def _event(self, event_type: str, patient: Patient, study: Study | None, series_uid: str, sop_uid: str,
               payload: dict[str, Any]) -> None:
        self.session.add(Event(
            type=event_type, created_at=self.now, PatientID=patient.PatientID,
            IssuerOfPatientID=patient.IssuerOfPatientID,
            StudyInstanceUID=study.StudyInstanceUID if study is not None else "",
            SeriesInstanceUID=series_uid, SOPInstanceUID=sop_uid,
            payload=json.dumps({**payload, "reason": self.reason, "actor": self.actor}),
        ))


def _wrapped(values: Any) -> str:
    """``\\CT\\SR\\`` (each value wrapped, so one LIKE finds one value), empty when there is none."""
    items = [str(value) for value in values]
    return "\\" + "".join(f"{item}\\" for item in items) if items else ""
