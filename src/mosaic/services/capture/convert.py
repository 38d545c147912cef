"""One file in, one DICOM object out: the content's type is sniffed (a claim it contradicts is refused), then the
photo, video or document converter builds the object and the Part 10 writer puts it in the caller's workdir."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mosaic.services.capture import bmff, document, part10, photo, video
from mosaic.services.capture.context import CaptureContext, Captured, CaptureError
from mosaic.services.capture.modules import instance_uid, set_character_set
from mosaic.services.capture.sniff import label, normalise, sniff

STILLS = {"image/png", "image/tiff", "image/heic", "image/webp", "image/gif"}
VIDEOS = {"video/mp4", "video/quicktime"}
CAPTURE_TYPES = frozenset({"image/jpeg", "application/pdf", *STILLS, *VIDEOS})
"""Every media type :func:`capture` takes."""
_HEAD = 4096
_BUFFER = 1 << 20


def _sha256(source: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as stream:
        while chunk := stream.read(_BUFFER):
            digest.update(chunk)
    return digest.hexdigest()


def _shown(head: bytes) -> str:
    """The first bytes as a person reads them ("%PDF", "\\x89PNG")."""
    text = head[:4].decode("latin-1")
    return "".join(c if c.isprintable() and c.isascii() else f"\\x{ord(c):02x}" for c in text) or "nothing"


def media_type_of(source: Path, filename: str, claimed_type: str | None) -> str:
    """The content's type; CaptureError when it is unknown or contradicts the claim."""
    with source.open("rb") as stream:
        head = stream.read(_HEAD)
    if not head:
        raise CaptureError(filename, "is empty")
    sniffed = sniff(head)
    claimed = normalise(claimed_type)
    if claimed is not None and claimed != sniffed:
        what = f", a {label(sniffed)}" if sniffed else ""
        raise CaptureError(filename, f"not a {label(claimed)} (it starts with {_shown(head)}{what})")
    if sniffed is None:
        raise CaptureError(filename, f"not a photo, video or PDF this archive captures (it starts with "
                                     f"{_shown(head)})")
    if sniffed == "image/avif":
        raise CaptureError(filename, "an AVIF image, which this archive cannot decode yet; send JPEG, PNG or HEIC")
    return sniffed


def capture(source: Path, context: CaptureContext, *, filename: str, claimed_type: str | None = None,
            workdir: Path) -> Captured:
    """Convert one file into one DICOM object written to a new file in ``workdir``. The type is the content's
    (sniffed), not the claimed one: a claimed type that the content contradicts is a CaptureError naming both."""
    media_type = media_type_of(source, filename, claimed_type)
    original_sha256 = _sha256(source)
    uid = context.SOPInstanceUID or instance_uid(original_sha256, context.StudyInstanceUID)
    target = workdir / f"{uid}.dcm"
    if media_type == "application/pdf":
        title = document.check(source, filename)
        dataset = document.dataset(source, context, uid, filename, title)
        set_character_set(dataset)
        part10.write_streamed_ob(target, dataset, part10.EXPLICIT_VR_LITTLE_ENDIAN, document.ENCAPSULATED_DOCUMENT,
                                 source)
        return Captured(target, document.ENCAPSULATED_PDF, uid, "document", media_type, original_sha256)
    if media_type in VIDEOS:
        scratch = workdir / f"{uid}.rewrap.mp4"
        try:
            prepared = video.prepare(source, media_type, context, uid, filename, scratch)
            set_character_set(prepared.dataset)
            start = part10.write_encapsulated(target, prepared.dataset, prepared.transfer_syntax, prepared.stream)
            if prepared.location:
                bmff.blank(target, [(start + offset, length) for offset, length in prepared.location])
        finally:
            scratch.unlink(missing_ok=True)
        return Captured(target, prepared.dataset.SOPClassUID, uid, "video", media_type, original_sha256)
    data = source.read_bytes()
    if media_type == "image/jpeg":
        made = photo.from_jpeg(data, context, uid, filename)
    else:
        made = photo.from_still(data, media_type, context, uid, filename)
    set_character_set(made.dataset)
    part10.write(target, made.dataset, made.transfer_syntax)
    return Captured(target, photo.VL_PHOTOGRAPHIC, uid, "photo", media_type, original_sha256)
