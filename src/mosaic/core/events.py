"""Types of the events written to the outbox in the same transaction as the index change."""

from __future__ import annotations

import enum


class EventType(enum.StrEnum):
    INSTANCE_STORED = "InstanceStored"
    INSTANCE_REPLACED = "InstanceReplaced"
    SERIES_CREATED = "SeriesCreated"
    STUDY_CREATED = "StudyCreated"
    PATIENT_CREATED = "PatientCreated"
    PATIENT_UPDATED = "PatientUpdated"
    PATIENT_MERGED = "PatientMerged"
    PATIENT_ID_CHANGED = "PatientIdentifierChanged"
    STORAGE_COMMITTED = "StorageCommitted"
    STUDY_AVAILABLE = "StudyAvailable"
    """A study stable for ``workflow.study_stable_seconds`` since its last change (written by the sweeper of
    :mod:`mosaic.services.availability`; announced over HL7 ORU^R01 and FHIR Subscriptions)."""
