"""A Part 10 file written in a streaming way: pydicom writes the attributes, the bulk value (a video's stream, a
PDF) is copied from its file with a fixed-size buffer, so a 500 MB video never sits whole in memory."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

BUFFER = 1 << 20
ITEM = 0xFFFEE000
SEQUENCE_DELIMITER = 0xFFFEE0DD
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
MAX_FRAGMENT = 0xFFFFFFFE - 0xE
"""An item's length is 32 bits and even: the largest fragment this writer makes."""


def file_meta(dataset: Dataset, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MOSAIC_CAPTURE"
    return meta


def write(path: Path, dataset: Dataset, transfer_syntax: str) -> None:
    """A dataset held in memory (photos: their pixels are decoded anyway)."""
    dataset.file_meta = file_meta(dataset, transfer_syntax)
    dcmwrite(path, dataset, enforce_file_format=True)


def _split(dataset: Dataset, tag: BaseTag) -> tuple[Dataset, Dataset]:
    head, tail = Dataset(), Dataset()
    for element in dataset:
        (head if element.tag < tag else tail).add(element)
    if "SpecificCharacterSet" in dataset:
        tail.SpecificCharacterSet = dataset.SpecificCharacterSet
    return head, tail


def _write_tail(out: BinaryIO, tail: Dataset) -> None:
    charset = tail.get("SpecificCharacterSet")
    if "SpecificCharacterSet" in tail:
        del tail.SpecificCharacterSet  # it was written in the head
    if not len(tail):
        return
    writer = DicomFileLike(out)
    writer.is_little_endian, writer.is_implicit_VR = True, False
    write_dataset(writer, tail, parent_encoding=charset or "iso8859")


def _copy(source: BinaryIO, out: BinaryIO, length: int) -> None:
    remaining = length
    while remaining:
        chunk = source.read(min(BUFFER, remaining))
        if not chunk:
            raise OSError(f"the file ended {remaining} bytes early")
        out.write(chunk)
        remaining -= len(chunk)


def write_streamed_ob(path: Path, dataset: Dataset, transfer_syntax: str, tag: int, source: Path) -> int:
    """The dataset with ``tag`` an OB of explicit length holding ``source``'s bytes (even-padded with 0x00);
    answers the file offset where the value starts."""
    bulk_tag = Tag(tag)
    length = source.stat().st_size
    padded = length + length % 2
    if padded > 0xFFFFFFFE:
        raise ValueError(f"{length} bytes do not fit in one data element")
    head, tail = _split(dataset, bulk_tag)
    head.file_meta = file_meta(dataset, transfer_syntax)
    with path.open("wb") as out:
        dcmwrite(out, head, enforce_file_format=True)
        out.write(struct.pack("<HH2sHI", bulk_tag.group, bulk_tag.element, b"OB", 0, padded))
        start = out.tell()
        with source.open("rb") as stream:
            _copy(stream, out, length)
        if length % 2:
            out.write(b"\0")
        _write_tail(out, tail)
    return start


def fragment_sizes(length: int, max_fragment: int) -> Iterable[int]:
    while length > 0:
        yield min(length, max_fragment)
        length -= max_fragment


def write_encapsulated(path: Path, dataset: Dataset, transfer_syntax: str, source: Path,
                       max_fragment: int = MAX_FRAGMENT) -> int:
    """The dataset with Pixel Data (7FE0,0010) encapsulated (PS3.5 A.4): undefined length, an empty Basic Offset
    Table, ``source`` in fragments of at most ``max_fragment`` bytes (the last even-padded with 0x00), the Sequence
    Delimitation Item. Answers the file offset where the first fragment's value starts."""
    head, tail = _split(dataset, Tag(0x7FE00010))
    head.file_meta = file_meta(dataset, transfer_syntax)
    length = source.stat().st_size
    start = 0
    with path.open("wb") as out, source.open("rb") as stream:
        dcmwrite(out, head, enforce_file_format=True)
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))  # the Basic Offset Table, empty
        for size in fragment_sizes(length, max_fragment & ~1):
            out.write(struct.pack("<HHI", 0xFFFE, 0xE000, size + size % 2))
            start = start or out.tell()
            _copy(stream, out, size)
            if size % 2:
                out.write(b"\0")
        out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
        _write_tail(out, tail)
    return start
