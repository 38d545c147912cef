"""OHIF against the REAL Mosaic, end to end: no stub between the browser and the archive.

One Mosaic node runs in-process (SQLite index and blob folder under tmp_path, HTTP and DICOM on free ports), filled
through both of its doors:

- a synthetic CT study, 3 axial series of 20 instances of 256x256 16-bit in one frame of reference, sent with dcmtk
  ``storescu -xi`` over C-STORE, so it is stored as Implicit VR Little Endian. Every slice is a body ellipse whose
  soft tissue brightens from left to right, with a bone-bright disc (a sphere's cross-section) in its upper right;
  Rescale Slope/Intercept, Window Center/Width, Image Position/Orientation, Pixel Spacing and Slice Thickness are
  set as a scanner would, so OHIF takes every series as reconstructable;
- pydicom's ``CT_small.dcm`` as its own study through STOW-RS: Explicit VR Little Endian, signed pixels, no window.

Debian's headless chromium (Playwright, a fresh profile) then opens the study list at ``/viewer/`` and the viewer
route of each study, waits until the cornerstone viewport canvas holds a drawn image (polled, no fixed sleep) and
reads the canvas back: many grey levels, the disc where it was put and the ramp the right way round; and, placing
each stored pixel on the canvas with the viewport's own world-to-canvas transform, the drawn image is the stored
image under the viewport's window. On the network: no 4xx/5xx from ``/dicom-web``, every frame fetched with OHIF's
``transfer-syntax=*`` Accept header, the instances kept in the syntax they came in. On the page: no error text, no
first-visit tour.
Screenshots (whole page and the viewport canvas) are left in each test's tmp_path.

Outside Mosaic: OHIF flags a one-image series (CT_small) "not reconstructable" (it cannot be a volume); it is still
drawn in the default stack viewport, which is all that is checked for it.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, IndexSettings, SecuritySettings, Settings, StorageSettings
from tests.auth_support import auth_headers
from tests.browser import PageLog, chromium_context, open_page, sign_in, viewer_dir
from tests.dimse_support import MOSAIC_AE, peer_args, run_tool
from tests.factory import PREFIX
from tests.oidc_support import IdentityProvider
from tests.test_dicomweb_wado import ANY_DICOM, multipart_parts

pytestmark = pytest.mark.dcmtk

SIZE = 256
PATIENT_NAME = "Mosaic^Phantom"  # OHIF's study list shows "Mosaic, Phantom"
#: The bright disc: centre (row, column) and largest radius, in pixels; in the upper right of every slice.
DISC_ROW, DISC_COLUMN, DISC_RADIUS, DISC_HU = 72, 184, 30, 900
#: The body ellipse: centre (row, column) and half axes, in pixels.
BODY_ROW, BODY_COLUMN, BODY_HALF_HEIGHT, BODY_HALF_WIDTH = 128, 128, 96, 112
#: (series number, description, slices, slice thickness in mm): 20 instances.
SERIES = ((1, "Axial 5.0 mm", 8, 5.0), (2, "Axial 2.5 mm", 8, 2.5), (3, "Axial 10 mm", 4, 10.0))
PIXEL_SPACING = 0.8
FRAMES_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"  # what OHIF sends
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: Text on the page that means OHIF could not show something (error toasts, "Something went wrong", …).
ERROR_TEXT = re.compile(r"error|failed|went wrong|not available|unable to|could not", re.IGNORECASE)
RENDER_TIMEOUT = 45.0
ADMIN_PASSWORD = "e2e-admin-password"  # the browser signs in as admin with it


# --- the archive ---------------------------------------------------------------------------------------------------


def phantom_slice(z: float, radius: float) -> np.ndarray:
    """Hounsfield units of one axial slice: air, a body ellipse with a soft-tissue ramp (-120 HU on the left to
    +140 HU on the right, +40 HU from top to bottom) and a disc of ``radius`` pixels at 900 HU."""
    rows, columns = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    hu = np.full((SIZE, SIZE), -1000.0)
    body = ((rows - BODY_ROW) / BODY_HALF_HEIGHT) ** 2 + ((columns - BODY_COLUMN) / BODY_HALF_WIDTH) ** 2 <= 1
    hu[body] = np.round(-120 + 260 * columns / (SIZE - 1) + 40 * rows / (SIZE - 1) + 0.2 * z)[body]
    hu[(rows - DISC_ROW) ** 2 + (columns - DISC_COLUMN) ** 2 <= radius**2] = DISC_HU
    return hu


def phantom_study(folder: Path) -> tuple[str, list[Path], dict[str, np.ndarray]]:
    """The synthetic CT study as Part 10 files: its UID, the files, and each instance's HU by SOP Instance UID."""
    study_uid = generate_uid(prefix=PREFIX)
    frame_of_reference = generate_uid(prefix=PREFIX)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    expected: dict[str, np.ndarray] = {}
    for series_number, description, slices, thickness in SERIES:
        series_uid = generate_uid(prefix=PREFIX)
        for index in range(slices):
            z = (index - (slices - 1) / 2) * thickness  # centred on z = 0, where the sphere is widest
            radius = max(14.0, float(np.sqrt(max(DISC_RADIUS**2 - (z / PIXEL_SPACING) ** 2, 0.0))))
            hu = phantom_slice(z, radius)
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = generate_uid(prefix=PREFIX)
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240314"
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
            ds.AccessionNumber = "E2E0001"
            ds.Modality = "CT"
            ds.Manufacturer = "Mosaic test suite"
            ds.ReferringPhysicianName = "Ref^Doctor"
            ds.StudyDescription = "E2E phantom"
            ds.SeriesDescription = description
            ds.PatientName = PATIENT_NAME
            ds.PatientID = "E2E-PHANTOM-1"
            ds.PatientBirthDate = "19800101"
            ds.PatientSex = "O"
            ds.BodyPartExamined = "CHEST"
            ds.SliceThickness = thickness
            ds.KVP = 120
            ds.PatientPosition = "HFS"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = "1"
            ds.SeriesNumber = series_number
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = index + 1
            ds.ImagePositionPatient = [-(SIZE / 2) * PIXEL_SPACING, -(SIZE / 2) * PIXEL_SPACING, z]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.FrameOfReferenceUID = frame_of_reference
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = z
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = ds.Columns = SIZE
            ds.PixelSpacing = [PIXEL_SPACING, PIXEL_SPACING]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.WindowCenter, ds.WindowWidth = 40, 400
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.PixelData = (hu + 1024).astype(np.uint16).tobytes()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = folder / f"s{series_number}-{index + 1:02d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            expected[ds.SOPInstanceUID] = hu
    return study_uid, paths, expected


def stow(base_url: str, path: Path, credentials: dict[str, str]) -> None:
    boundary = "mosaic-e2e-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    response = httpx.post(f"{base_url}/dicom-web/studies", content=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json", **credentials})
    assert response.status_code == 200, response.text


@dataclass
class Archive:
    node: Mosaic
    url: str
    phantom_uid: str
    ct_small_uid: str
    expected_hu: dict[str, np.ndarray] = field(default_factory=dict)
    """Hounsfield units of every stored image, by SOP Instance UID."""


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, dcmtk: dict[str, str], idp: IdentityProvider
            ) -> Iterator[Archive]:
    work = tmp_path_factory.mktemp("e2e")
    settings = Settings(  # type: ignore[call-arg]
        data_dir=work / "mosaic",
        index=IndexSettings(),  # type: ignore[call-arg]
        storage=StorageSettings(),  # type: ignore[call-arg]
        http=HttpSettings(port=0, viewer_dir=viewer_dir()),  # type: ignore[call-arg]
        dicom=DicomSettings(ae_title=MOSAIC_AE, port=0, allow_unknown_calling_aes=True),  # type: ignore[call-arg]
        security=SecuritySettings(initial_admin_password=ADMIN_PASSWORD, oidc=idp.settings()),  # type: ignore[call-arg]
    )
    node = Mosaic(settings)
    node.start()
    try:
        url = f"http://127.0.0.1:{node.http_port}"
        phantom_uid, paths, expected = phantom_study(work / "phantom")
        result = run_tool("storescu", "-xi", "-aet", "E2E", *peer_args(node), *paths, env=dcmtk)  # Implicit VR LE
        assert result.returncode == 0, result.stdout + result.stderr
        ct_small = Path(str(get_testdata_file("CT_small.dcm")))
        stow(url, ct_small, auth_headers(node))
        dataset = pydicom.dcmread(ct_small)
        expected[dataset.SOPInstanceUID] = (dataset.pixel_array * float(dataset.RescaleSlope)
                                            + float(dataset.RescaleIntercept))
        yield Archive(node, url, phantom_uid, str(dataset.StudyInstanceUID), expected)
    finally:
        node.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, archive: Archive) -> Iterator[Any]:
    """Chromium signed in to the archive as ``admin`` through the sign-in page."""
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        sign_in(context, archive.url, "/viewer/", username="admin", password=ADMIN_PASSWORD)
        yield context


# --- reading the viewport ------------------------------------------------------------------------------------------

_VIEWPORT_CANVAS = ("[...document.querySelectorAll('.cornerstone-viewport-element canvas')]"
                    ".find(c => c.width > 0 && c.height > 0)")
#: Distinct values of the red channel in a subsample of the viewport canvas (null while there is no canvas).
_CANVAS_LEVELS = f"""() => {{
  const canvas = {_VIEWPORT_CANVAS};
  if (!canvas) return null;
  const context = canvas.getContext('2d');
  if (!context) return -1;
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const levels = new Set();
  for (let i = 0; i < data.length; i += 4 * 7) levels.add(data[i]);
  return levels.size;
}}"""
_CANVAS_PNG = f"() => {_VIEWPORT_CANVAS}.toDataURL('image/png')"
#: What the first viewport shows, from cornerstone3D (OHIF puts it on window): the image ID, the VOI range and the
#: canvas positions (in canvas pixels) of the centres of the image's first pixel, last column and last row.
_VIEWPORT_STATE = """() => {
  const viewport = window.cornerstone.getEnabledElements()[0].viewport;
  const imageId = viewport.getCurrentImageId();
  const plane = window.cornerstone.metaData.get('imagePlaneModule', imageId);
  const canvas = viewport.getCanvas();
  const scale = canvas.width / canvas.clientWidth;
  const at = (row, column) => viewport.worldToCanvas([0, 1, 2].map(axis => plane.imagePositionPatient[axis]
      + column * plane.columnPixelSpacing * plane.rowCosines[axis]
      + row * plane.rowPixelSpacing * plane.columnCosines[axis])).map(value => value * scale);
  return {imageId, voi: viewport.getProperties().voiRange, rows: plane.rows,
          columns: plane.columns, origin: at(0, 0), lastColumn: at(0, plane.columns - 1),
          lastRow: at(plane.rows - 1, 0)};
}"""


@dataclass
class Shown:
    """One study opened in the viewer route, its image drawn."""

    page: Any
    log: PageLog
    canvas: np.ndarray
    """The viewport canvas as grey levels (rows x columns, float)."""
    state: dict[str, Any]
    sop_uid: str
    screenshot: Path


def dismiss_tour(page: Any) -> None:
    """OHIF's first-visit tour (Mosaic's viewer config turns it off): closed should it show anyway."""
    if page.locator(".shepherd-element").count():
        skip = page.locator(".shepherd-element button", has_text=re.compile("skip|close|end", re.IGNORECASE))
        if skip.count():
            skip.first.click()
        else:
            page.keyboard.press("Escape")


def visible_errors(page: Any) -> list[str]:
    return [line for line in page.inner_text("body").splitlines() if ERROR_TEXT.search(line)]


def show_study(archive: Archive, browser: Any, study_uid: str, tmp_path: Path, name: str) -> Shown:
    """Open the viewer route of ``study_uid``, wait for its image on the viewport canvas, check the page and the
    network, and save a screenshot of the page and of the canvas."""
    page, log = open_page(browser, f"{archive.url}/viewer/viewer?StudyInstanceUIDs={study_uid}")
    deadline = time.monotonic() + RENDER_TIMEOUT
    levels = None
    while True:
        dismiss_tour(page)
        levels = page.evaluate(_CANVAS_LEVELS)
        if levels is not None and levels > 48:
            break
        if time.monotonic() > deadline or log.dicomweb_errors or log.page_errors:
            page.screenshot(path=str(tmp_path / f"{name}-not-drawn.png"))
            pytest.fail(f"{name}: no image drawn in the viewport (grey levels in the canvas: {levels}); dicom-web "
                        f"errors: {log.dicomweb_errors}; page problems: {log.problems()}; console errors: "
                        f"{log.console_errors[:5]}; page text: {page.inner_text('body')[:400]!r}")
        page.wait_for_timeout(250)
    # The stack is loading in the background: settle until the canvas stops changing (no fixed sleep).
    previous = ""
    for _attempt in range(20):
        data_url: str = page.evaluate(_CANVAS_PNG)
        if data_url == previous:
            break
        previous = data_url
        page.wait_for_timeout(250)
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as image:
        image.save(tmp_path / f"{name}-viewport.png")
        canvas = np.asarray(image.convert("RGB")).astype(np.float64)
    state = page.evaluate(_VIEWPORT_STATE)
    screenshot = tmp_path / f"{name}.png"
    page.screenshot(path=str(screenshot))

    assert page.locator(".shepherd-element").count() == 0, "OHIF's first-visit tour covers the viewport"
    assert not visible_errors(page), visible_errors(page)
    assert page.evaluate("() => window.crossOriginIsolated") is True
    assert not log.dicomweb_errors, log.dicomweb_errors
    assert not log.problems(), log.problems()
    assert np.abs(canvas[..., 0] - canvas[..., 2]).max() <= 2, "a MONOCHROME2 image drawn in colour"

    # The frames came from Mosaic's WADO-RS, asked for the way OHIF asks: any transfer syntax.
    frames = [(url, accept) for url, accept in log.dicomweb_requests if "/frames/" in url]
    assert frames, log.dicomweb_requests
    for url, accept in frames:
        assert f"/studies/{study_uid}/" in url, url
        assert accept.startswith("multipart/related; type=application/octet-stream"), (url, accept)
        assert "transfer-syntax=*" in accept, (url, accept)
    shown_url = state["imageId"].removeprefix("wadors:")
    assert shown_url in [url for url, _ in frames], (shown_url, frames)
    sop_uid = shown_url.split("/instances/")[1].split("/")[0]
    return Shown(page, log, canvas.mean(axis=2), state, sop_uid, screenshot)


def transfer_syntaxes(frame_url: str, credentials: dict[str, str]) -> tuple[str, str]:
    """(the syntax the instance is stored in, the syntax Mosaic labels its frame with when asked as OHIF asks).

    Native pixel data is the same bytes in Implicit and Explicit VR Little Endian: a frame of either is served as
    ``application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1``.
    """
    instance = httpx.get(frame_url.split("/frames/")[0], timeout=30, headers={"Accept": ANY_DICOM, **credentials})
    assert instance.status_code == 200, instance.text
    [(_headers, part10)] = multipart_parts(instance)
    stored = str(pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    frame = httpx.get(frame_url, timeout=30, headers={"Accept": FRAMES_ACCEPT, **credentials})
    assert frame.status_code == 200, frame.text
    [(headers, _body)] = multipart_parts(frame)
    match = re.search(r"transfer-syntax=([0-9.]+)", headers["content-type"])
    assert match, headers
    return stored, match.group(1)


def assert_drawn_as_stored(shown: Shown, hu: np.ndarray, *, name: str) -> None:
    """Each stored pixel, placed on the canvas by the viewport's world-to-canvas transform, has the grey level its
    value gets under the viewport's VOI range: the viewport shows this image, upright, decoded right."""
    state = shown.state
    assert (state["rows"], state["columns"]) == hu.shape
    rows, columns = np.mgrid[0:hu.shape[0], 0:hu.shape[1]].astype(np.float64)
    origin, last_column, last_row = (np.array(state[key]) for key in ("origin", "lastColumn", "lastRow"))
    step_column = (last_column - origin) / (hu.shape[1] - 1)
    step_row = (last_row - origin) / (hu.shape[0] - 1)
    x = np.floor(origin[0] + columns * step_column[0] + rows * step_row[0]).astype(int)
    y = np.floor(origin[1] + columns * step_column[1] + rows * step_row[1]).astype(int)
    height, width = shown.canvas.shape
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    assert inside.mean() > 0.95, f"{name}: the image is mostly outside the canvas ({state})"
    drawn = shown.canvas[y[inside], x[inside]]
    lower, upper = state["voi"]["lower"], state["voi"]["upper"]
    wanted = np.clip((hu[inside] - lower) / (upper - lower), 0, 1) * 255
    difference = np.abs(drawn - wanted)
    correlation = float(np.corrcoef(drawn, wanted)[0, 1])
    close = float((difference <= 12).mean())
    assert correlation > 0.98 and close > 0.98, (
        f"{name}: the viewport does not show the stored image: correlation {correlation:.3f}, {close:.1%} of the "
        f"pixels within 12 grey levels (median difference {np.median(difference):.1f}); VOI {lower}..{upper}")


# --- the tests -----------------------------------------------------------------------------------------------------


def test_study_list_shows_the_stored_studies(archive: Archive, browser: Any, tmp_path: Path) -> None:
    page, log = open_page(browser, f"{archive.url}/viewer/")
    page.get_by_text("Mosaic, Phantom").first.wait_for()
    page.get_by_text("CompressedSamples, CT1").first.wait_for()
    dismiss_tour(page)
    page.screenshot(path=str(tmp_path / "study-list.png"))
    text = page.inner_text("body")
    assert "E2E phantom" in text and "14-Mar-2024" in text, text
    assert "19-Jan-2004" in text, text
    assert page.evaluate("() => window.crossOriginIsolated") is True
    assert any(url.startswith(f"{archive.url}/dicom-web/studies?") for url, _ in log.dicomweb_requests), \
        log.dicomweb_requests
    assert not log.dicomweb_errors, log.dicomweb_errors
    assert not log.problems(), log.problems()
    assert not visible_errors(page), visible_errors(page)
    page.close()


def test_viewer_draws_the_phantom(archive: Archive, browser: Any, tmp_path: Path) -> None:
    shown = show_study(archive, browser, archive.phantom_uid, tmp_path, "phantom")
    canvas = shown.canvas
    assert len(np.unique(canvas.round())) > 100, "too few grey levels for the soft-tissue ramp"

    # Without OHIF's internals: the disc is the only saturated structure, in the upper right of the body.
    body = canvas > 8
    bright = canvas >= 250
    assert body.mean() > 0.2, "the body is missing (blank viewport?)"
    body_rows, body_columns = np.nonzero(body)
    top, bottom = body_rows.min(), body_rows.max()
    left, right = body_columns.min(), body_columns.max()
    disc_rows, disc_columns = np.nonzero(bright)
    assert len(disc_rows) > 0.01 * body.sum(), "no bright disc"
    disc_x = (disc_columns.mean() - left) / (right - left)
    disc_y = (disc_rows.mean() - top) / (bottom - top)
    wanted_x = (DISC_COLUMN - (BODY_COLUMN - BODY_HALF_WIDTH)) / (2 * BODY_HALF_WIDTH)
    wanted_y = (DISC_ROW - (BODY_ROW - BODY_HALF_HEIGHT)) / (2 * BODY_HALF_HEIGHT)
    assert abs(disc_x - wanted_x) < 0.06 and abs(disc_y - wanted_y) < 0.06, (disc_x, disc_y, wanted_x, wanted_y)
    tissue = body & ~bright
    third = (right - left) // 3
    left_mean = canvas[:, left:left + third][tissue[:, left:left + third]].mean()
    right_mean = canvas[:, right - third:right][tissue[:, right - third:right]].mean()
    assert right_mean - left_mean > 60, f"the ramp: {left_mean:.0f} on the left, {right_mean:.0f} on the right"

    # With the viewport's own geometry and window: pixel for pixel the stored slice, at the stored W/L.
    voi = shown.state["voi"]  # W 400 / L 40 (DICOM's linear function: -160 .. 239)
    assert abs(voi["lower"] - -160) <= 1 and abs(voi["upper"] - 240) <= 1, voi
    assert_drawn_as_stored(shown, archive.expected_hu[shown.sop_uid], name="phantom")

    # OHIF read the geometry: every series is a reconstructable volume, with no warning on its thumbnail.
    display_sets = shown.page.evaluate("""() => window.services.displaySetService.getActiveDisplaySets()
        .map(d => ({description: d.SeriesDescription, frames: d.numImageFrames, volume: d.isReconstructable,
                    warnings: (d.messages && d.messages.messages || []).length}))""")
    assert sorted(display_sets, key=lambda d: d["description"]) == [
        {"description": "Axial 10 mm", "frames": 4, "volume": True, "warnings": 0},
        {"description": "Axial 2.5 mm", "frames": 8, "volume": True, "warnings": 0},
        {"description": "Axial 5.0 mm", "frames": 8, "volume": True, "warnings": 0}], display_sets
    frame = next(url for url, _ in shown.log.dicomweb_requests if "/frames/" in url)
    # storescu -xi: stored as Implicit VR LE
    assert transfer_syntaxes(frame, auth_headers(archive.node)) == (IMPLICIT_LE, EXPLICIT_LE)
    shown.page.close()


def test_viewer_draws_ct_small(archive: Archive, browser: Any, tmp_path: Path) -> None:
    """pydicom's CT_small.dcm: STOW-RS in, Explicit VR LE, signed 16-bit, no window (OHIF computes one)."""
    shown = show_study(archive, browser, archive.ct_small_uid, tmp_path, "ct-small")
    assert len(np.unique(shown.canvas.round())) > 100
    assert_drawn_as_stored(shown, archive.expected_hu[shown.sop_uid], name="CT_small")
    frame = next(url for url, _ in shown.log.dicomweb_requests if "/frames/" in url)
    assert transfer_syntaxes(frame, auth_headers(archive.node)) == (EXPLICIT_LE, EXPLICIT_LE)
    shown.page.close()


def test_a_clinician_signs_in_at_the_hospitals_identity_provider_and_reads_in_the_viewer(
        archive: Archive, browser: Any, idp: IdentityProvider, tmp_path: Path) -> None:
    """Single sign-on in Chromium: the viewer sends the browser to the sign-in page, its "Sign in with …" button to
    the identity provider and back, and OHIF then lists what the provider's claims let the person see."""
    idp.person = {"name": "sso.clinician", "claims": {"roles": ["clinician"], "facilities": ["JFK IMAGING CENTER"]}}
    browser.clear_cookies()  # the same browser, now someone else's (one Playwright per process)
    try:
        page = browser.new_page()
        page.goto(f"{archive.url}/viewer/")
        assert page.url.startswith(f"{archive.url}/login?next="), page.url
        with page.expect_navigation(url=f"{archive.url}/viewer/"):
            page.get_by_role("link", name="Sign in with St. Elsewhere sign-in").click()
        page.close()
        page, log = open_page(browser, f"{archive.url}/viewer/")
        page.get_by_text("CompressedSamples, CT1").first.wait_for()
        dismiss_tour(page)
        page.screenshot(path=str(tmp_path / "sso-study-list.png"))
        text = page.inner_text("body")
        assert "Mosaic, Phantom" not in text and "E2E phantom" not in text, text
        assert not log.problems(), log.problems()
        page.close()
    finally:
        browser.clear_cookies()
        sign_in(browser, archive.url, "/viewer/", username="admin", password=ADMIN_PASSWORD)
    assert idp.requests[-1]["code_challenge_method"] == "S256"
    archive.node.audit.flush()
    logins = archive.node.audit.search(user="sso.clinician", action="login")[0]
    assert [row.outcome for row in logins] == ["success"]


def test_the_viewer_shows_a_scoped_clinician_only_their_studies(archive: Archive, browser: Any,
                                                                tmp_path: Path) -> None:
    """The access policy reaches the viewer: a clinician of one site signs in and OHIF's study list holds that
    site's study only; the other study's metadata answers like a study that does not exist."""
    archive.node.identity.add_user("jfk.clinician", roles=["clinician"], password="jfk-password",
                                   facilities=["JFK IMAGING CENTER"])
    browser.clear_cookies()  # the same browser, now someone else's (one Playwright per process)
    try:
        sign_in(browser, archive.url, "/viewer/", username="jfk.clinician", password="jfk-password")
        page, log = open_page(browser, f"{archive.url}/viewer/")
        page.get_by_text("CompressedSamples, CT1").first.wait_for()
        dismiss_tour(page)
        page.screenshot(path=str(tmp_path / "scoped-study-list.png"))
        text = page.inner_text("body")
        assert "Mosaic, Phantom" not in text and "E2E phantom" not in text, text
        answer = page.evaluate(f"""async () => {{
            const response = await fetch('/dicom-web/studies/{archive.phantom_uid}/metadata');
            return [response.status, await response.text()];
        }}""")
        assert answer[0] == 404 and "not in the archive" in answer[1], answer
        assert not log.problems(), log.problems()
        page.close()
    finally:
        browser.clear_cookies()
        sign_in(browser, archive.url, "/viewer/", username="admin", password=ADMIN_PASSWORD)
    archive.node.audit.flush()
    reads = archive.node.audit.search(user="jfk.clinician", study=archive.phantom_uid)[0]
    assert reads and all(row.outcome == "denied" for row in reads)
