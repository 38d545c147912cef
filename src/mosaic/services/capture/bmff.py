"""The box structure of an MP4 / QuickTime file (ISO/IEC 14496-12), read without loading the media data: whether
the file is whole (every box inside the file, a 'moov', every sample's bytes inside the file), the video sample
entry's codec configuration (profile, level), and where location metadata sits."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts", b"dinf", b"ilst", b"meta"}
LOCATION_KEY_PREFIX = b"com.apple.quicktime.location"
MOOV_LIMIT = 256 << 20


class Truncated(ValueError):
    """The file is not whole."""


@dataclass
class Box:
    kind: bytes
    start: int
    header: int
    size: int

    @property
    def body(self) -> int:
        return self.start + self.header

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass
class Movie:
    file_size: int
    codec: bytes = b""
    """The video sample entry's format: avc1/avc3, hvc1/hev1, …"""
    profile: int = 0
    level: int = 0
    constraints: int = 0
    """AVC: the constraint_set flags byte."""
    location: list[tuple[int, int]] = field(default_factory=list)
    """(file offset, length) of location values (udta ©xyz and 3GPP 'loci', the ISO 6709 keys of 'meta')."""


def _boxes(data: bytes, start: int, end: int, base: int) -> Iterator[Box]:
    """The boxes in ``data[start:end]`` (``base``: the file offset of ``data[0]``)."""
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1:
            if position + 16 > end:
                raise Truncated(f"the '{kind.decode('latin-1')}' box is cut short")
            size = struct.unpack_from(">Q", data, position + 8)[0]
            header = 16
        elif size == 0:
            size = end - position
        if size < header or position + size > end:
            raise Truncated(f"the '{kind.decode('latin-1')}' box declares {size} bytes, more than its parent holds")
        yield Box(kind, base + position, header, size)
        position += size


def top_level(stream: BinaryIO, file_size: int) -> list[Box]:
    """The file's top-level boxes, by reading their headers only."""
    boxes: list[Box] = []
    position = 0
    while position < file_size:
        stream.seek(position)
        head = stream.read(16)
        if len(head) < 8:
            raise Truncated(f"{file_size - position} stray bytes at the end")
        size, kind = struct.unpack_from(">I4s", head, 0)
        header = 8
        if size == 1:
            if len(head) < 16:
                raise Truncated("the last box is cut short")
            size, header = struct.unpack_from(">Q", head, 8)[0], 16
        elif size == 0:
            size = file_size - position
        name = kind.decode("latin-1")
        if size < header:
            raise Truncated(f"the '{name}' box at byte {position} is damaged")
        if position + size > file_size:
            raise Truncated(f"the '{name}' box declares {position + size} bytes but the file ends after {file_size}")
        boxes.append(Box(kind, position, header, size))
        position += size
    return boxes


def read(path: Path) -> Movie:
    """Check the file is whole and read what the object needs from its 'moov' (the only box read whole)."""
    file_size = path.stat().st_size
    with path.open("rb") as stream:
        boxes = top_level(stream, file_size)
        kinds = {box.kind for box in boxes}
        moov = next((box for box in boxes if box.kind == b"moov"), None)
        if moov is None:
            raise Truncated("it has no 'moov' box (the movie's index, which is written last)")
        if b"mdat" not in kinds and b"moof" not in kinds:
            raise Truncated("it has no media data ('mdat')")
        if moov.size > MOOV_LIMIT:
            raise Truncated(f"its 'moov' box of {moov.size} bytes is implausibly large")
        stream.seek(moov.start)
        data = stream.read(moov.size)
    movie = Movie(file_size)
    _walk(data, moov.header, len(data), moov.start, movie, keys={})
    return movie


def _walk(data: bytes, start: int, end: int, base: int, movie: Movie, keys: dict[int, bytes]) -> None:
    for box in _boxes(data, start, end, base):
        local = box.start - base
        body = local + box.header
        if box.kind == b"meta":
            # ISO meta is a FullBox (4 bytes version/flags); QuickTime's is not
            full = data[body:body + 4] == b"\0\0\0\0" and data[body + 8:body + 12] in (b"hdlr", b"keys", b"ilst")
            _walk(data, body + (4 if full else 0), local + box.size, base, movie, keys)
        elif box.kind == b"keys":
            keys.update(_keys(data, body, local + box.size))
        elif box.kind == b"ilst":
            _ilst(data, body, local + box.size, base, movie, keys)
        elif box.kind == b"\xa9xyz" and box.size > box.header + 4:
            movie.location.append((box.body + 4, box.size - box.header - 4))  # 16-bit size, 16-bit language
        elif box.kind == b"loci" and box.size > box.header + 6:
            movie.location.append((box.body + 6, box.size - box.header - 6))  # 3GPP: version/flags, language
        elif box.kind == b"trak":
            _track(data, body, local + box.size, base, movie)
        elif box.kind in CONTAINERS:
            _walk(data, body, local + box.size, base, movie, keys)


def _keys(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    position = start + 8  # version/flags, entry count
    index = 1
    while position + 8 <= end:
        size = struct.unpack_from(">I", data, position)[0]
        if size < 8:
            break
        found[index] = data[position + 8:position + size]
        index += 1
        position += size
    return found


def _ilst(data: bytes, start: int, end: int, base: int, movie: Movie, keys: dict[int, bytes]) -> None:
    for item in _boxes(data, start, end, base):
        index = int.from_bytes(item.kind, "big")
        if not keys.get(index, b"").startswith(LOCATION_KEY_PREFIX):
            continue
        local = item.start - base
        for value in _boxes(data, local + item.header, local + item.size, base):
            if value.kind == b"data" and value.size > value.header + 8:
                movie.location.append((value.body + 8, value.size - value.header - 8))  # type, locale


def _track(data: bytes, start: int, end: int, base: int, movie: Movie) -> None:
    """A track: its sample table must point inside the file; the first video track gives the codec."""
    stbl = _find(data, start, end, base, [b"mdia", b"minf", b"stbl"])
    handler = _find(data, start, end, base, [b"mdia", b"hdlr"])
    if handler is not None:
        local = handler.start - base + handler.header
        is_video = data[local + 8:local + 12] == b"vide"
    else:
        is_video = False
    if stbl is None:
        return
    tables = {box.kind: box for box in _boxes(data, stbl.start - base + stbl.header, stbl.end - base, base)}
    _check_samples(data, tables, base, movie.file_size)
    if is_video and not movie.codec and b"stsd" in tables:
        _sample_entry(data, tables[b"stsd"], base, movie)
    udta = _find(data, start, end, base, [b"udta"])
    if udta is not None:
        _walk(data, udta.start - base, udta.end - base, base, movie, keys={})


def _find(data: bytes, start: int, end: int, base: int, path: list[bytes]) -> Box | None:
    for box in _boxes(data, start, end, base):
        if box.kind == path[0]:
            if len(path) == 1:
                return box
            return _find(data, box.start - base + box.header, box.end - base, base, path[1:])
    return None


def _check_samples(data: bytes, tables: dict[bytes, Box], base: int, file_size: int) -> None:
    """Every chunk's samples end inside the file (a file cut inside 'mdat' fails here when its 'moov' came
    first)."""
    stsz, stsc = tables.get(b"stsz"), tables.get(b"stsc")
    offsets_box = tables.get(b"stco") or tables.get(b"co64")
    if stsz is None or stsc is None or offsets_box is None:
        return
    wide = offsets_box.kind == b"co64"
    at = offsets_box.body - base
    count = struct.unpack_from(">I", data, at + 4)[0]
    if at + 8 + count * (8 if wide else 4) > offsets_box.end - base:
        raise Truncated("its chunk offset table is cut short")
    offsets = struct.unpack_from(f">{count}{'Q' if wide else 'I'}", data, at + 8)
    at = stsz.body - base
    uniform, samples = struct.unpack_from(">II", data, at + 4)
    if not uniform and at + 12 + 4 * samples > stsz.end - base:
        raise Truncated("its sample size table is cut short")
    sizes = struct.unpack_from(f">{samples}I", data, at + 12) if not uniform else None
    at = stsc.body - base
    entries = struct.unpack_from(">I", data, at + 4)[0]
    if at + 8 + 12 * entries > stsc.end - base:
        raise Truncated("its sample-to-chunk table is cut short")
    runs = [struct.unpack_from(">III", data, at + 8 + 12 * i)[:2] for i in range(entries)]
    sample = 0
    previous = 0
    for first_chunk, _per_chunk in runs:
        # ISO/IEC 14496-12 8.7.4: first chunks rise; otherwise a crafted table re-walks every chunk per entry
        if first_chunk <= previous or first_chunk > count:
            raise Truncated("its sample-to-chunk table is malformed (its first chunks do not rise within the "
                            "chunk offset table)")
        previous = first_chunk
    for index, (first_chunk, per_chunk) in enumerate(runs):
        if sample >= samples:
            break
        last_chunk = runs[index + 1][0] - 1 if index + 1 < len(runs) else count
        for chunk in range(first_chunk, last_chunk + 1):
            if chunk < 1 or chunk > count:
                break
            length = uniform * per_chunk if sizes is None else sum(sizes[sample:sample + per_chunk])
            sample += per_chunk
            if offsets[chunk - 1] + length > file_size:
                raise Truncated(f"its samples run to byte {offsets[chunk - 1] + length} but the file ends after "
                                f"{file_size} (cut inside 'mdat')")


def _sample_entry(data: bytes, stsd: Box, base: int, movie: Movie) -> None:
    at = stsd.body - base + 8  # version/flags, entry count
    if at + 8 > stsd.end - base:
        return
    size, kind = struct.unpack_from(">I4s", data, at)
    movie.codec = kind
    # VisualSampleEntry: 8 header, 6 reserved, 2 data reference index, 70 bytes of visual fields
    for config in _boxes(data, at + 8 + 78, min(at + size, stsd.end - base), base):
        body = config.start - base + config.header
        if config.kind == b"avcC" and config.size >= config.header + 4:
            movie.profile, movie.constraints, movie.level = data[body + 1], data[body + 2], data[body + 3]
        elif config.kind == b"hvcC" and config.size >= config.header + 13:
            movie.profile, movie.level = data[body + 1] & 0x1F, data[body + 12]


def blank(path: Path, ranges: list[tuple[int, int]]) -> None:
    """Overwrite values in place with zeros (no box changes size: every offset stays valid)."""
    with path.open("r+b") as stream:
        for offset, length in ranges:
            stream.seek(offset)
            stream.write(bytes(length))
