"""What a capture is given (the clinician's context), what it answers (:class:`Captured`) and how it refuses
(:class:`CaptureError`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


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


VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"


def context_from_metadata(metadata: Any) -> CaptureContext:
    """The context a client gave as DICOM attributes (STOW-RS metadata with a photo, video or PDF as bulk data):
    its patient, study, series and instance UIDs and what it recorded; a UID it leaves out is generated (the
    study's and series') or derived from the content (the instance's)."""
    from pydicom.uid import generate_uid

    def text(keyword: str) -> str:
        value = metadata.get(keyword)
        return "" if value is None else str(value).strip()

    def number(keyword: str) -> int | None:
        value = metadata.get(keyword)
        try:
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    if not text("PatientID"):
        raise ValueError("the metadata names no PatientID (0010,0020): a capture belongs to a patient")
    site = (metadata.get("AnatomicRegionSequence") or [None])[0]
    issuer = metadata.get("IssuerOfAdmissionIDSequence") or []
    return CaptureContext(
        PatientID=text("PatientID"), IssuerOfPatientID=text("IssuerOfPatientID"), PatientName=text("PatientName"),
        PatientBirthDate=text("PatientBirthDate"), PatientSex=text("PatientSex"),
        StudyInstanceUID=text("StudyInstanceUID") or generate_uid(),
        SeriesInstanceUID=text("SeriesInstanceUID") or generate_uid(), SOPInstanceUID=text("SOPInstanceUID"),
        AccessionNumber=text("AccessionNumber"), StudyDescription=text("StudyDescription"),
        StudyDate=text("StudyDate"), StudyTime=text("StudyTime"), SeriesNumber=number("SeriesNumber"),
        InstanceNumber=number("InstanceNumber"), encounter=text("AdmissionID"),
        encounter_issuer=str(issuer[0].get("LocalNamespaceEntityID", "") or "") if issuer else "",
        specialty=text("InstitutionalDepartmentName"), facility=text("InstitutionName"),
        body_site_code=str(site.get("CodeValue", "") or "") if site is not None else "",
        body_site_meaning=str(site.get("CodeMeaning", "") or "") if site is not None else text("BodyPartExamined"),
        laterality=text("ImageLaterality") or text("Laterality"), operator=text("OperatorsName"),
        description=text("SeriesDescription"), device_manufacturer=text("Manufacturer"),
        device_model=text("ManufacturerModelName"), modality=text("Modality"),
        video_kind="endoscopic" if text("SOPClassUID") == VIDEO_ENDOSCOPIC else "photographic",
        ReferringPhysicianName=text("ReferringPhysicianName"))
