"""C-STORE sub-operations of C-GET and C-MOVE that send the stored bytes, not a re-encoding.

Originals are immutable, also on the way out: a stored instance is sent straight from its Part 10
file (the data set bytes Mosaic received, unchanged) whenever the peer accepted its transfer
syntax. Decoding and re-encoding with pydicom would drop group lengths, re-deflate deflated data
sets and normalise other details. Only when the peer did not accept the stored transfer syntax is
the data set decoded and converted: compressed pixel data decompressed (pydicom with the pylibjpeg
plugins, as WADO-RS does) for a peer that takes only uncompressed syntaxes, then explicit/implicit VR
or deflated/inflated as pynetdicom converts. Mosaic never compresses.

pynetdicom's C-GET/C-MOVE service classes take only ``Dataset`` yields from a handler, so the
handler yields a :class:`StoredFileDataset` (a small stand-in naming the file) and
``Association.send_c_store`` is wrapped to send such a stand-in from its file (by
:func:`mosaic.dimse.adjustments.apply`, which also has pynetdicom send a path from its file as it is).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext, build_context

log = logging.getLogger("mosaic.dimse")

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
MAX_CONTEXTS = 128


@dataclass
class EgressTally:
    """What the C-STORE sub-operations of one C-GET/C-MOVE did: sent as stored, converted, how they ended."""

    as_stored: int = 0
    converted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    """"success", "warning", "failure" (a refusal or no answer) → count"""

    def record(self, converted: bool, status: int | None) -> None:
        if converted:
            self.converted += 1
        else:
            self.as_stored += 1
        outcome = ("failure" if status is None or (status & 0xF000) in (0xA000, 0xC000) or status == 0x0110
                   else "warning" if status != 0x0000 else "success")
        self.statuses[outcome] = self.statuses.get(outcome, 0) + 1

    @property
    def failed(self) -> int:
        return self.statuses.get("failure", 0)


class StoredFileDataset(Dataset):
    """Stands for the stored Part 10 file of one instance in a C-GET/C-MOVE sub-operation."""

    def __init__(self, path: Path, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax_uid: str, tally: EgressTally | None = None) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
        self.stored_path = path
        self.tally = tally

    def payload_for(self, association: Association) -> Path | Dataset:
        """The file itself when its transfer syntax was accepted, otherwise the decoded data set (decompressed
        when the peer accepted no context for its compressed syntax)."""
        if self._sendable_as_is(association):
            return self.stored_path
        stored = UID(str(self.file_meta.TransferSyntaxUID))
        dataset = pydicom.dcmread(self.stored_path, force=True)
        syntax = UID(str(dataset.file_meta.get("TransferSyntaxUID", "") or stored))
        if syntax.is_compressed and "PixelData" in dataset and not _accepted(association, self.SOPClassUID, syntax):
            try:
                dataset.decompress(generate_instance_uid=False)  # the same object, pixel data uncompressed
            except Exception as exc:  # decoders raise many kinds on data they cannot handle
                raise ValueError(f"{self.SOPInstanceUID}: the peer accepts no context for {syntax.name} and the "
                                 f"pixel data cannot be decompressed: {type(exc).__name__}: {exc}") from exc
        log.debug("%s: transfer syntax %s not accepted by the peer, sending it as %s", self.SOPInstanceUID,
                  syntax, dataset.file_meta.TransferSyntaxUID)
        return dataset

    def _sendable_as_is(self, association: Association) -> bool:
        syntax = str(self.file_meta.TransferSyntaxUID)
        if not _accepted(association, self.SOPClassUID, syntax):
            return False
        try:
            file_meta, _offset = split_dataset(self.stored_path)
        except Exception:
            return False  # no readable File Meta Information: decode instead
        return (str(file_meta.get("TransferSyntaxUID", "")) == syntax
                and str(file_meta.get("MediaStorageSOPInstanceUID", "")) == str(self.SOPInstanceUID)
                and str(file_meta.get("MediaStorageSOPClassUID", "")) == str(self.SOPClassUID))


def _accepted(association: Association, sop_class_uid: str, syntax: str) -> bool:
    return any(context.abstract_syntax == sop_class_uid and context.transfer_syntax[0] == syntax and context.as_scu
               for context in association.accepted_contexts)


_send_c_store = Association.send_c_store


def _send_c_store_from_file(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
    if not isinstance(dataset, StoredFileDataset):
        return _send_c_store(self, dataset, *args, **kwargs)
    stand_in, status = dataset, None
    payload: Path | Dataset | None = None
    try:
        payload = stand_in.payload_for(self)
        answer = _send_c_store(self, payload, *args, **kwargs)
        status = int(answer.Status) if answer and "Status" in answer else None
        return answer
    except Exception as exc:
        log.error("C-STORE sub-operation of %s failed: %s", stand_in.SOPInstanceUID, exc)
        raise
    finally:
        if stand_in.tally is not None:
            stand_in.tally.record(not isinstance(payload, Path), status)  # None: the conversion failed



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
