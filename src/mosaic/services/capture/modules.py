"""The modules every captured object shares (PS3.3 Patient, General Study, General Series, General Equipment,
General Acquisition, SOP Common), filled from the :class:`CaptureContext`, and the deterministic SOP Instance UID."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from mosaic.services.capture.context import CaptureContext

SCT = "SCT"
UTF8 = "ISO_IR 192"


def instance_uid(original_sha256: str, StudyInstanceUID: str) -> str:
    """The same bytes captured twice into the same study are the same instance (the archive answers "already
    stored"); into another study, another one."""
    return str(generate_uid(entropy_srcs=["mosaic capture", original_sha256, StudyInstanceUID]))


def dicom_date(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def dicom_time(moment: datetime) -> str:
    return moment.strftime("%H%M%S.%f")


def dicom_datetime(moment: datetime) -> str:
    """DT with the UTC offset when the moment knows it (PS3.5 6.2)."""
    text = moment.strftime("%Y%m%d%H%M%S.%f")
    return text + moment.strftime("%z") if moment.tzinfo is not None else text


def common(context: CaptureContext, SOPClassUID: str, SOPInstanceUID: str, modality: str,
           captured_at: datetime, *, manufacturer: str = "", model: str = "", series_number: int | None = None,
           laterality_in_series: bool = False) -> Dataset:
    """A dataset with the shared modules; the converter adds the IOD's own (image, cine, document)."""
    dataset = Dataset()
    dataset.SOPClassUID = SOPClassUID
    dataset.SOPInstanceUID = SOPInstanceUID
    now = datetime.now(UTC).astimezone()
    dataset.InstanceCreationDate = dicom_date(now)
    dataset.InstanceCreationTime = dicom_time(now)
    # Patient (C.7.1.1)
    dataset.PatientName = context.PatientName
    dataset.PatientID = context.PatientID
    if context.IssuerOfPatientID:
        dataset.IssuerOfPatientID = context.IssuerOfPatientID
    dataset.PatientBirthDate = context.PatientBirthDate
    dataset.PatientSex = context.PatientSex
    # General Study (C.7.2.1)
    dataset.StudyInstanceUID = context.StudyInstanceUID
    dataset.StudyDate = context.StudyDate or dicom_date(captured_at)
    dataset.StudyTime = context.StudyTime or ("" if context.StudyDate else dicom_time(captured_at))
    dataset.ReferringPhysicianName = context.ReferringPhysicianName
    dataset.StudyID = ""
    dataset.AccessionNumber = context.AccessionNumber
    if context.StudyDescription:
        dataset.StudyDescription = context.StudyDescription
    # Patient Study (C.7.2.2): the visit
    if context.encounter:
        dataset.AdmissionID = context.encounter
        if context.encounter_issuer:
            issuer = Dataset()
            issuer.LocalNamespaceEntityID = context.encounter_issuer
            dataset.IssuerOfAdmissionIDSequence = Sequence([issuer])
    # General Series (C.7.3.1)
    dataset.Modality = modality
    dataset.SeriesInstanceUID = context.SeriesInstanceUID
    dataset.SeriesNumber = series_number if series_number is not None else context.SeriesNumber
    if laterality_in_series and context.laterality in ("R", "L"):
        dataset.Laterality = context.laterality  # 2C: absent for an unpaired or unknown part
    if context.description:
        dataset.SeriesDescription = context.description
    if context.operator:
        dataset.OperatorsName = context.operator
    # General Equipment (C.7.5.1)
    dataset.Manufacturer = context.device_manufacturer or manufacturer
    if context.facility:
        dataset.InstitutionName = context.facility
    if context.specialty:
        dataset.InstitutionalDepartmentName = context.specialty
    if context.body_site_meaning:  # the site as the index keeps it (priors are grouped by it)
        part = re.sub(r"[^A-Z0-9 _]", "", context.body_site_meaning.upper()).strip()[:16].strip()
        if part:
            dataset.BodyPartExamined = part
    if context.device_model or model:
        dataset.ManufacturerModelName = context.device_model or model
    # General Acquisition (C.7.10.1) and the content's own time
    dataset.AcquisitionDateTime = dicom_datetime(captured_at)
    dataset.ContentDate = dicom_date(captured_at)
    dataset.ContentTime = dicom_time(captured_at)
    dataset.InstanceNumber = context.InstanceNumber if context.InstanceNumber is not None else 1
    return dataset


def anatomic_region(context: CaptureContext) -> Sequence | None:
    """AnatomicRegionSequence of the body site (SNOMED CT), or None when not given."""
    if not context.body_site_code:
        return None
    code = Dataset()
    code.CodeValue = context.body_site_code
    code.CodingSchemeDesignator = SCT
    code.CodeMeaning = context.body_site_meaning or context.body_site_code
    return Sequence([code])


def set_character_set(dataset: Dataset) -> None:
    """ISO_IR 192 (UTF-8) when any text is not ASCII: accented names, ideographs."""
    for element in dataset.iterall():
        if element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and element.value is not None:
            values = element.value if element.VM > 1 else [element.value]
            if any(not str(value).isascii() for value in values):
                dataset.SpecificCharacterSet = UTF8
                return

