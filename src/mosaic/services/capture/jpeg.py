"""A JPEG's marker segments (ISO/IEC 10918-1 Annex B), read and rewritten without touching the entropy-coded data:
location metadata dropped, EXIF orientation and progressive coding resolved losslessly by ``jpegtran``."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mosaic.services.capture import exif

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
APP1, APP13, APP14 = 0xE1, 0xED, 0xEE
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
XMP = b"http://ns.adobe.com/xap/1.0/\0"
XMP_EXTENSION = b"http://ns.adobe.com/xmp/extension/\0"
EXIF = b"Exif\0\0"
TRANSFORMS = {2: ["-flip", "horizontal"], 3: ["-rotate", "180"], 4: ["-flip", "vertical"], 5: ["-transpose"],
              6: ["-rotate", "90"], 7: ["-transverse"], 8: ["-rotate", "270"]}
"""jpegtran's operation for each EXIF orientation (TIFF 6.0 / EXIF 2.3 tag 0x0112)."""


class JPEGError(ValueError):
    """What is wrong with the JPEG (the converter names the file)."""


@dataclass(frozen=True)
class Segment:
    marker: int
    start: int
    end: int
    """``data[start:end]`` is the whole segment, marker included."""


@dataclass(frozen=True)
class Frame:
    """The SOF header: the coding process and the image's geometry."""

    process: int
    """The SOF marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, 0xC3 lossless, others hierarchical or
    arithmetic."""
    precision: int
    rows: int
    columns: int
    components: tuple[tuple[int, int, int], ...]
    """(component id, horizontal sampling, vertical sampling)."""


@dataclass(frozen=True)
class Structure:
    segments: tuple[Segment, ...]
    """Every marker segment before the first scan (SOS included)."""
    frame: Frame
    end: int
    """Offset just after the EOI marker: bytes after it are not part of the image (e.g. a phone's extra pictures)."""
    adobe_transform: int | None


def parse(data: bytes) -> Structure:
    if not data.startswith(b"\xff\xd8"):
        raise JPEGError("no SOI marker")
    segments: list[Segment] = []
    frame: Frame | None = None
    adobe: int | None = None
    position = 2
    while True:
        marker, position = _marker(data, position)
        if marker in _STANDALONE:
            continue
        if position + 2 > len(data):
            raise JPEGError("is truncated: it ends inside its headers")
        length = int.from_bytes(data[position:position + 2], "big")
        end = position + length
        if length < 2 or end > len(data):
            raise JPEGError("is truncated: it ends inside its headers")
        segments.append(Segment(marker, position - 2, end))
        body = data[position + 2:end]
        if marker in _SOF and frame is None:
            frame = _frame(marker, body)
        elif marker == APP14 and body.startswith(b"Adobe") and len(body) >= 12:
            adobe = body[11]
        if marker == SOS:
            break
        position = end
    if frame is None:
        raise JPEGError("has no frame header (SOF)")
    return Structure(tuple(segments), frame, _scan_to_eoi(data, segments[-1].end), adobe)


def _marker(data: bytes, position: int) -> tuple[int, int]:
    if position >= len(data) or data[position] != 0xFF:
        raise JPEGError("is damaged: a marker was expected")
    while position < len(data) and data[position] == 0xFF:
        position += 1  # fill bytes
    if position >= len(data):
        raise JPEGError("is truncated")
    return data[position], position + 1


def _frame(marker: int, body: bytes) -> Frame:
    if len(body) < 6:
        raise JPEGError("has a damaged frame header")
    precision, rows, columns, count = struct.unpack_from(">BHHB", body, 0)
    if len(body) < 6 + 3 * count:
        raise JPEGError("has a damaged frame header")
    components = tuple((body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(count))
    if rows == 0:
        raise JPEGError("gives its height in a DNL marker, which DICOM does not allow")
    return Frame(marker, precision, rows, columns, components)


def _scan_to_eoi(data: bytes, position: int) -> int:
    """After the first scan header, skip entropy-coded data (0xFF is stuffed as FF 00 there, RSTn are standalone)
    and the segments between scans (progressive DHT, SOS) to the EOI."""
    length = len(data)
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= length:
            raise JPEGError("is truncated: the image data ends without an EOI marker")
        following = data[position + 1]
        if following == 0x00 or following == 0xFF or 0xD0 <= following <= 0xD7:
            position += 1 if following == 0xFF else 2
            continue
        if following == EOI:
            return position + 2
        if position + 4 > length:
            raise JPEGError("is truncated: the image data ends without an EOI marker")
        position += 2 + int.from_bytes(data[position + 2:position + 4], "big")


def remove_location(data: bytes, structure: Structure) -> tuple[bytes, list[str]]:
    """The JPEG without what can hold a location: the EXIF GPS IFD (removed in place), XMP packets (APP1) and
    IPTC / Photoshop resources (APP13), and what follows the EOI. APP0 JFIF, APP2 ICC, APP14 Adobe, the tables and
    the entropy-coded data are kept byte for byte. Answers the bytes and what was removed (empty: unchanged)."""
    removed: list[str] = []
    out = bytearray(data[:2])
    cursor = 2
    for segment in structure.segments:
        out += data[cursor:segment.start]  # fill bytes, standalone markers
        cursor = segment.end
        body_start = segment.start + 4
        body = data[body_start:segment.end]
        if segment.marker == APP1 and (body.startswith(XMP) or body.startswith(XMP_EXTENSION)):
            removed.append("XMP")
            continue
        if segment.marker == APP13:
            removed.append("IPTC/Photoshop (APP13)")
            continue
        if segment.marker == APP1 and body.startswith(EXIF):
            patched = bytearray(data[segment.start:segment.end])
            try:
                if exif.remove_gps(patched, 4 + len(EXIF), len(patched)):
                    removed.append("EXIF GPS")
            except ValueError:
                removed.append("EXIF (damaged, so dropped whole)")
                continue
            out += patched
            continue
        out += data[segment.start:segment.end]
    out += data[cursor:structure.end]
    if structure.end < len(data) and data[structure.end:].strip(b"\0"):
        removed.append(f"{len(data) - structure.end} bytes after the image's end")
    if not removed:
        return data, []
    return bytes(out), removed


def jpegtran(data: bytes, arguments: list[str]) -> bytes:
    """Run jpegtran (libjpeg-turbo) on ``data``; JPEGError with its message when it refuses."""
    program = shutil.which("jpegtran")
    if program is None:
        raise FileNotFoundError("jpegtran is not installed (Debian: apt-get install libjpeg-turbo-progs)")
    with tempfile.TemporaryDirectory(prefix="mosaic-jpegtran-") as scratch:
        source, target = Path(scratch, "in.jpg"), Path(scratch, "out.jpg")
        source.write_bytes(data)
        try:  # -maxmemory bounds jpegtran's own buffers (a progressive image's coefficients go to temp files)
            result = subprocess.run([program, "-maxmemory", "256M", *arguments, "-outfile", str(target),
                                     str(source)], capture_output=True, timeout=300, check=False)
        except subprocess.TimeoutExpired as exc:
            raise JPEGError("jpegtran took longer than 300 s") from exc
        if result.returncode != 0 or not target.exists():
            raise JPEGError(result.stderr.decode("utf-8", "replace").strip() or "jpegtran failed")
        return target.read_bytes()
