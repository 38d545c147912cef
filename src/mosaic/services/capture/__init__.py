"""Capture: non-DICOM clinical content (photos, video, PDF) turned into standard DICOM objects.

JPEG → VL Photographic Image (encapsulated as it came); PNG / TIFF / HEIC / WebP / GIF → VL Photographic Image
(decoded, lossless, the original kept in the object); MP4 / MOV (H.264, HEVC) → Video Photographic or Video
Endoscopic Image (the MP4 encapsulated, never re-encoded); PDF → Encapsulated PDF. A pure library: the service
ingests the file :func:`capture` writes.
"""

from mosaic.services.capture.context import CaptureContext, Captured, CaptureError, context_from_metadata
from mosaic.services.capture.convert import CAPTURE_TYPES, capture
from mosaic.services.capture.sniff import normalise, sniff

__all__ = ["CAPTURE_TYPES", "CaptureContext", "CaptureError", "Captured", "capture", "context_from_metadata",
           "normalise", "sniff"]
