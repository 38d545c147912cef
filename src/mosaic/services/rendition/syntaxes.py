"""Transfer syntaxes as egress sees them: native or encapsulated, possibly lossy, and the media type of a
compressed frame (PS3.18 Table 8.7.3-5)."""

from __future__ import annotations

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
NATIVE = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE})
"""Uncompressed (native) transfer syntaxes: pixel data is not encapsulated."""

VIDEO = frozenset({
    *(f"1.2.840.10008.1.2.4.{number}" for number in range(100, 109)),  # MPEG-2, MPEG-4 AVC/H.264, HEVC/H.265
    "1.2.840.10008.1.2.4.102.1", "1.2.840.10008.1.2.4.103.1", "1.2.840.10008.1.2.4.104.1",  # their fragmentable
    "1.2.840.10008.1.2.4.105.1", "1.2.840.10008.1.2.4.106.1",
})
"""Video syntaxes: the pixel data is one coded stream (its frames are not fragments of their own, PS3.5 8.2.5 to
8.2.8)."""

LOSSY = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203",
    *(f"1.2.840.10008.1.2.4.{number}" for number in range(100, 109)),  # MPEG-2, MPEG-4, HEVC video
})
"""Syntaxes whose pixel data may be lossy: by default such an object is sent as stored (PS3.18 8.7.3)."""

_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
FRAME_MEDIA_TYPES: dict[str, str] = {
    **dict.fromkeys(_JPEG, "image/jpeg"),
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    **{f"1.2.840.10008.1.2.4.{number}": "video/mp4" for number in range(102, 107)},
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
"""PS3.18 Table 8.7.3-5: the media type of a compressed frame, by the transfer syntax it is stored in."""


def is_native(transfer_syntax: str) -> bool:
    return transfer_syntax in NATIVE


def syntax_name(transfer_syntax: str) -> str:
    from pydicom.uid import UID

    name = UID(transfer_syntax).name
    return f"{name} ({transfer_syntax})" if name and name != transfer_syntax else transfer_syntax
