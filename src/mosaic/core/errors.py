"""Errors that name the object and the reason, so every door can answer clearly."""

from __future__ import annotations

from mosaic.core.status import StorageStatus


class MosaicError(Exception):
    """Base of Mosaic's own errors."""


class InvalidObject(MosaicError):
    """An object offered for storage cannot be accepted as it is.

    ``status`` is the DIMSE status a C-STORE SCP answers with (PS3.4 B.2.3 / PS3.7 C).
    """

    def __init__(self, reason: str, *, sop_instance_uid: str | None = None,
                 status: int = StorageStatus.ERROR_CANNOT_UNDERSTAND) -> None:
        self.reason = reason
        self.sop_instance_uid = sop_instance_uid
        self.status = status
        name = f"SOP Instance {sop_instance_uid}" if sop_instance_uid else "object"
        super().__init__(f"{name} rejected: {reason}")


class DuplicateInstance(InvalidObject):
    """The SOP Instance UID is stored with different bytes and the policy is to reject."""

    def __init__(self, sop_instance_uid: str) -> None:
        super().__init__(
            "an instance with this SOP Instance UID is already stored with different content "
            "(ingest.duplicate_policy = reject)",
            sop_instance_uid=sop_instance_uid,
            status=StorageStatus.DUPLICATE_SOP_INSTANCE,
        )


class InstanceMismatch(InvalidObject):
    """The data set is another SOP Instance than the C-STORE request names (its Affected SOP Instance UID)."""

    def __init__(self, requested: str, found: str) -> None:
        super().__init__(
            f"the data set's SOP Instance UID {found} differs from the request's Affected SOP Instance UID "
            f"{requested}",
            sop_instance_uid=requested,
            status=StorageStatus.ERROR_CANNOT_UNDERSTAND,
        )
        self.found = found


class StorageFailure(MosaicError):
    """The blob store could not write or read an object."""


class NotFound(MosaicError):
    """A requested patient, study, series or instance is not in the index."""


class QueryError(MosaicError):
    """A query's keys or values cannot be understood."""
