"""STOW-RS of non-DICOM content with DICOM JSON metadata (PS3.18 10.5.1.2: metadata, then bulk data parts of
their own media type): a JPEG photo, an H.264 video and a PDF become standard objects with the client's patient,
study, series and instance UIDs, their bytes encapsulated as they came and read back unchanged over WADO-RS; a
part that is not what it claims is a failed instance naming it, and leaves nothing behind."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from tests.auth_support import auth_headers
from tests.test_dicomweb_stow import leftovers, multipart, post
from tests.test_dicomweb_wado import multipart_parts
from tests.test_reports import tiny_pdf


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path / "data", http=HttpSettings(port=0), dicom=DicomSettings(port=0)))
    mosaic.start(dicom=False)
    yield mosaic
    mosaic.stop()


def metadata(sop_class: str, study: str, bulk: str, tag: str, **values: str) -> dict[str, object]:
    document: dict[str, object] = {
        "00080016": {"vr": "UI", "Value": [sop_class]}, "00080018": {"vr": "UI", "Value": [f"{study}.1.{bulk}"]},
        "0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [f"{study}.1"]},
        "00100020": {"vr": "LO", "Value": ["STOW-P1"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Kowalski^Zoë"}]},
        "00380010": {"vr": "LO", "Value": ["VISIT-9"]}, "00081040": {"vr": "LO", "Value": ["dermatology"]},
        tag: {"vr": "OB", "BulkDataURI": bulk},
    }
    for key, value in values.items():
        document[key] = {"vr": "LO", "Value": [value]}
    return document


def photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 32), (10, 120, 200)).save(out, "JPEG", quality=85)
    return out.getvalue()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg (Debian) makes the test's video clip")
def test_a_photo_a_video_and_a_pdf_with_json_metadata_are_stored_as_they_came(node: Mosaic, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=duration=1:size=128x96:rate=10",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-profile:v", "high", str(clip)], check=True)
    study = generate_uid(prefix="1.2.826.0.1.3680043.10.1234.60.")[:50]
    jpeg, video, document = photo(), clip.read_bytes(), tiny_pdf()
    documents = [metadata("1.2.840.10008.5.1.4.1.1.77.1.4", study, "1", "7FE00010"),
                 metadata("1.2.840.10008.5.1.4.1.1.77.1.4.1", study, "2", "7FE00010"),
                 metadata("1.2.840.10008.5.1.4.1.1.104.1", study, "3", "00420011")]
    body = multipart([({"Content-Type": "application/dicom+json"}, json.dumps(documents).encode()),
                      ({"Content-Type": "image/jpeg", "Content-Location": "1"}, jpeg),
                      ({"Content-Type": "video/mp4", "Content-Location": "2"}, video),
                      ({"Content-Type": "application/pdf", "Content-Location": "3"}, document)])
    answer = post(node, body, "application/dicom+json")
    assert answer.status_code == 200, answer.text
    referenced = answer.json()["00081199"]["Value"]
    assert sorted(item["00081155"]["Value"][0] for item in referenced) == [f"{study}.1.{n}" for n in "123"]
    base = f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{study}/series/{study}.1/instances/{study}.1"
    # the photo's single frame is the JPEG as it came; the video's frames are the MP4 file
    frame = httpx.get(f"{base}.1/frames/1", headers={**auth_headers(node), "Accept": 'multipart/related; '
                      'type="image/jpeg"'}, timeout=30)
    assert frame.status_code == 200, frame.text
    assert multipart_parts(frame)[0][1].rstrip(b"\x00") == jpeg.rstrip(b"\x00")
    stored = pydicom.dcmread(io.BytesIO(httpx.get(f"{base}.2", timeout=30, headers={
        **auth_headers(node), "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}).content
        .split(b"\r\n\r\n", 1)[1]), force=True)
    assert str(stored.file_meta.TransferSyntaxUID).startswith("1.2.840.10008.1.2.4.10")
    assert (stored.PatientID, str(stored.PatientName), stored.AdmissionID) == ("STOW-P1", "Kowalski^Zoë", "VISIT-9")
    encapsulated = b"".join(pydicom.encaps.generate_fragments(stored.PixelData))
    assert encapsulated[:len(video)] == video
    pdf = httpx.get(f"{base}.3/bulkdata/00420011", headers=auth_headers(node), timeout=30)
    assert multipart_parts(pdf)[0][1][:len(document)] == document
    assert leftovers(node) == ([], [])


def test_a_bulk_data_part_that_is_not_what_it_claims_is_a_failed_instance(node: Mosaic) -> None:
    study = generate_uid(prefix="1.2.826.0.1.3680043.10.1234.60.")[:50]
    body = multipart([({"Content-Type": "application/dicom+json"}, json.dumps(
                        [metadata("1.2.840.10008.5.1.4.1.1.77.1.4", study, "1", "7FE00010")]).encode()),
                      ({"Content-Type": "image/jpeg", "Content-Location": "1"}, b"%PDF-1.4 not a photo")])
    answer = post(node, body, "application/dicom+json")
    assert answer.status_code == 409, answer.text
    failed = answer.json()["00081198"]["Value"][0]
    assert failed["00081155"]["Value"] == [f"{study}.1.1"]
    assert leftovers(node) == ([], [])
