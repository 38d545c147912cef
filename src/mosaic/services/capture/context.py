"""What a capture is given (the clinician's context), what it answers (:class:`Captured`) and how it refuses
(:class:`CaptureError`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class CaptureContext:
    """What a clinician records at capture, and where the object goes (UIDs chosen by the caller)."""

    PatientID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    IssuerOfPatientID: str = ""
    PatientName: str = ""
    PatientBirthDate: str = ""
    PatientSex: str = ""
    AccessionNumber: str = ""
    StudyDescription: str = ""
    StudyDate: str = ""
    """YYYYMMDD; empty: the capture date."""
    StudyTime: str = ""
    SeriesNumber: int | None = None
    InstanceNumber: int | None = None
    """Empty: 1."""
    SOPInstanceUID: str = ""
    """Empty: derived from the content and the study (the same file into the same study is the same instance);
    a client that names its instance (STOW-RS metadata) keeps its UID."""
    encounter: str = ""
    """The visit → AdmissionID (0038,0010)."""
    encounter_issuer: str = ""
    """→ IssuerOfAdmissionIDSequence[0].LocalNamespaceEntityID."""
    specialty: str = ""
    """The department, e.g. "dermatology" → InstitutionalDepartmentName."""
    facility: str = ""
    """→ InstitutionName."""
    body_site_code: str = ""
    """SNOMED CT concept id, e.g. "40983000" (upper arm) → AnatomicRegionSequence (SCT)."""
    body_site_meaning: str = ""
    laterality: str = ""
    """R, L, B (both) or U (unpaired) → ImageLaterality (photos) / Laterality (video)."""
    view: str = ""
    """Free text, e.g. "close-up", "dermoscopy" → AcquisitionContextDescription."""
    operator: str = ""
    """→ OperatorsName."""
    description: str = ""
    """→ SeriesDescription (and ImageComments, DocumentTitle)."""
    device_manufacturer: str = ""
    """Empty: from EXIF Make / the video's metadata."""
    device_model: str = ""
    """Empty: from EXIF Model / the video's metadata."""
    captured_at: datetime | None = None
    """Empty: EXIF DateTimeOriginal / the video's creation_time / now."""
    modality: str = ""
    """Empty: XC for photos and photographic video, ES for endoscopic video, DOC for PDF."""
    video_kind: str = "photographic"
    """Or "endoscopic": Video Photographic vs Video Endoscopic Image Storage."""
    ReferringPhysicianName: str = ""


class CaptureError(ValueError):
    """Content that cannot be captured: names the file and the reason (e.g. "wound.jpg: not a JPEG image (it starts
    with %PDF)")."""

    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(f"{filename}: {reason}")
        self.filename = filename
        self.reason = reason


@dataclass(frozen=True)
class Captured:
    path: Path
    """The Part 10 file written (in the caller's ``workdir``); the caller ingests it and deletes it."""
    SOPClassUID: str
    SOPInstanceUID: str
    kind: str
    """"photo", "video" or "document"."""
    media_type: str
    """What the content really is: image/jpeg, image/png, image/tiff, image/heic, video/mp4, video/quicktime,
    application/pdf."""
    original_sha256: str
    """Of the bytes as they came."""
