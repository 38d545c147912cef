"""The media type a file's first bytes say (magic numbers): the content decides, never the name or a claim."""

from __future__ import annotations

_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}

LABELS = {
    "image/jpeg": "JPEG image", "image/png": "PNG image", "image/tiff": "TIFF image", "image/heic": "HEIC image",
    "image/webp": "WebP image", "image/gif": "GIF image", "image/avif": "AVIF image", "video/mp4": "MP4 video",
    "video/quicktime": "QuickTime (MOV) video", "application/pdf": "PDF document",
}
"""How a message names each type."""

ALIASES = {
    "image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png", "image/tif": "image/tiff",
    "image/x-tiff": "image/tiff", "image/heif": "image/heic", "image/heic-sequence": "image/heic",
    "image/heif-sequence": "image/heic", "application/x-pdf": "application/pdf", "video/x-m4v": "video/mp4",
    "video/m4v": "video/mp4", "video/mov": "video/quicktime",
}
"""Spellings browsers and phones use for the same type."""


def sniff(head: bytes) -> str | None:
    """The media type the first bytes say (magic numbers), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image/tiff"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[4:8] == b"ftyp":
        return _iso_bmff(head)
    if head[4:8] in _QUICKTIME_ATOMS:
        return "video/quicktime"  # old QuickTime files have no 'ftyp'
    return None


def _iso_bmff(head: bytes) -> str | None:
    """An ISO base media file: its major and compatible brands tell a still (HEIF) from a movie."""
    size = int.from_bytes(head[0:4], "big")
    major = head[8:12]
    compatible = {head[offset:offset + 4] for offset in range(16, min(size, len(head)) - 3, 4)}
    brands = {major} | compatible
    if major == b"qt  ":
        return "video/quicktime"
    if brands & _HEIF_BRANDS:
        return "image/heic"
    if brands & {b"avif", b"avis"}:
        return "image/avif"
    if major in (b"mif1", b"msf1"):
        return None  # a HEIF container of another codec
    return "video/mp4"


def normalise(media_type: str | None) -> str | None:
    """A claimed Content-Type without parameters, its alias resolved; None for "no claim"."""
    if not media_type:
        return None
    bare = media_type.split(";", 1)[0].strip().lower()
    if bare in ("", "application/octet-stream", "binary/octet-stream"):
        return None
    return ALIASES.get(bare, bare)


def label(media_type: str) -> str:
    return LABELS.get(media_type, media_type)
