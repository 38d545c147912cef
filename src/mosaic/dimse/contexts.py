"""Presentation contexts Mosaic accepts: every storage SOP class in every common transfer syntax."""

from __future__ import annotations

from typing import Any

from pynetdicom import AE
from pynetdicom.presentation import (
    PresentationContext,
    QueryRetrievePresentationContexts,
    build_context,
    negotiate_as_acceptor,
)
from pynetdicom.sop_class import (
    _STORAGE_CLASSES,
    StorageCommitmentPushModel,
    Verification,
)

TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 2D video
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile
]

STORAGE_SOP_CLASSES = sorted({str(uid) for uid in _STORAGE_CLASSES.values()})
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"


def add_scp_contexts(ae: AE) -> None:
    """Everything Mosaic serves as SCP. Storage contexts also accept the SCU role so C-GET can send."""
    ae.add_supported_context(Verification)
    for context in QueryRetrievePresentationContexts:
        ae.add_supported_context(context.abstract_syntax)
    ae.add_supported_context(StorageCommitmentPushModel)
    ae.add_supported_context(MODALITY_WORKLIST_FIND)
    ae.add_supported_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    for uid in STORAGE_SOP_CLASSES:
        ae.add_supported_context(uid, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)


def negotiate_with_receiver_preference(
    rq_contexts: list[PresentationContext], ac_contexts: list[PresentationContext],
    roles: dict[str, tuple[bool | None, bool | None]] | None = None,
) -> tuple[list[PresentationContext], list[Any]]:
    """pynetdicom's acceptor negotiation, except for contexts the requestor proposes to be SCP of.

    pynetdicom accepts the first of *its own* transfer syntaxes that the requestor proposed. When the
    requestor takes the SCP role (the storage contexts of a C-GET association) it is the receiver and
    lists its preferred syntax first (dcmtk getscu ``+xy``, ``+xv``…): Mosaic then follows that order,
    so a stored JPEG or JPEG 2000 object can be sent as stored instead of failing for lack of a context.
    """
    roles = roles or {}
    reversed_contexts = [cx for cx in rq_contexts if roles.get(cx.abstract_syntax, (None, None))[1]]
    if not reversed_contexts:
        return negotiate_as_acceptor(rq_contexts, ac_contexts, roles)
    others = [cx for cx in rq_contexts if cx not in reversed_contexts]
    results, role_items = negotiate_as_acceptor(others, ac_contexts, roles) if others else ([], [])
    supported = {cx.abstract_syntax: cx for cx in ac_contexts}
    for rq_context in reversed_contexts:
        ac_context = supported.get(rq_context.abstract_syntax)
        tailored: list[PresentationContext] = []
        if ac_context is not None:
            offered = ac_context.transfer_syntax
            ordered = [syntax for syntax in rq_context.transfer_syntax if syntax in offered]
            context = build_context(ac_context.abstract_syntax, ordered or ac_context.transfer_syntax)
            context.scu_role, context.scp_role = ac_context.scu_role, ac_context.scp_role
            tailored = [context]
        result, items = negotiate_as_acceptor([rq_context], tailored, roles)
        results.extend(result)
        role_items.extend(items)
    unique_roles = {item.sop_class_uid: item for item in role_items}
    return (sorted(results, key=lambda cx: cx.context_id),
            sorted(unique_roles.values(), key=lambda item: item.sop_class_uid))



__all__ = ["STORAGE_SOP_CLASSES", "add_scp_contexts", "negotiate_with_receiver_preference"]
