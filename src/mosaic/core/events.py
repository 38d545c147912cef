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
