"""Reading what arrives: parse headers without pixel data, detect truncation, build DICOM JSON.

"Tolerant when decoding": anything pydicom can read with a valid structure is accepted and
what was tolerated is logged by the caller; structure that cannot be trusted (truncated
files, bytes that are not DICOM) raises :class:`InvalidObject` with the reason.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from mosaic.core.errors import InvalidObject
from mosaic.core.fastjson import charset_codec, raw_to_json
from mosaic.core.status import StorageStatus
from mosaic.core.uids import uid_problem

DEFER_SIZE = 64 * 1024
"""Values larger than this are not read while parsing a header (pixel data stays on disk)."""

_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SEQUENCE_DELIMITER_BE = b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"
_DEFLATED = "1.2.840.10008.1.2.1.99"
BULK_TAGS = frozenset({Tag(0x7FE00010), Tag(0x7FE00008), Tag(0x7FE00009)})
"""PixelData, FloatPixelData, DoubleFloatPixelData: never part of the indexed metadata."""

_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class ParsedInstance:
    """A DICOM object's identity and header, parsed once at the door."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    dataset: Dataset
    """The header (values larger than :data:`DEFER_SIZE` are deferred, not read)."""
    dataset_offset: int
    """Where the dataset starts: after the preamble and File Meta Information (0 if none)."""


def _open(source: Path | bytes) -> tuple[BinaryIO, int]:
    if isinstance(source, bytes):
        return io.BytesIO(source), len(source)
    return open(source, "rb"), os.path.getsize(source)


def parse_instance(source: Path | bytes) -> ParsedInstance:
    """Parse a Part 10 file (or a bare dataset) and check its structure and identifying UIDs."""
    stream, size = _open(source)
    try:
        dataset = _read(stream)
        transfer_syntax = _transfer_syntax(dataset)
        if transfer_syntax != _DEFLATED:
            _check_complete(dataset, stream, size)
        uids = _identifying_uids(dataset)
        return ParsedInstance(
            *uids, transfer_syntax_uid=transfer_syntax, dataset=dataset, dataset_offset=_offset(stream, dataset)
        )
    finally:
        stream.close()


def _at_command_element(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    """Group 0000 (command elements) never follows data set elements: what a zeroed tail reads as, eight
    bytes an element. Reading stops there (the bytes are kept as sent) instead of costing seconds per MB."""
    return tag >> 16 == 0


def _refuse_command_group(stream: BinaryIO) -> None:
    """A data set that starts with group 0000 (zeros, or a DIMSE command) is not DICOM: refused before pydicom
    reads every eight bytes of it as one more command element."""
    stream.seek(0)
    head = stream.read(144)
    start = 0
    if head[128:132] == b"DICM":
        if head[132:138] != b"\x02\x00\x00\x00UL":  # no File Meta Information Group Length: not checked
            return
        start = 144 + int.from_bytes(head[140:144], "little")
    stream.seek(start)
    group = stream.read(2)
    stream.seek(0)
    if group == b"\x00\x00":
        raise InvalidObject("not a DICOM file: its data set starts with group 0000 (command elements or zeros)")


def _read(stream: BinaryIO) -> FileDataset:
    _refuse_command_group(stream)
    try:
        return read_partial(stream, _at_command_element, defer_size=DEFER_SIZE)
    except InvalidDicomError:
        pass
    except Exception as exc:  # pydicom raises many kinds on damaged input
        raise InvalidObject(f"not readable as DICOM ({type(exc).__name__}: {exc})") from exc
    stream.seek(0)
    try:
        dataset = read_partial(stream, _at_command_element, defer_size=DEFER_SIZE, force=True)
    except Exception as exc:
        raise InvalidObject(f"not a DICOM file ({type(exc).__name__}: {exc})") from exc
    if not any(dataset.get_item(Tag(keyword)) is not None for keyword in _REQUIRED_UIDS):
        raise InvalidObject("not a DICOM file (no 'DICM' prefix and no readable DICOM dataset)")
    return dataset


def _transfer_syntax(dataset: FileDataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax:
        return str(syntax)
    return "1.2.840.10008.1.2"  # a bare dataset without meta: Implicit VR Little Endian (PS3.5 A.1)


def _check_complete(dataset: Dataset, stream: BinaryIO, size: int) -> None:
    """Reject a truncated object: the last top-level element must end where the bytes end."""
    tags = list(dataset.keys())
    if not tags:
        raise InvalidObject("the dataset is empty")
    raw = dataset.get_item(tags[-1], keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.value_tell is None:
        return
    if raw.length == _UNDEFINED_LENGTH:
        stream.seek(max(size - 8, 0))
        if stream.read(8) not in (_SEQUENCE_DELIMITER_LE, _SEQUENCE_DELIMITER_BE):
            raise InvalidObject(f"truncated: element {raw.tag} of undefined length has no sequence delimiter")
        return
    end = raw.value_tell + raw.length
    if end > size or (raw.value is not None and len(raw.value) < raw.length):
        raise InvalidObject(f"truncated: element {raw.tag} needs {raw.length} bytes, the object ends first")


def _identifying_uids(dataset: Dataset) -> tuple[str, str, str, str]:
    values: list[str] = []
    sop_instance_uid = _text(dataset, "SOPInstanceUID")
    for keyword in _REQUIRED_UIDS:
        value = _text(dataset, keyword)
        problem = uid_problem(value)
        if problem:
            raise InvalidObject(f"{keyword} {problem}", sop_instance_uid=sop_instance_uid or None,
                                status=StorageStatus.ERROR_CANNOT_UNDERSTAND)
        values.append(value)
    return values[0], values[1], values[2], values[3]


def _text(dataset: Dataset, keyword: str) -> str:
    try:
        value = dataset.get(keyword)
    except Exception:
        return ""
    return str(value).strip("\x00 ") if value is not None else ""


def bulk_data_uri(tag: BaseTag) -> str:
    """Relative BulkDataURI recorded in the index; the HTTP layer resolves it to a full URL."""
    return f"bulkdata/{tag:08X}"


def metadata_json(dataset: Dataset, bulk_data_threshold: int) -> dict[str, Any]:
    """DICOM JSON (PS3.18 F.2) of a header, with large values replaced by a BulkDataURI."""
    result: dict[str, Any] = {}
    codec = charset_codec(dataset.get("SpecificCharacterSet"))
    for tag in list(dataset.keys()):
        if tag.group == 0x0002:
            continue
        raw = dataset.get_item(tag, keep_deferred=True)
        length = raw.length if isinstance(raw, RawDataElement) else None
        if isinstance(raw, RawDataElement) and length is not None and length <= bulk_data_threshold \
                and tag not in BULK_TAGS:
            fast = raw_to_json(raw, codec)  # the common, simple elements without pydicom's conversion
            if fast is not None:
                result[f"{tag:08X}"] = fast
                continue
        if tag in BULK_TAGS or (length is not None and length != _UNDEFINED_LENGTH and length > bulk_data_threshold):
            vr = raw.VR if isinstance(raw, RawDataElement) and raw.VR else _guess_vr(dataset, tag)
            result[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": bulk_data_uri(tag)}
            continue
        try:
            element: DataElement = dataset[tag]
            result[f"{tag:08X}"] = element.to_json_dict(
                bulk_data_element_handler=lambda elem: bulk_data_uri(elem.tag),
                bulk_data_threshold=bulk_data_threshold,
            )
        except Exception:
            # tolerant decoding: a value pydicom cannot convert is kept out of the index, not fatal
            continue
    return result


def _guess_vr(dataset: Dataset, tag: BaseTag) -> str:
    try:
        return str(dataset[tag].VR)
    except Exception:
        return "OB"


def _offset(stream: BinaryIO, dataset: Dataset) -> int:
    stream.seek(128)
    if stream.read(4) != b"DICM":
        return 0
    meta = getattr(dataset, "file_meta", None)
    group_length = meta.get("FileMetaInformationGroupLength") if meta is not None else None
    if isinstance(group_length, int) and group_length > 0:
        # preamble + prefix + the (0002,0000) element itself (explicit VR UL: 12 bytes) + the group
        return 132 + 12 + group_length
    stream.seek(132)
    from pydicom.filereader import _read_file_meta_info

    _read_file_meta_info(stream)
    return stream.tell()
