"""Orderless capture through the portal (IHE Encounter-Based Imaging Workflow) over real HTTP: a clinician uploads
photos and a PDF for a patient of the archive; each becomes a standard DICOM object of the encounter's study (a
generated Study Instance UID and accession, the same for every capture of that encounter), the JPEG encapsulated
byte for byte, and a bad file is refused by name with nothing stored."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from PIL import Image
from sqlalchemy import func, select

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from mosaic.index.query import Scope
from mosaic.index.schema import Instance
from mosaic.services.origin import IngestOrigin
from tests.factory import make_bytes
from tests.helpers import LOCALHOST
from tests.test_dicomweb_stow import leftovers
from tests.test_reports import tiny_pdf

NURSE = ("wound.nurse", "wound-nurse-password")
VIEWER = ("north.viewer", "north-viewer-password")


@pytest.fixture
def node(tmp_path: pytest.TempPathFactory) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0)))  # type: ignore[arg-type]
    mosaic.ingest.store(make_bytes(patient_id="P7", issuer="HOSP", patient_name="Øster^Åse", charset="ISO_IR 100",
                                   study_uid="1.2.826.0.1.3680043.10.1234.58.1"),
                        IngestOrigin(door="test", facility="north"))
    mosaic.start(dicom=False)
    mosaic.identity.add_user(NURSE[0], roles=["technologist"], password=NURSE[1], facilities=["north"])
    mosaic.identity.add_user(VIEWER[0], roles=["clinician"], password=VIEWER[1], facilities=["north"])
    yield mosaic
    mosaic.stop()


def jpeg(colour: tuple[int, int, int] = (180, 90, 70)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (80, 60), colour).save(out, "JPEG", quality=92)
    return out.getvalue()


def png() -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", (30, 20))
    image.putdata([(x * 8 % 256, y * 12 % 256, (x + y) % 256) for y in range(20) for x in range(30)])
    image.save(out, "PNG")
    return out.getvalue()


def patient_page(node: Mosaic) -> str:
    found = httpx.get(f"http://{LOCALHOST}:{node.http_port}/portal", params={"id": "P7"}, auth=NURSE, timeout=30)
    match = re.search(r'href="(/portal/patients/\d+)"', found.text)
    assert match is not None, found.text
    return match.group(1)


def upload(node: Mosaic, files: list[tuple[str, bytes, str]], who: tuple[str, str] = NURSE,
           **fields: str) -> httpx.Response:
    return httpx.post(f"http://{LOCALHOST}:{node.http_port}{patient_page(node)}/captures", auth=who, timeout=60,
                      headers={"Accept": "text/html"}, data=fields,
                      files=[("files", (name, data, media_type)) for name, data, media_type in files])


def stored(node: Mosaic) -> list[pydicom.Dataset]:
    with node.database.session() as session:
        uids = list(session.scalars(select(Instance.SOPInstanceUID).where(
            Instance.SOPClassUID != "1.2.840.10008.5.1.4.1.1.2")))
    found = node.retrieve.instances_by_uid(uids, scope=Scope.everything())
    return [pydicom.dcmread(node.retrieve.open(instance)) for instance in found.values()]


def test_photos_and_a_pdf_become_objects_of_the_encounter_s_study(node: Mosaic) -> None:
    photo, still, document = jpeg(), png(), tiny_pdf()
    answer = upload(node, [("wound.jpg", photo, "image/jpeg"), ("wound-detail.png", still, "image/png"),
                           ("referral.pdf", document, "application/pdf")],
                    encounter="V2026-118", specialty="wound care", body_site="Left lower leg",
                    body_site_code="48979004", laterality="L", description="Pressure ulcer, day 3")
    assert answer.status_code == 201, answer.text
    objects = stored(node)
    assert len(objects) == 3
    studies = {str(ds.StudyInstanceUID) for ds in objects}
    accessions = {str(ds.AccessionNumber) for ds in objects}
    assert len(studies) == 1 and len(accessions) == 1 and next(iter(accessions))  # generated, one per encounter
    for ds in objects:
        assert (ds.PatientID, ds.IssuerOfPatientID, str(ds.PatientName)) == ("P7", "HOSP", "Øster^Åse")
        assert ds.AdmissionID == "V2026-118"
    by_class = {str(ds.SOPClassUID): ds for ds in objects}
    photo_ds = next(ds for ds in objects if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50")
    fragment = next(pydicom.encaps.generate_frames(photo_ds.PixelData, number_of_frames=1))
    assert fragment[:len(photo)] == photo and len(fragment) - len(photo) in (0, 1)  # as it came (even-padded)
    assert "1.2.840.10008.5.1.4.1.1.104.1" in by_class
    # a later capture of the same encounter joins the study
    again = upload(node, [("wound-day4.jpg", jpeg((170, 80, 60)), "image/jpeg"), ("wound.jpg", photo, "image/jpeg")],
                   encounter="V2026-118", specialty="wound care")
    assert again.status_code == 201, again.text
    assert "Already stored" in again.text  # the same file into the same study: nothing new
    assert len(stored(node)) == 4 and {str(ds.StudyInstanceUID) for ds in stored(node)} == studies
    # the timeline lists it as wound care, and its photo comes back byte for byte from the portal
    timeline = httpx.get(f"http://{LOCALHOST}:{node.http_port}{patient_page(node)}", auth=VIEWER, timeout=30).text
    assert "wound care" in timeline and next(iter(studies)) in timeline
    content = httpx.get(f"http://{LOCALHOST}:{node.http_port}/portal/content/{photo_ds.StudyInstanceUID}/"
                        f"{photo_ds.SeriesInstanceUID}/{photo_ds.SOPInstanceUID}", auth=VIEWER, timeout=30)
    assert content.status_code == 200 and content.content == photo
    assert leftovers(node) == ([], [])  # every converted object linked into the store, nothing left in its spool


def test_a_bad_file_is_refused_by_name_and_nothing_of_it_is_stored(node: Mosaic) -> None:
    answer = upload(node, [("photo.jpg", b"%PDF-1.4 this is not a photo", "image/jpeg"),
                           ("scan.pdf", b"%PDF-1.4\n1 0 obj <<>> endobj\n", "application/pdf")])
    assert answer.status_code == 422
    assert "photo.jpg" in answer.text and "scan.pdf" in answer.text
    with node.database.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
    assert leftovers(node) == ([], [])  # no spool file, no orphan blob


def test_capture_needs_store_permission_and_a_known_patient(node: Mosaic) -> None:
    refused = upload(node, [("wound.jpg", jpeg(), "image/jpeg")], who=VIEWER)
    assert refused.status_code == 403
    unknown = httpx.post(f"http://{LOCALHOST}:{node.http_port}/portal/patients/999999/captures", auth=NURSE,
                         timeout=30, files=[("files", ("a.jpg", jpeg(), "image/jpeg"))])
    assert unknown.status_code == 404
    with node.database.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1


def test_captured_content_is_a_fhir_document_reference_whose_attachment_is_the_content(node: Mosaic) -> None:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.documentreference import DocumentReference

    photo, document = jpeg(), tiny_pdf()
    assert upload(node, [("wound.jpg", photo, "image/jpeg"), ("referral.pdf", document, "application/pdf")],
                  specialty="wound care", description="Sacral wound").status_code == 201
    base = f"http://{LOCALHOST}:{node.http_port}"
    patient = httpx.get(f"{base}/fhir/Patient", params={"identifier": "P7"}, auth=VIEWER, timeout=30).json()
    reference = f"Patient/{patient['entry'][0]['resource']['id']}"
    found = Bundle.model_validate(httpx.get(f"{base}/fhir/DocumentReference", params={"patient": reference},
                                            auth=VIEWER, timeout=30).json())
    entries = [DocumentReference.model_validate(entry.resource.model_dump()) for entry in found.entry or []]
    by_type = {entry.content[0].attachment.contentType: entry for entry in entries}
    assert set(by_type) == {"image/jpeg", "application/pdf"} and found.total == 2
    for media_type, original in (("image/jpeg", photo), ("application/pdf", document)):
        entry = by_type[media_type]
        assert entry.subject.reference == reference and entry.context.practiceSetting.text == "wound care"
        fetched = httpx.get(entry.content[0].attachment.url, auth=VIEWER, timeout=30)
        assert fetched.status_code == 200 and fetched.content == original
    read = httpx.get(f"{base}/fhir/DocumentReference/{by_type['image/jpeg'].id}", auth=VIEWER, timeout=30)
    assert read.status_code == 200 and DocumentReference.model_validate(read.json()).id == by_type["image/jpeg"].id


def test_an_encounter_is_a_facility_s_own(node: Mosaic, tmp_path: pytest.TempPathFactory) -> None:
    """Visit numbers are a facility's: south's captures for the same patient and visit number neither go into
    north's study nor keep north's out of it."""
    from mosaic.services.capturing import CaptureFile, CaptureRequest

    folder = Path(str(tmp_path))
    results = {}
    for facility, colour in (("north", (10, 20, 30)), ("south", (30, 20, 10))):
        photo = folder / f"{facility}.jpg"
        photo.write_bytes(jpeg(colour))
        [results[facility]] = node.captures.capture(
            CaptureRequest(PatientID="P7", IssuerOfPatientID="HOSP", encounter="V-1"),
            [CaptureFile(photo, photo.name, "image/jpeg")], IngestOrigin(door="test", facility=facility),
            scope=Scope.everything())
    assert results["north"].outcome == results["south"].outcome == "stored"
    assert results["north"].StudyInstanceUID != results["south"].StudyInstanceUID


def test_an_upload_of_more_files_than_allowed_is_refused_whole(node: Mosaic) -> None:
    from mosaic.web.portal import MAX_FILES

    many = [(f"p{number}.jpg", jpeg(), "image/jpeg") for number in range(MAX_FILES + 1)]
    answer = upload(node, many)
    assert answer.status_code == 400
    with node.database.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
