"""The portal in real headless Chromium (Debian's, driven by Playwright): a clinician signs in, finds the patient,
sees a timeline of four specialties in date order with thumbnails, opens a photo in the lightbox, plays a video
(its ``currentTime`` moves), reads a PDF, and uploads a photo by drag and drop that then appears on the timeline;
at desktop and phone size (screenshots in /tmp/portal-shots for people to look at)."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from mosaic.index.query import Scope
from mosaic.services.capturing import CaptureFile, CaptureRequest
from mosaic.services.origin import IngestOrigin
from tests.browser import chromium_context, sign_in
from tests.factory import make_bytes
from tests.helpers import LOCALHOST
from tests.test_reports import tiny_pdf

SHOTS = Path("/tmp/portal-shots")
USER = ("dr.lee", "dr-lee-password-1")


def photo(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> Path:
    image = Image.new("RGB", size, colour)
    for x in range(size[0] // 4, size[0] // 2):
        for y in range(size[1] // 4, size[1] // 2):
            image.putpixel((x, y), (250, 240, 200))
    image.save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is missing: run scripts/install-system-deps.sh (it makes the test's video)", pytrace=False)
    work = tmp_path_factory.mktemp("content")
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("portal-browser"), http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0)))
    for number, (modality, day) in enumerate((("CT", "20220110"), ("OP", "20230315")), start=1):
        uid = f"1.2.826.0.1.3680043.10.1234.61.{number}"
        mosaic.ingest.store(make_bytes(patient_id="BR1", issuer="HOSP", patient_name="Lindqvist^Märta",
                                       charset="ISO_IR 100", study_uid=uid, series_uid=f"{uid}.1",
                                       sop_uid=f"{uid}.1.1", modality=modality, study_date=day, rows=64, columns=64),
                            IngestOrigin(door="test", facility="north"))
    clip = work / "scope.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=duration=3:size=320x240:rate=15",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-profile:v", "high", "-movflags", "+faststart",
                    str(clip)], check=True)
    (work / "letter.pdf").write_bytes(tiny_pdf())
    origin = IngestOrigin(door="test", facility="north")
    for request, files in (
        (CaptureRequest(PatientID="BR1", IssuerOfPatientID="HOSP", specialty="dermatology", encounter="E1",
                        body_site_meaning="Left forearm", description="Naevus"),
         [CaptureFile(photo(work / "mole.jpg", (150, 90, 70)), "mole.jpg", "image/jpeg")]),
        (CaptureRequest(PatientID="BR1", IssuerOfPatientID="HOSP", specialty="endoscopy", video_kind="endoscopic",
                        description="Gastroscopy"),
         [CaptureFile(clip, "scope.mp4", "video/mp4"), CaptureFile(work / "letter.pdf", "letter.pdf",
                                                                   "application/pdf")]),
    ):
        results = mosaic.captures.capture(request, files, origin, scope=Scope.everything())
        assert all(result.outcome == "stored" for result in results), results
    mosaic.start(dicom=False)
    mosaic.identity.add_user(USER[0], roles=["technologist"], password=USER[1], facilities=["north"])
    yield mosaic
    mosaic.stop()


def base(node: Mosaic) -> str:
    return f"http://{LOCALHOST}:{node.http_port}"


@pytest.mark.parametrize(("size", "width", "height"), [("desktop", 1280, 800), ("phone", 390, 844)])
def test_a_clinician_reads_the_whole_record_in_the_browser(node: Mosaic, tmp_path: Path, size: str, width: int,
                                                            height: int) -> None:
    SHOTS.mkdir(exist_ok=True)
    with chromium_context(tmp_path / "profile", width=width, height=height) as context:
        sign_in(context, base(node), "/portal", username=USER[0], password=USER[1])
        page: Any = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{base(node)}/portal")
        page.get_by_label("Name").fill("marta")  # no accent typed: Märta is found
        page.get_by_role("button", name="Search").click()
        page.get_by_role("link", name="Märta Lindqvist").click()
        page.wait_for_selector("ol.timeline")
        page.screenshot(path=str(SHOTS / f"timeline-{size}.png"), full_page=True)
        specialties = page.locator(".badge.specialty").all_inner_texts()
        assert {"radiology", "ophthalmology", "dermatology", "endoscopy"} <= {text.lower() for text in specialties}
        dates = page.locator("ol.timeline time").evaluate_all("nodes => nodes.map(n => n.getAttribute('datetime'))")
        assert dates == sorted(dates, reverse=True)  # newest first
        thumbnails = page.locator("ol.timeline img")
        assert thumbnails.count() >= 3
        assert all(thumbnails.nth(index).evaluate("img => img.complete && img.naturalWidth > 0")
                   for index in range(thumbnails.count()))

        # the photo in the lightbox
        page.get_by_role("link", name="Naevus").click()
        page.locator("a[data-lightbox]").first.click()
        page.wait_for_function("document.getElementById('lightbox').open")
        page.wait_for_function("document.getElementById('lightbox-image').naturalWidth > 0")
        page.get_by_role("button", name="Zoom in").click()
        assert "scale(1.25)" in page.locator("#lightbox-image").evaluate("img => img.style.transform")
        page.screenshot(path=str(SHOTS / f"lightbox-{size}.png"))
        page.keyboard.press("Escape")
        page.go_back()

        # the video plays from the stored stream; the PDF displays
        page.get_by_role("link", name="Gastroscopy").click()
        video = page.locator("video").first
        video.evaluate("v => { v.muted = true; return v.play(); }")
        page.wait_for_function("document.querySelector('video').currentTime > 0.2", timeout=30_000)
        assert page.locator("object[type='application/pdf']").count() == 1
        page.screenshot(path=str(SHOTS / f"study-{size}.png"), full_page=True)
        assert errors == []


def test_a_photo_dropped_on_the_upload_form_appears_on_the_timeline(node: Mosaic, tmp_path: Path) -> None:
    data = io.BytesIO()
    Image.new("RGB", (200, 150), (40, 160, 90)).save(data, "JPEG", quality=90)
    with chromium_context(tmp_path / "profile") as context:
        sign_in(context, base(node), "/portal", username=USER[0], password=USER[1])
        page: Any = context.new_page()
        page.goto(f"{base(node)}/portal?name=lindqvist")
        page.get_by_role("link", name="Märta Lindqvist").click()
        before = page.locator("ol.timeline > li").count()
        page.locator("details.upload summary").click()
        # a real drop: a DataTransfer holding the file, dispatched on the drop zone
        page.evaluate("""([bytes]) => {
            const file = new File([new Uint8Array(bytes)], "wound.jpg", {type: "image/jpeg"});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            const zone = document.querySelector(".dropzone");
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""", [list(data.getvalue())])
        assert page.locator("input[type=file]").evaluate("input => input.files.length") == 1
        page.get_by_label("Specialty").last.fill("wound care")
        page.get_by_label("Description").fill("Heel ulcer")
        with page.expect_navigation():
            page.get_by_role("button", name="Upload").click()
        assert "Stored" in page.content(), page.content()
        page.screenshot(path=str(SHOTS / "uploaded.png"))
        page.get_by_role("link", name="← Märta Lindqvist's record").click()
        assert page.locator("ol.timeline > li").count() == before + 1
        assert "Heel ulcer" in page.content()
