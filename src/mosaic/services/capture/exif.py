"""EXIF: what a capture takes from it (device, time, orientation) and the GPS IFD removed in place.

The GPS IFD is removed without moving any other byte: its entry leaves IFD0 (the entries after it shift up by 12
bytes inside the same table), its table and out-of-line values are zeroed. So a JPEG's APP1 keeps its size and
every other offset (the Exif IFD, the maker note, the thumbnail) stays valid; the same works on a whole TIFF file.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from PIL import Image

GPS_IFD = 0x8825
EXIF_IFD = 0x8769
ORIENTATION = 0x0112
MAKE = 0x010F
MODEL = 0x0110
DATETIME_ORIGINAL = 0x9003
OFFSET_TIME_ORIGINAL = 0x9011
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


@dataclass(frozen=True)
class Exif:
    """What the camera recorded that the object uses."""

    orientation: int = 1
    make: str = ""
    model: str = ""
    taken: datetime | None = None


def read(exif: Image.Exif) -> Exif:
    sub = exif.get_ifd(EXIF_IFD)
    orientation = exif.get(ORIENTATION, 1)
    return Exif(orientation=orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1,
                make=_text(exif.get(MAKE)), model=_text(exif.get(MODEL)),
                taken=_taken(_text(sub.get(DATETIME_ORIGINAL)), _text(sub.get(OFFSET_TIME_ORIGINAL))))


def read_image(data: bytes) -> Exif:
    """The EXIF of a JPEG (Pillow reads the headers without decoding the image)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return read(image.getexif())
    except Exception:  # unreadable EXIF is no reason to refuse a photo
        return Exif()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip("\0 ").strip() if value is not None else ""


def _taken(stamp: str, offset: str) -> datetime | None:
    try:
        taken = datetime.strptime(stamp[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    if len(offset) == 6 and offset[0] in "+-" and offset[3] == ":":
        try:
            minutes = int(offset[1:3]) * 60 + int(offset[4:6])
        except ValueError:
            return taken
        return taken.replace(tzinfo=timezone(timedelta(minutes=minutes if offset[0] == "+" else -minutes)))
    return taken


def remove_gps(buffer: bytearray, base: int, end: int) -> bool:
    """Remove the GPS IFD from the TIFF structure in ``buffer[base:end]`` in place; True when there was one.
    Raises ValueError when the structure is damaged (the caller then drops the whole EXIF)."""
    order = bytes(buffer[base:base + 2])
    if order not in (b"II", b"MM") or end - base < 8:
        raise ValueError("not a TIFF header")
    endian = "<" if order == b"II" else ">"

    def u16(at: int) -> int:
        if not base <= at <= end - 2:
            raise ValueError("offset outside the EXIF data")
        return int(struct.unpack_from(endian + "H", buffer, at)[0])

    def u32(at: int) -> int:
        if not base <= at <= end - 4:
            raise ValueError("offset outside the EXIF data")
        return int(struct.unpack_from(endian + "I", buffer, at)[0])

    if u16(base + 2) != 42:
        return False  # BigTIFF and others: not handled here, caller decides
    ifd = base + u32(base + 4)
    count = u16(ifd)
    table_end = ifd + 2 + 12 * count + 4
    if table_end > end:
        raise ValueError("IFD0 runs past the EXIF data")
    for index in range(count):
        entry = ifd + 2 + 12 * index
        if u16(entry) != GPS_IFD:
            continue
        _zero_ifd(buffer, base, base + u32(entry + 8), end, u16, u32)
        buffer[entry:table_end - 12] = buffer[entry + 12:table_end]
        buffer[table_end - 12:table_end] = bytes(12)
        struct.pack_into(endian + "H", buffer, ifd, count - 1)
        return True
    return False


def _zero_ifd(buffer: bytearray, base: int, ifd: int, end: int, read16: Callable[[int], int],
              read32: Callable[[int], int]) -> None:
    count = read16(ifd)
    table_end = ifd + 2 + 12 * count + 4
    if table_end > end:
        raise ValueError("the GPS IFD runs past the EXIF data")
    for index in range(count):
        entry = ifd + 2 + 12 * index
        size = _TYPE_SIZES.get(read16(entry + 2), 1) * read32(entry + 4)
        if size > 4:
            value = base + read32(entry + 8)
            if value + size > end:
                raise ValueError("a GPS value runs past the EXIF data")
            buffer[value:value + size] = bytes(size)
    buffer[ifd:table_end] = bytes(table_end - ifd)
