"""The patient portal over real HTTP: patients found by name without regard to accents, a timeline of every
specialty in date order, filters, a study page that opens each object with what suits it, content served by byte
range exactly as stored, and a clinician of one facility who never sees, counts or opens another facility's
study."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from mosaic.services.origin import IngestOrigin
from tests.factory import make_bytes, to_bytes
from tests.helpers import LOCALHOST
from tests.test_reports import tiny_pdf

ROOT = "1.2.826.0.1.3680043.10.1234.57."
NORTH = ("north.doc", "north-doctor-password")
SOUTH = ("south.doc", "south-doctor-password")


def photo_jpeg() -> bytes:
    image = Image.new("RGB", (64, 48), (200, 120, 90))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def vl_photo(jpeg: bytes, *, study: str, patient: str = "P1") -> bytes:
    """A VL Photographic Image whose pixel data is ``jpeg`` as it is (what a capture stores)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{study}.9.1", study, f"{study}.9"
    ds.PatientID, ds.IssuerOfPatientID, ds.PatientName = patient, "HOSP", "Müller^Hans"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyDate, ds.StudyTime, ds.Modality, ds.StudyDescription = "20240301", "101500", "XC", "Wound, left leg"
    ds.AccessionNumber, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "", 1, 1, "Wound photo"
    ds.BodyPartExamined = "LEG"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 48, 64, 3, "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return to_bytes(ds)


def encapsulated_pdf(document: bytes, *, study: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{study}.8.1", study, f"{study}.8"
    ds.PatientID, ds.IssuerOfPatientID, ds.PatientName = "P1", "HOSP", "Müller^Hans"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyDate, ds.StudyTime, ds.Modality, ds.StudyDescription = "20240105", "090000", "DOC", "Echo report"
    ds.AccessionNumber, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    ds.MIMETypeOfEncapsulatedDocument, ds.BurnedInAnnotation, ds.DocumentTitle = "application/pdf", "YES", "Echo"
    ds.EncapsulatedDocument = document + (b"\x00" if len(document) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(document)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    return to_bytes(ds)


STUDIES = {  # uid suffix: (modality, date, facility, department)
    "1": ("CT", "20200101", "north", ""),
    "2": ("MR", "20210601", "north", ""),
    "3": ("OP", "20220301", "north", ""),
    "4": ("ECG", "20230101", "south", ""),  # another facility's: north's clinician never sees it
    "5": ("XC", "20240301", "north", "wound care"),
    "6": ("DOC", "20240105", "north", "cardiology"),
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("portal"), http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0)))
    for suffix, (modality, day, facility, department) in STUDIES.items():
        uid = ROOT + suffix
        origin = IngestOrigin(door="test", facility=facility, department=department)
        if modality == "XC":
            mosaic.ingest.store(vl_photo(PHOTO, study=uid), origin)
        elif modality == "DOC":
            mosaic.ingest.store(encapsulated_pdf(PDF, study=uid), origin)
        else:
            mosaic.ingest.store(make_bytes(patient_id="P1", issuer="HOSP", patient_name="Müller^Hans",
                                           charset="ISO_IR 100", study_uid=uid, series_uid=f"{uid}.1",
                                           sop_uid=f"{uid}.1.1", modality=modality, study_date=day), origin)
    mosaic.ingest.store(make_bytes(patient_id="P2", issuer="HOSP", patient_name="Other^Olga", study_uid=ROOT + "20"),
                        IngestOrigin(door="test", facility="south"))
    mosaic.start(dicom=False)
    mosaic.identity.add_user(NORTH[0], roles=["clinician"], password=NORTH[1], facilities=["north"])
    mosaic.identity.add_user(SOUTH[0], roles=["clinician"], password=SOUTH[1], facilities=["south"])
    yield mosaic
    mosaic.stop()


PHOTO = photo_jpeg()
PDF = tiny_pdf() + b"%"  # odd length: the stored value is padded, the served document is not


def get(node: Mosaic, path: str, who: tuple[str, str] = NORTH, **kwargs: object) -> httpx.Response:
    return httpx.get(f"http://{LOCALHOST}:{node.http_port}{path}", auth=who, timeout=30,
                     headers={"Accept": "text/html", **kwargs.pop("headers", {})},  # type: ignore[dict-item]
                     **kwargs)  # type: ignore[arg-type]


def patient_link(node: Mosaic, who: tuple[str, str] = NORTH, **terms: str) -> str:
    answer = get(node, "/portal", who, params=terms)
    assert answer.status_code == 200, answer.text
    links = re.findall(r'href="(/portal/patients/\d+)"', answer.text)
    assert len(links) == 1, answer.text
    return links[0]


def test_a_patient_is_found_without_regard_to_accents_and_by_id(node: Mosaic) -> None:
    answer = get(node, "/portal", params={"name": "muller"})
    assert answer.status_code == 200 and "Hans Müller" in answer.text
    assert "Olga" not in answer.text
    assert patient_link(node, id="P1", issuer="HOSP") == patient_link(node, name="MÜLL*")
    assert "No patient you may see" in get(node, "/portal", params={"name": "nobody"}).text
    assert get(node, "/portal", params={"birth": "1970-13-45x"}).status_code == 400


def test_the_timeline_shows_every_specialty_newest_first_and_only_the_callers_studies(node: Mosaic) -> None:
    page = get(node, patient_link(node, name="muller")).text
    shown = re.findall(r'<h3><a href="/portal/studies/(' + re.escape(ROOT) + r'\d+)">', page)
    # north's five studies, newest first; south's ECG neither listed nor counted
    assert shown == [ROOT + "5", ROOT + "6", ROOT + "3", ROOT + "2", ROOT + "1"]
    assert ROOT + "4" not in page and "5 studies" in page
    specialties = re.findall(r'class="badge specialty">([^<]+)<', page)
    assert specialties == ["wound care", "cardiology", "ophthalmology", "radiology", "radiology"]
    assert '<option value="ECG"' not in page  # the filters offer only what the caller's studies have
    only_radiology = get(node, patient_link(node, name="muller"), params={"specialty": "radiology"}).text
    assert re.findall(r'<h3><a href="/portal/studies/(' + re.escape(ROOT) + r'\d+)">', only_radiology) == [
        ROOT + "2", ROOT + "1"]
    by_site = get(node, patient_link(node, name="muller"), params={"group": "site"}).text
    assert '<h2 id="g1">Leg</h2>' in by_site
    # south's clinician sees only the ECG of this patient
    south = get(node, patient_link(node, SOUTH, name="muller"), SOUTH).text
    assert re.findall(r'<h3><a href="/portal/studies/(' + re.escape(ROOT) + r'\d+)">', south) == [ROOT + "4"]


def test_another_facility_s_study_cannot_be_opened_through_the_portal(node: Mosaic) -> None:
    refused = get(node, f"/portal/studies/{ROOT}4")
    unknown = get(node, f"/portal/studies/{ROOT}99")
    assert refused.status_code == unknown.status_code == 404
    content = get(node, f"/portal/content/{ROOT}4/{ROOT}4.1/{ROOT}4.1.1")
    assert content.status_code == 404
    assert get(node, f"/portal/studies/{ROOT}4", SOUTH).status_code == 200


def test_a_photo_and_a_pdf_come_back_exactly_as_stored_with_ranges(node: Mosaic) -> None:
    study = get(node, f"/portal/studies/{ROOT}5").text
    assert 'data-lightbox=' in study and "Wound photo" in study
    photo = get(node, f"/portal/content/{ROOT}5/{ROOT}5.9/{ROOT}5.9.1")
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    assert photo.content == PHOTO  # the JPEG as it came, no pad byte
    document = get(node, f"/portal/content/{ROOT}6/{ROOT}6.8/{ROOT}6.8.1")
    assert document.headers["content-type"] == "application/pdf" and document.content == PDF
    assert document.headers["content-disposition"].startswith("inline")
    part = get(node, f"/portal/content/{ROOT}6/{ROOT}6.8/{ROOT}6.8.1", headers={"Range": "bytes=5-14"})
    assert part.status_code == 206 and part.content == PDF[5:15]
    assert part.headers["content-range"] == f"bytes 5-14/{len(PDF)}"
    tail = get(node, f"/portal/content/{ROOT}6/{ROOT}6.8/{ROOT}6.8.1", headers={"Range": "bytes=-4"})
    assert tail.content == PDF[-4:]
    beyond = get(node, f"/portal/content/{ROOT}6/{ROOT}6.8/{ROOT}6.8.1", headers={"Range": f"bytes={len(PDF)}-"})
    assert beyond.status_code == 416
    ct = get(node, f"/portal/content/{ROOT}1/{ROOT}1.1/{ROOT}1.1.1")
    assert ct.status_code == 404  # a CT is an image for the viewer, not a file to download here


def test_portal_reads_are_audited(node: Mosaic) -> None:
    get(node, f"/portal/content/{ROOT}6/{ROOT}6.8/{ROOT}6.8.1")
    node.audit.flush()
    records, _total = node.audit.search(user=NORTH[0], study=ROOT + "6", limit=10)
    assert any(record.action == "read" and "/portal/content/" in record.detail for record in records)


def test_an_unknown_patient_number_is_a_404_page(node: Mosaic) -> None:
    assert get(node, "/portal/patients/987654").status_code == 404
    other = re.search(r"/portal/patients/(\d+)", get(node, "/portal", SOUTH, params={"name": "olga"}).text)
    assert other is not None
    assert get(node, f"/portal/patients/{other.group(1)}").status_code == 404  # south's patient, not north's


def test_a_stored_type_that_would_run_script_is_served_as_an_attachment(node: Mosaic) -> None:
    """An Encapsulated Document's MIME type is the sender's word: text/html there must not run on our origin."""
    uid = ROOT + "30"
    page = b"<html><script>alert(document.cookie)</script></html>"
    data = encapsulated_pdf(page, study=uid)
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.MIMETypeOfEncapsulatedDocument = "text/html"
    node.ingest.store(to_bytes(dataset), IngestOrigin(door="test", facility="north"))
    answer = get(node, f"/portal/content/{uid}/{uid}.8/{uid}.8.1")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in answer.headers["content-security-policy"]
    pdf = get(node, f"/portal/content/{ROOT}6/{ROOT}6.8/{ROOT}6.8.1")
    assert pdf.headers["content-type"] == "application/pdf" and "default-src 'none'" in \
        pdf.headers["content-security-policy"]


def test_an_image_series_is_one_entry_of_the_study_page(node: Mosaic) -> None:
    """A CT of many slices is listed once (its images open in the viewer), not once per slice."""
    uid = ROOT + "40"
    for number in range(1, 13):
        node.ingest.store(make_bytes(patient_id="P1", issuer="HOSP", patient_name="Müller^Hans", charset="ISO_IR 100",
                                     study_uid=uid, series_uid=f"{uid}.1", sop_uid=f"{uid}.1.{number}",
                                     instance_number=number), IngestOrigin(door="test", facility="north"))
    page = get(node, f"/portal/studies/{uid}").text
    assert page.count('class="object image"') == 1 and "12 images" in page
