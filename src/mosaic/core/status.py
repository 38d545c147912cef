"""DIMSE statuses by service class, named as PS3.4 and PS3.7 name them (a leaf: imports nothing internal).

The same codes answer C-STORE and STOW-RS (PS3.18 gives a failed part the storage status as its Failure Reason),
so they live in ``core`` beside :class:`~mosaic.core.errors.InvalidObject`, which carries one.
"""

from __future__ import annotations


class Status:
    """Statuses every service shares (PS3.7 Annex C)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119
    NO_SUCH_ACTION_TYPE = 0x0123
    NOT_AUTHORIZED = 0x0124


class VerificationStatus:
    """C-ECHO (PS3.4 A.4)."""

    SUCCESS = Status.SUCCESS


class StorageStatus:
    """C-STORE (PS3.4 B.2.3); also the Failure Reason of a STOW-RS part."""

    SUCCESS = Status.SUCCESS
    REFUSED_OUT_OF_RESOURCES = 0xA700
    """The archive cannot take the object now; the sender may try again."""
    ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    ERROR_CANNOT_UNDERSTAND = 0xC000
    WARNING_COERCION_OF_DATA_ELEMENTS = 0xB000
    WARNING_ELEMENTS_DISCARDED = 0xB006
    WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
    PROCESSING_FAILURE = Status.PROCESSING_FAILURE
    DUPLICATE_SOP_INSTANCE = Status.DUPLICATE_SOP_INSTANCE
    NOT_AUTHORIZED = Status.NOT_AUTHORIZED


class QueryStatus:
    """C-FIND (PS3.4 C.4.1.1.4)."""

    SUCCESS = Status.SUCCESS
    PENDING = Status.PENDING
    CANCEL = Status.CANCEL
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC001
    """One of the 0xC000 to 0xCFFF 'Unable to process' codes: the query failed."""
    UNABLE_TO_PROCESS_IDENTIFIER = 0xC000
    """Likewise: the identifier could not be decoded."""
    NOT_AUTHORIZED = Status.NOT_AUTHORIZED


class RetrieveStatus:
    """C-MOVE and C-GET (PS3.4 C.4.2.1.5, C.4.3.1.4)."""

    SUCCESS = Status.SUCCESS
    PENDING = Status.PENDING
    CANCEL = Status.CANCEL
    SUB_OPERATION_REFUSED_OUT_OF_RESOURCES = 0xA700
    """Given for one sub-operation whose stored instance cannot be read."""
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC514
    """What pynetdicom answers when the handler raises before its first yield."""
    NOT_AUTHORIZED = Status.NOT_AUTHORIZED


class CommitmentStatus:
    """Storage Commitment Push Model, N-ACTION and the Failure Reasons of its N-EVENT-REPORT (PS3.4 J.3)."""

    SUCCESS = Status.SUCCESS
    PROCESSING_FAILURE = Status.PROCESSING_FAILURE
    NO_SUCH_OBJECT_INSTANCE = Status.NO_SUCH_OBJECT_INSTANCE
    CLASS_INSTANCE_CONFLICT = Status.CLASS_INSTANCE_CONFLICT
    NO_SUCH_ACTION_TYPE = Status.NO_SUCH_ACTION_TYPE
    NOT_AUTHORIZED = Status.NOT_AUTHORIZED


class ProcedureStepStatus:
    """Modality Performed Procedure Step, N-CREATE and N-SET (PS3.4 F.7.2, PS3.7 10.1.5 / 10.1.1)."""

    SUCCESS = Status.SUCCESS
    PROCESSING_FAILURE = Status.PROCESSING_FAILURE
    """Also: an N-SET of a step that is no longer IN PROGRESS (PS3.4 F.7.2.2.2)."""
    DUPLICATE_SOP_INSTANCE = Status.DUPLICATE_SOP_INSTANCE
    NO_SUCH_OBJECT_INSTANCE = Status.NO_SUCH_OBJECT_INSTANCE
    INVALID_ATTRIBUTE_VALUE = 0x0106
    MISSING_ATTRIBUTE = 0x0120
    NOT_AUTHORIZED = Status.NOT_AUTHORIZED
