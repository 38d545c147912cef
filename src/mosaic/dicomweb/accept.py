"""Content negotiation for WADO-RS and WADO-URI: Accept parsing and the Selected Transfer Syntax (PS3.18 8.7).

The rule Mosaic follows for DICOM instances (``application/dicom``), per PS3.18 8.7.3 and 8.7.8.2:

* ``transfer-syntax=*``, or the stored Transfer Syntax named: the stored Part 10 file, byte for byte.
* ``transfer-syntax=1.2.840.10008.1.2.1``: Explicit VR Little Endian, transcoded when stored otherwise
  (decompressed with pydicom's plugins when compressed).
* no transfer-syntax parameter: the default, Explicit VR Little Endian, *unless* the object is stored in a
  lossy compressed syntax (PS3.18 8.7.3: the origin server "has only access to the pixel data in lossy
  compressed form"), which is sent as stored. So a lossless or uncompressed object arrives uncompressed
  Explicit VR Little Endian (as stored when it was stored so), a lossy one as stored.
* any other syntax: 406 (Mosaic decompresses, it does not compress).

Pixel data (frames, bulk data of Pixel Data) uses the media types of PS3.18 Tables 8.7.3-4 and 8.7.3-5: a
compressed frame is sent as stored in its own media type (``image/jpeg``, ``image/jls``, ``image/jp2``…) when
that type, ``*/*``, or ``application/octet-stream`` with ``transfer-syntax=*`` (how OHIF asks) is acceptable;
``application/octet-stream`` without ``transfer-syntax=*`` gets it decompressed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mosaic.dicomweb.multipart import media_type_parameters

_WILDCARDS = ("*/*", "*")


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: a media type (for multipart, its ``type``) and its transfer syntax."""

    media_type: str
    """The type of one part (or of the single-part body): ``application/dicom``, ``image/jpeg``, ``*/*``…"""
    multipart: bool
    """Asked as ``multipart/related; type=…``; a single-part body otherwise (``*/*``: either)."""
    transfer_syntax: str | None
    """The ``transfer-syntax`` parameter: a UID, ``*``, or None when absent."""
    q: float = 1.0

    def type_matches(self, media_type: str) -> bool:
        if self.media_type in _WILDCARDS:
            return True
        main, _, sub = self.media_type.partition("/")
        return (sub == "*" and media_type.startswith(main + "/")) or self.media_type == media_type


class NotAcceptable(Exception):
    """No representation the client accepts can be served (406)."""


class BadAccept(ValueError):
    """The Accept value cannot be parsed (400)."""


_SPLIT = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')


def parse_accept(value: str | None, default_part_type: str) -> list[MediaRange]:
    """The Accept header (or ``accept`` query parameter) as media ranges, best first (by q, then order).

    A missing or empty value accepts anything; ``multipart/related`` without ``type`` means
    ``default_part_type``. Entries with ``q=0`` are dropped.
    """
    if value is None or not value.strip():
        return [MediaRange("*/*", True, None)]
    ranges: list[tuple[float, int, MediaRange]] = []
    for position, entry in enumerate(_SPLIT.split(value)):
        if not entry.strip():
            continue
        main, parameters = media_type_parameters(entry)
        if "/" not in main and main != "*":
            raise BadAccept(f"{entry.strip()!r} in Accept is not a media type")
        try:
            q = float(parameters.get("q", "1"))
        except ValueError as exc:
            raise BadAccept(f"bad q value in Accept entry {entry.strip()!r}") from exc
        if q <= 0:
            continue
        syntax = parameters.get("transfer-syntax")
        syntax = syntax.strip() if syntax is not None else None
        if main == "multipart/related":
            part = parameters.get("type", default_part_type).strip().lower() or default_part_type
            item = MediaRange(part, True, syntax or None, q)
        elif main in ("multipart/*",):
            item = MediaRange(parameters.get("type", "*/*").strip().lower(), True, syntax or None, q)
        else:
            item = MediaRange(main, main in _WILDCARDS, syntax or None, q)
        ranges.append((q, position, item))
    ranges.sort(key=lambda entry: (-entry[0], entry[1]))
    return [item for _, _, item in ranges]


def describe(ranges: list[MediaRange]) -> str:
    """The accepted representations, for a 406 message."""
    texts = []
    for item in ranges:
        text = f"multipart/related; type={item.media_type}" if item.multipart else item.media_type
        if item.transfer_syntax:
            text += f"; transfer-syntax={item.transfer_syntax}"
        texts.append(text)
    return ", ".join(texts) or "nothing"
