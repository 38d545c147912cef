"""The content of a stored object as a person opens it, read from the stored file by offset: a photo's JPEG (the
bytes that came, encapsulated), the original file a converted photo keeps, a video's stream, a PDF document.

Nothing is decoded or re-encoded: each is a list of byte ranges of the stored file (a video's fragments, a
document's value), so a browser gets it with range requests (a ``<video>`` element seeks by them) and a 500 MB
video is never held in memory. Found only within the caller's scope, through :class:`RetrieveService`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
from pydicom.dataelem import RawDataElement

from mosaic.index.query import Scope
from mosaic.services.rendition.frames import read_layout
from mosaic.services.retrieve import RetrieveService, StoredInstance

ENCAPSULATED_DOCUMENT = 0x00420011
MIME_TYPE_OF_ENCAPSULATED_DOCUMENT = 0x00420012
ENCAPSULATED_DOCUMENT_LENGTH = 0x00420015
ORIGINAL_CREATOR = "MOSAIC CAPTURE"
"""The private block (group 0071) where a converted photo keeps the file that came: (0071,xx10) its bytes,
(0071,xx11) its media type, (0071,xx12) its file name, (0071,xx13) its length."""
ORIGINAL_GROUP = 0x0071
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"

STREAM_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    **{f"1.2.840.10008.1.2.4.{number}": "video/mp4" for number in (102, 103, 104, 105, 106, 107, 108)},
    "1.2.840.10008.1.2.4.100": "video/mpeg", "1.2.840.10008.1.2.4.101": "video/mpeg",
}
"""Transfer syntaxes whose encapsulated pixel data is a file a browser opens as it is."""
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Content:
    instance: StoredInstance
    media_type: str
    pieces: tuple[tuple[int, int], ...]
    """(offset, length) in the stored file, in order: together they are the content."""
    filename: str = ""

    @property
    def length(self) -> int:
        return sum(length for _offset, length in self.pieces)


class ContentService:
    def __init__(self, retrieve: RetrieveService) -> None:
        self.retrieve = retrieve

    def locate(self, study: str, series: str, sop: str, *, scope: Scope, original: bool = False) -> Content | None:
        """The content of one instance of a study in ``scope``: its document, or its stream, or (``original``) the
        file a converted photo keeps (a JPEG photo's own stream when it keeps none); None when it has none (or is
        not the caller's, or is not there)."""
        found = self.retrieve.instances_in(study, series, sop, scope=scope)
        if not found:
            return None
        instance = found[0]
        with self.retrieve.open(instance) as stream:
            dataset = pydicom.dcmread(stream, defer_size=1024, stop_before_pixels=True, force=True)
            if original and instance.SOPClassUID == VL_PHOTOGRAPHIC:  # only what the capture library writes
                kept = _original(instance, dataset)
                if kept is not None:
                    return kept  # a photo that came as JPEG is its own original (below)
            document = _raw(dataset, ENCAPSULATED_DOCUMENT)
            if document is not None:
                length = _document_length(dataset, document.length)
                media_type = str(dataset.get("MIMETypeOfEncapsulatedDocument", "") or "application/pdf").strip()
                return Content(instance, media_type, ((int(document.value_tell or 0), length),))
            stream_type = STREAM_MEDIA_TYPES.get(instance.TransferSyntaxUID)
            if stream_type is None:
                return None
            layout = read_layout(stream, instance.TransferSyntaxUID)
            if not layout.encapsulated or not layout.fragments:
                return None
            if stream_type == "image/jpeg" and layout.number_of_frames > 1:
                return None  # a multi-frame JPEG object is an image for the viewer, not one photo
            pieces = list(layout.fragments)
            if pieces:  # an even-length fragment may end in the one pad byte the stream did not have
                offset, length = pieces[-1]
                if length and self.retrieve.read_range(instance, offset + length - 1, 1) == b"\x00" and \
                        stream_type == "image/jpeg":
                    pieces[-1] = (offset, length - 1)  # a JPEG ends with FFD9; the 00 after it is padding
            return Content(instance, stream_type, tuple(pieces))

    def read(self, content: Content, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The content's bytes from ``start`` to ``end`` inclusive (the whole of it by default), in chunks."""
        last = content.length - 1 if end is None else min(end, content.length - 1)
        position = 0
        for offset, length in content.pieces:
            piece_start, piece_end = position, position + length - 1
            position += length
            if piece_end < start or piece_start > last:
                continue
            begin = max(start, piece_start) - piece_start
            stop = min(last, piece_end) - piece_start
            cursor = begin
            while cursor <= stop:
                size = min(_CHUNK, stop - cursor + 1)
                yield self.retrieve.read_range(content.instance, offset + cursor, size)
                cursor += size


def _raw(dataset: pydicom.Dataset, tag: int) -> RawDataElement | None:
    element = dataset.get_item(tag)
    if isinstance(element, RawDataElement) and element.value_tell is not None and element.length not in (
            0, 0xFFFFFFFF):
        return element
    return None


def _document_length(dataset: pydicom.Dataset, stored: int) -> int:
    """The document's own length: Encapsulated Document Length when given (the value is padded to even)."""
    declared = dataset.get("EncapsulatedDocumentLength")
    try:
        if declared is not None and 0 < int(declared) <= stored:
            return int(declared)
    except (TypeError, ValueError):
        pass
    return stored


def _original(instance: StoredInstance, dataset: pydicom.Dataset) -> Content | None:
    for block in range(0x10, 0x100):
        creator = dataset.get_item((ORIGINAL_GROUP << 16) | block)
        if creator is None:
            continue
        value = creator.value
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value or "")
        if text.strip().rstrip("\x00").strip() != ORIGINAL_CREATOR:
            continue
        base = (ORIGINAL_GROUP << 16) | (block << 8)
        data = _raw(dataset, base | 0x10)
        if data is None:
            return None
        media_type = _text(dataset, base | 0x11) or "application/octet-stream"
        length = int(data.length)
        declared = dataset.get((ORIGINAL_GROUP << 16) | (block << 8) | 0x13)  # its length: the value is even-padded
        try:
            if declared is not None and 0 < int(declared.value) <= length:
                length = int(declared.value)
        except (TypeError, ValueError):
            pass
        return Content(instance, media_type, ((int(data.value_tell or 0), length),),
                       filename=_text(dataset, base | 0x12))
    return None


def _text(dataset: pydicom.Dataset, tag: int) -> str:
    element = dataset.get_item(tag)
    if element is None:
        return ""
    value = element.value
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
    return text.strip().rstrip("\x00").strip()
