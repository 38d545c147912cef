"""C-STORE sub-operations of C-GET and C-MOVE that send the stored bytes, not a re-encoding.

Originals are immutable, also on the way out: a stored instance is sent straight from its Part 10
file (the data set bytes Mosaic received, unchanged) whenever the peer accepted its transfer
syntax. Decoding and re-encoding with pydicom would drop group lengths, re-deflate deflated data
sets and normalise other details. Only when the peer did not accept the stored transfer syntax is
the data set decoded and converted (explicit/implicit VR, deflated/inflated), as pynetdicom allows.

pynetdicom's C-GET/C-MOVE service classes take only ``Dataset`` yields from a handler, so the
handler yields a :class:`StoredFileDataset` (a small stand-in naming the file) and
``Association.send_c_store`` is wrapped to send such a stand-in from its file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext, build_context

log = logging.getLogger("mosaic.dimse")

_config.STORE_SEND_CHUNKED_DATASET = True  # a path given to send_c_store is sent from the file as-is

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
MAX_CONTEXTS = 128


class StoredFileDataset(Dataset):
    """Stands for the stored Part 10 file of one instance in a C-GET/C-MOVE sub-operation."""

    def __init__(self, path: Path, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax_uid: str) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
        self.stored_path = path

    def payload_for(self, association: Association) -> Path | Dataset:
        """The file itself when its transfer syntax was accepted, otherwise the decoded data set."""
        if self._sendable_as_is(association):
            return self.stored_path
        log.info("%s: transfer syntax %s not accepted by the peer, sending a converted data set",
                 self.SOPInstanceUID, self.file_meta.TransferSyntaxUID)
        return pydicom.dcmread(self.stored_path, force=True)

    def _sendable_as_is(self, association: Association) -> bool:
        syntax = str(self.file_meta.TransferSyntaxUID)
        if not any(context.abstract_syntax == self.SOPClassUID and context.transfer_syntax[0] == syntax
                   and context.as_scu for context in association.accepted_contexts):
            return False
        try:
            file_meta, _offset = split_dataset(self.stored_path)
        except Exception:
            return False  # no readable File Meta Information: decode instead
        return (str(file_meta.get("TransferSyntaxUID", "")) == syntax
                and str(file_meta.get("MediaStorageSOPInstanceUID", "")) == str(self.SOPInstanceUID)
                and str(file_meta.get("MediaStorageSOPClassUID", "")) == str(self.SOPClassUID))


_send_c_store = Association.send_c_store


def _send_c_store_from_file(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
    if isinstance(dataset, StoredFileDataset):
        dataset = dataset.payload_for(self)
    return _send_c_store(self, dataset, *args, **kwargs)


Association.send_c_store = _send_c_store_from_file  # type: ignore[method-assign]


def move_contexts(instances: list[tuple[str, str]]) -> list[PresentationContext]:
    """Contexts to propose to a C-MOVE destination for (SOP Class UID, Transfer Syntax UID) pairs.

    One context per stored pair (so each instance can go out as stored), then one uncompressed
    context per SOP class as a fallback; at most 128 (PS3.8 9.3.2.2).
    """
    pairs = list(dict.fromkeys(instances))
    contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in pairs]
    for sop_class in dict.fromkeys(sop_class for sop_class, _syntax in pairs):
        contexts.append(build_context(sop_class, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]))
    if len(contexts) > MAX_CONTEXTS:
        log.warning("C-MOVE: %d presentation contexts needed, proposing the first %d", len(contexts),
                    MAX_CONTEXTS)
    return contexts[:MAX_CONTEXTS]
