"""DIMSE statuses by service class (:mod:`mosaic.core.status`, where STOW-RS finds them too) and the status of a
response that carries an Error Comment."""

from __future__ import annotations

from pydicom.dataset import Dataset

from mosaic.core.status import (
    CommitmentStatus,
    ProcedureStepStatus,
    QueryStatus,
    RetrieveStatus,
    Status,
    StorageStatus,
    VerificationStatus,
)

__all__ = ["CommitmentStatus", "ProcedureStepStatus", "QueryStatus", "RetrieveStatus", "Status", "StorageStatus",
           "VerificationStatus",
           "with_comment"]


def with_comment(code: int, comment: str) -> Dataset:
    """A status for pynetdicom to answer with, naming what was wrong (Error Comment is LO: 64 characters)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
