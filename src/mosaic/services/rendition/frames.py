"""Frames of stored pixel data, read without loading the pixel data (WADO-RS frames, bulk data, rendering).

The header is parsed up to Pixel Data (pydicom, ``stop_before_pixels``), whose element header is then read by
hand: a native (uncompressed) frame is one byte range computed from Rows, Columns, Samples per Pixel, Bits
Allocated and Number of Frames; an encapsulated frame is the concatenation of its fragments, found by
walking the item headers (the fragments themselves are not read) and mapping them to frames with the Basic
or Extended Offset Table, or the JPEG/JPEG 2000 start markers when there is none.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options

from mosaic.services.rendition.syntaxes import (
    DEFLATED_LE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    FRAME_MEDIA_TYPES,
    IMPLICIT_LE,
    NATIVE,
    VIDEO,
)

PIXEL_DATA = 0x7FE00010
_ITEM = 0xE000FFFE  # (FFFE,E000) read as one little-endian uint32: group in the low half
_SEQUENCE_DELIMITER = 0xE0DDFFFE
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_JPEG_FAMILY = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                          "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
_J2K_FAMILY = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                         "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                         "1.2.840.10008.1.2.4.203"})
_HEADER_DEFER = 64 * 1024
SWAP_SIZES = {"OW": 2, "US": 2, "SS": 2, "AT": 2, "OL": 4, "OF": 4, "UL": 4, "SL": 4, "FL": 4,
              "OD": 8, "FD": 8, "OV": 8, "SV": 8, "UV": 8}
"""Bytes per value of the binary VRs whose byte order differs between little and big endian."""


UNDECODABLE = 422
"""The status of a rendition the stored object cannot give (malformed or undecodable pixel data): stored, not served."""


class FrameError(Exception):
    """The pixel data cannot be served as asked: ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def read_header(stream: BinaryIO) -> Dataset:
    """The data set up to Pixel Data (large values deferred, not read); the stream is left at Pixel Data."""
    stream.seek(0)
    header = pydicom.dcmread(stream, stop_before_pixels=True, defer_size=_HEADER_DEFER, force=True)
    position = stream.tell()
    for tag in list(header.keys()):  # what rendering and frame mapping need, read while the stream is open
        if tag.group == 0x0028 or tag in (0x7FE00001, 0x7FE00002):
            element = header.get_item(tag)
            if isinstance(element, RawDataElement) and element.value is None and element.length:
                header[tag]  # reads the deferred value
    stream.seek(position)
    return header


# --- layout ----------------------------------------------------------------------------------------------


@dataclass
class PixelLayout:
    """Where the frames of one stored instance are, without their bytes."""

    header: Dataset
    transfer_syntax: str
    number_of_frames: int = 0
    value_offset: int = 0
    value_length: int | None = None
    """Native: the value's length; None when encapsulated (undefined length)."""
    value_vr: str = "OW"
    fragments: list[tuple[int, int]] = field(default_factory=list)
    """Encapsulated: (offset, length) of each fragment's bytes."""
    frame_fragments: list[list[int]] = field(default_factory=list)
    inline: bytes | None = None
    """The whole Pixel Data value when it had to be decoded (deflated data sets): offsets are into it."""

    @property
    def has_pixels(self) -> bool:
        return self.number_of_frames > 0

    @property
    def encapsulated(self) -> bool:
        return self.value_length is None

    @property
    def media_type(self) -> str:
        """The media type of one frame as stored (PS3.18 Tables 8.7.3-4 and 8.7.3-5)."""
        if not self.encapsulated:
            return "application/octet-stream"
        return FRAME_MEDIA_TYPES.get(self.transfer_syntax, "application/octet-stream")

    @property
    def little_endian_syntax(self) -> str:
        """The syntax of a frame as served unchanged: native frames are always sent little endian."""
        return EXPLICIT_LE if not self.encapsulated else self.transfer_syntax

    def _int(self, keyword: str, default: int = 0) -> int:
        value = self.header.get(keyword)
        try:
            return int(value) if value not in (None, "") else default
        except (TypeError, ValueError):
            return default

    @property
    def bits_allocated(self) -> int:
        return self._int("BitsAllocated", 8)

    @property
    def frame_bits(self) -> int:
        """Bits of one native frame."""
        bits = self._int("Rows") * self._int("Columns") * self._int("SamplesPerPixel", 1) * self.bits_allocated
        if str(self.header.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
            bits = bits // 3 * 2
        return bits


def read_layout(stream: BinaryIO, transfer_syntax: str) -> PixelLayout:
    """Parse the header and locate every frame of the top-level Pixel Data (without reading pixel bytes)."""
    if transfer_syntax == DEFLATED_LE:
        return _inline_layout(stream, transfer_syntax)
    header = read_header(stream)
    layout = PixelLayout(header, transfer_syntax)
    start = stream.tell()
    explicit = transfer_syntax != IMPLICIT_LE
    little = transfer_syntax != EXPLICIT_BE
    head = stream.read(8)
    if len(head) < 8:
        return layout  # no pixel data
    group, element = struct.unpack("<HH" if little else ">HH", head[:4])
    if (group << 16 | element) != PIXEL_DATA:
        return layout  # Float/Double Float Pixel Data or nothing: no frames here
    vr = head[4:6]
    if explicit and not (vr.isalpha() and vr.isupper()):
        explicit = False  # written in implicit VR despite the transfer syntax (pydicom reads it so too)
    if explicit:
        if vr in _LONG_VRS:
            (length,) = struct.unpack("<L" if little else ">L", stream.read(4))
            offset = start + 12
        else:
            (length,) = struct.unpack("<H" if little else ">H", head[6:8])
            offset = start + 8
        layout.value_vr = vr.decode("latin-1")
    else:
        (length,) = struct.unpack("<L", head[4:8])
        offset = start + 8
        layout.value_vr = "OW" if layout.bits_allocated > 8 else "OB"
    layout.value_offset = offset
    layout.number_of_frames = max(layout._int("NumberOfFrames", 1), 1)
    if length == 0xFFFFFFFF:
        _map_fragments(stream, layout)
    else:
        layout.value_length = length
        if not layout._int("Rows") or not layout._int("Columns"):
            raise FrameError("the pixel data has no Rows/Columns to cut frames from", UNDECODABLE)
    return layout


def _inline_layout(stream: BinaryIO, transfer_syntax: str) -> PixelLayout:
    """Deflated data sets have no byte offsets into the file: inflate the whole data set instead."""
    stream.seek(0)
    dataset = pydicom.dcmread(stream, force=True)
    element = dataset.get_item(PIXEL_DATA)
    layout = PixelLayout(dataset, EXPLICIT_LE if transfer_syntax in NATIVE else transfer_syntax)
    if element is None:
        return layout
    value = dataset.PixelData
    layout.inline = bytes(value)
    layout.value_length = len(value)
    layout.number_of_frames = max(layout._int("NumberOfFrames", 1), 1)
    del dataset.PixelData
    return layout


def _map_fragments(stream: BinaryIO, layout: PixelLayout) -> None:
    position = layout.value_offset
    stream.seek(position)
    items: list[tuple[int, int, int]] = []  # (item tag position, value offset, value length)
    while True:
        head = stream.read(8)
        if len(head) < 8:
            break
        tag, length = struct.unpack("<LL", head)
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise FrameError(f"the encapsulated pixel data is malformed at byte {position}", UNDECODABLE)
        items.append((position, position + 8, length))
        position += 8 + length
        stream.seek(position)
    if not items:
        raise FrameError("the encapsulated pixel data has no Basic Offset Table item", UNDECODABLE)
    bot_offset, bot_length = items[0][1], items[0][2]
    fragments = items[1:]
    layout.fragments = [(offset, length) for _, offset, length in fragments]
    frames, count = layout.number_of_frames, len(fragments)
    if count == 0:
        raise FrameError("the encapsulated pixel data has no fragments", UNDECODABLE)
    if frames == 1:
        layout.frame_fragments = [list(range(count))]
        return
    if layout.transfer_syntax in VIDEO:
        # one stream for all frames: whichever frame is asked for, the stream is the answer (PS3.18 8.7.3.3.2)
        layout.frame_fragments = [list(range(count)) for _ in range(frames)]
        return
    if count == frames:
        layout.frame_fragments = [[index] for index in range(count)]
        return
    relative = [tag_position - fragments[0][0] for tag_position, _, _ in fragments]
    starts: list[int] | None = None
    extended = layout.header.get("ExtendedOffsetTable")
    if extended:
        raw = bytes(extended)
        starts = list(struct.unpack(f"<{len(raw) // 8}Q", raw))
    elif bot_length:
        stream.seek(bot_offset)
        raw = stream.read(bot_length)
        starts = list(struct.unpack(f"<{len(raw) // 4}L", raw))
    if starts:
        layout.frame_fragments = [[index for index, offset in enumerate(relative)
                                   if starts[number] <= offset < (starts[number + 1] if number + 1 < len(starts)
                                                                  else 1 << 64)]
                                  for number in range(len(starts))]
    else:
        layout.frame_fragments = _frames_by_markers(stream, layout)
    if len(layout.frame_fragments) != frames or not all(layout.frame_fragments):
        raise FrameError(f"cannot tell the {frames} frames apart in {count} fragments "
                         "(no usable offset table)", UNDECODABLE)


def _frames_by_markers(stream: BinaryIO, layout: PixelLayout) -> list[list[int]]:
    """Without an offset table: a fragment that starts a JPEG (SOI) or JPEG 2000 codestream starts a frame."""
    syntax = layout.transfer_syntax
    if syntax not in _JPEG_FAMILY and syntax not in _J2K_FAMILY:
        return []
    frames: list[list[int]] = []
    for index, (offset, _length) in enumerate(layout.fragments):
        stream.seek(offset)
        start = stream.read(12)
        if (start[:2] == b"\xff\xd8" or start[:4] == b"\xff\x4f\xff\x51" or start[4:8] == b"jP  "
                or not frames):
            frames.append([index])
        else:
            frames[-1].append(index)
    return frames


# --- frame bytes -----------------------------------------------------------------------------------------


def _read(stream: BinaryIO, layout: PixelLayout, offset: int, length: int) -> bytes:
    if layout.inline is not None:
        return layout.inline[offset - layout.value_offset: offset - layout.value_offset + length]
    stream.seek(offset)
    data = stream.read(length)
    if len(data) < length:
        raise FrameError("the stored pixel data ends before the frame does", UNDECODABLE)
    return data


def check_frames(layout: PixelLayout, numbers: list[int], what: str) -> None:
    """404 for frame numbers (1-based) the instance does not have."""
    if not layout.has_pixels:
        raise FrameError(f"{what} has no pixel data", 404)
    wrong = [number for number in numbers if number < 1 or number > layout.number_of_frames]
    if wrong:
        raise FrameError(f"{what} has {layout.number_of_frames} frame(s): no frame "
                         f"{', '.join(str(number) for number in wrong)}", 404)


def stored_frame(stream: BinaryIO, layout: PixelLayout, index: int) -> bytes:
    """Frame ``index`` (0-based) as stored: a compressed frame's bytes (its fragments joined), or a native frame
    as uncompressed little-endian bytes."""
    if layout.encapsulated:
        return b"".join(_read(stream, layout, *layout.fragments[number])
                        for number in layout.frame_fragments[index])
    bits = layout.frame_bits
    assert layout.value_length is not None
    if bits % 8 == 0:
        size = bits // 8
        begin = index * size
        if begin + size > layout.value_length:
            raise FrameError(f"the stored pixel data is shorter than its {layout.number_of_frames} frames", UNDECODABLE)
        unit = _swap_unit(layout)
        if unit == 1:
            return _read(stream, layout, layout.value_offset + begin, size)
        # big endian words may straddle frames (8-bit OW): swap whole words, then cut
        start = begin - begin % unit
        stop = min(-(-(begin + size) // unit) * unit, layout.value_length)
        data = swap_bytes(_read(stream, layout, layout.value_offset + start, stop - start), unit)
        return data[begin - start: begin - start + size]
    # 1-bit frames need not start on a byte: cut the bits out and pack them from bit 0
    first, end = index * bits, (index + 1) * bits
    if _swap_unit(layout) > 1:
        whole = swap_bytes(_read(stream, layout, layout.value_offset, layout.value_length), _swap_unit(layout))
        data, start_byte = whole[first // 8: (end + 7) // 8], first // 8
    else:
        start_byte = first // 8
        data = _read(stream, layout, layout.value_offset + start_byte, (end + 7) // 8 - start_byte)
    bit_array = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    shift = first - start_byte * 8
    return np.packbits(bit_array[shift: shift + bits], bitorder="little").tobytes()


def _swap_unit(layout: PixelLayout) -> int:
    """Bytes per value to reverse when turning big endian native pixel data little endian (1: nothing to do)."""
    if layout.transfer_syntax != EXPLICIT_BE or layout.value_vr != "OW":
        return 1
    return layout.bits_allocated // 8 if layout.bits_allocated in (16, 32, 64) else 2


def swap_bytes(data: bytes, size: int) -> bytes:
    """Reverse the byte order of each ``size``-byte value (an odd tail is left as it is)."""
    if size < 2:
        return data
    whole = len(data) - len(data) % size
    swapped = np.frombuffer(data[:whole], dtype=np.uint8).reshape(-1, size)[:, ::-1].tobytes()
    return swapped + data[whole:]


# --- decoding --------------------------------------------------------------------------------------------


def can_decode(transfer_syntax: str) -> bool:
    """pydicom (with the pylibjpeg plugins) can decode pixel data of this syntax."""
    if transfer_syntax in NATIVE:
        return True
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def frame_array(layout: PixelLayout, data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one frame (as :func:`stored_frame` returns it) to an array; YCbCr comes back as RGB."""
    options = as_pixel_options(layout.header, number_of_frames=1)
    options.pop("extended_offsets", None)
    if layout.encapsulated:
        if not can_decode(layout.transfer_syntax):
            raise FrameError(f"Mosaic cannot decode pixel data stored as {layout.transfer_syntax}", 406)
        decoder, source = get_decoder(layout.transfer_syntax), encapsulate([data])
    else:
        decoder, source = get_decoder(EXPLICIT_LE), data
        options["pixel_keyword"] = "PixelData"
    try:
        array, properties = decoder.as_array(source, **options)
    except Exception as exc:  # decoders raise many kinds on data they cannot handle
        raise FrameError(f"the pixel data cannot be decoded ({type(exc).__name__}: {exc})", UNDECODABLE) from exc
    return array, dict(properties)


def raw_frame(layout: PixelLayout, data: bytes) -> bytes:
    """Frame bytes as uncompressed little-endian pixel data (Explicit VR Little Endian), decoding if needed."""
    if not layout.encapsulated:
        return data
    array, _properties = frame_array(layout, data)
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).tobytes()
