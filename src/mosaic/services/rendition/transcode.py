"""Transcoding a stored instance to Explicit VR Little Endian (the default DICOMweb transfer syntax).

The original is never touched: the transcoded Part 10 file is written to a temporary file that the
response streams and then deletes. Compressed pixel data is decompressed with pydicom's decoders (the
pylibjpeg plugins); big endian values are turned little endian; Implicit VR and deflated data sets are
re-encoded. The data set is decoded in memory: transcoding costs the size of the decoded object in RAM.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from mosaic.services.rendition.frames import SWAP_SIZES, can_decode, swap_bytes
from mosaic.services.rendition.syntaxes import EXPLICIT_BE, EXPLICIT_LE, NATIVE


class TranscodeError(Exception):
    """The stored object cannot be turned into the requested transfer syntax (422: it is stored, not decodable)."""

    status = 422


def can_transcode(transfer_syntax: str, target: str = EXPLICIT_LE) -> bool:
    """Mosaic can send an object stored as ``transfer_syntax`` as ``target`` (only Explicit VR LE so far)."""
    return target == EXPLICIT_LE and (transfer_syntax in NATIVE or can_decode(transfer_syntax))


def as_explicit_little_endian(dataset: Dataset) -> None:
    """Turn a decoded Part 10 data set into Explicit VR Little Endian in place (decompressed, byte-swapped)."""
    syntax = str(dataset.file_meta.get("TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    if syntax not in NATIVE and "PixelData" in dataset:
        dataset.decompress(generate_instance_uid=False)  # same object, lossless change of encoding
    elif syntax == EXPLICIT_BE:
        _swap_binary_values(dataset)
    dataset.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)


def to_explicit_little_endian(source: BinaryIO, target: BinaryIO) -> None:
    """Write the Part 10 file read from ``source`` to ``target`` as Explicit VR Little Endian."""
    try:
        dataset = pydicom.dcmread(source, force=True)
        as_explicit_little_endian(dataset)
        pydicom.dcmwrite(target, dataset, enforce_file_format=True, implicit_vr=False, little_endian=True)
    except Exception as exc:  # decoders and the writer raise many kinds on data they cannot handle
        raise TranscodeError(f"{type(exc).__name__}: {exc}") from exc


def transcoded_copy(source: BinaryIO) -> Path:
    """A temporary Explicit VR Little Endian copy of the file read from ``source``: the caller deletes it."""
    handle = tempfile.NamedTemporaryFile(prefix="mosaic-wado-", suffix=".dcm", delete=False)  # noqa: SIM115
    path = Path(handle.name)
    try:
        with handle:
            to_explicit_little_endian(source, handle)  # type: ignore[arg-type]
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _swap_binary_values(dataset: Dataset) -> None:
    """Big endian OW/OL/OF/OD/OV values (kept as bytes by pydicom) turned little endian, nested ones too."""
    bits = int(dataset.get("BitsAllocated", 16) or 16)
    for element in list(dataset.iterall()):
        if not isinstance(element.value, bytes | bytearray) or element.VR not in ("OW", "OL", "OF", "OD", "OV"):
            continue
        size = SWAP_SIZES[element.VR]
        if element.tag == 0x7FE00010 and element.VR == "OW" and bits in (32, 64):
            size = bits // 8
        element.value = swap_bytes(bytes(element.value), size)
