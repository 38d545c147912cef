"""PDFs as Encapsulated PDF objects (PS3.3 A.45.1): the bytes as they came, copied into the file in chunks (a
50 MB PDF never sits whole in memory). A PDF the archive could not display is refused: no header, truncated,
or encrypted with a password."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mosaic.services.capture.context import CaptureContext, CaptureError
from mosaic.services.capture.modules import common

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
ENCAPSULATED_DOCUMENT = 0x00420011
_TAIL = 1024


def check(source: Path, filename: str) -> str:
    """Refuse what cannot be displayed; answer the PDF's /Title (may be empty)."""
    size = source.stat().st_size
    with source.open("rb") as stream:
        if not stream.read(5) == b"%PDF-":
            raise CaptureError(filename, "not a PDF document (no %PDF- header)")
        stream.seek(max(0, size - _TAIL))
        if b"%%EOF" not in stream.read(_TAIL):
            raise CaptureError(filename, "is truncated: no %%EOF in its last 1024 bytes")
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # non-strict reading warns about what it tolerates
    # an open file, not its path: given a path, pypdf reads the whole document into memory
    with source.open("rb") as handle:
        return _read(handle, filename)


def _read(handle: BinaryIO, filename: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(handle, strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise CaptureError(filename, "is encrypted with a password: the archive could not display it; "
                                         "upload it without protection")
        pages = len(reader.pages)
        title = str(reader.metadata.title or "") if reader.metadata is not None else ""
    except CaptureError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise CaptureError(filename, f"is truncated or damaged: its cross-reference table or trailer cannot be "
                                     f"read ({exc})") from exc
    except Exception as exc:  # pypdf raises many kinds on damaged files
        if "crypt" in type(exc).__name__.lower() or "password" in str(exc).lower():
            raise CaptureError(filename, f"is encrypted and cannot be opened: {exc}") from exc
        raise CaptureError(filename, f"is damaged: {exc}") from exc
    if pages == 0:
        raise CaptureError(filename, "has no pages")
    return title.strip()


def dataset(source: Path, context: CaptureContext, uid: str, filename: str, title: str) -> Dataset:
    """The Encapsulated PDF's attributes; Encapsulated Document (0042,0011) itself is streamed by the writer."""
    captured_at = context.captured_at or datetime.now().astimezone()
    document = common(context, ENCAPSULATED_PDF, uid, context.modality or "DOC", captured_at,
                      series_number=context.SeriesNumber if context.SeriesNumber is not None else 1)
    document.ConversionType = "WSD"
    document.BurnedInAnnotation = "YES"
    document.DocumentTitle = (context.description or title or filename)[:64]
    document.ConceptNameCodeSequence = Sequence()
    document.MIMETypeOfEncapsulatedDocument = "application/pdf"
    document.EncapsulatedDocumentLength = source.stat().st_size
    return document
