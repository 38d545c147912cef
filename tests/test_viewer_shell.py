"""The OHIF viewer shell: the install step's rewrite, ``mount_viewer``'s HTTP behaviour, and a real browser.

The browser tests start a real uvicorn server on 127.0.0.1 with an app that mounts ``build/viewer`` (prepared by
``scripts/install-viewer.sh``, which ``make install`` runs) and drive Debian's ``/usr/bin/chromium`` headless through
Playwright (never ``playwright install``: its browser download is not reachable here).

DICOMweb is a STUB in this file (see :func:`make_app`): ``/dicom-web/studies`` answers ``[]`` as
``application/dicom+json`` for the study list, plus one synthetic 64x64 CT study when asked for by its UID. The real
DICOMweb service (``mosaic.dicomweb``) is written and tested separately by someone else; these tests only check that
the viewer shell loads (every lazy chunk, worker and wasm from under /viewer/), is cross-origin isolated, queries
the same origin, skips its first-visit tour and draws a frame.

Missing pieces FAIL, not skip (``make test`` installs them): the prepared viewer, ``/usr/bin/chromium``
(scripts/install-system-deps.sh) and the ``playwright`` package (the ``test`` extra).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from mosaic.viewer import mount_viewer, render_app_config
from mosaic.viewer.build import METADATA_NAME, RewriteError, rewrite
from tests.browser import chromium_context, open_page, viewer_dir

IMMUTABLE = "public, max-age=31536000, immutable"
DICOM_JSON = "application/dicom+json"


def app_bundle(directory: Path) -> Path:
    bundles = sorted(directory.glob("app.bundle.*.js"))
    assert len(bundles) == 1, bundles
    return bundles[0]


# --------------------------------------------------------------------------------------------------------------------
# The rewrite (mosaic.viewer.build), on a small synthetic build shaped like OHIF's dist/
# --------------------------------------------------------------------------------------------------------------------

FAKE_INDEX = (
    '<!doctype html><html><head><meta name="msapplication-TileImage" content="/assets/tile.png">'
    '<script>window.PUBLIC_URL="/"</script><link rel="manifest" href="/manifest.json">'
    '<link rel="icon" href="/assets/favicon.ico"><script src="/app-config.js"></script>'
    '<script>window.PUBLIC_URL="/"</script><script defer src="/app.bundle.0123456789abcdef.js"></script>'
    '<link href="/app.bundle.css" rel="stylesheet"><a href="//example.org/x">x</a></head><body></body></html>'
)
FAKE_BUNDLE = (
    '__webpack_require__.p = "/";\n'
    "const v = await window.browserImportFunction('/dicom-microscopy-viewer/dicomMicroscopyViewer.min.js');\n"
    "const s = firstOpenIdClient.silent_redirect_uri || '/silent-refresh.html';\n"
)


def make_fake_dist(root: Path) -> Path:
    dist = root / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "dicom-microscopy-viewer").mkdir()
    (dist / "index.html").write_text(FAKE_INDEX)
    (dist / "app.bundle.0123456789abcdef.js").write_text(FAKE_BUNDLE)
    (dist / "decode.bundle.fedcba9876543210.js").write_text('(() => {\n__webpack_require__.p = "/";\n})();\n')
    (dist / "app.bundle.css").write_text("@font-face{src:url(/aaaabbbbccccdddd.woff2) format(\"woff2\")}")
    (dist / "aaaabbbbccccdddd.woff2").write_bytes(b"wOF2")
    (dist / "manifest.json").write_text(json.dumps({"icons": [{"src": "/assets/icon.png"}]}))
    (dist / "assets" / "icon.png").write_bytes(b"\x89PNG")
    (dist / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    (dist / "dicom-microscopy-viewer" / "dicomMicroscopyViewer.min.js").write_text("// viewer")
    (dist / "sw.js").write_text('self.__precache = [{"url":"/app.bundle.css"},'
                                '{"url":"/dicom-microscopy-viewer/x.wasm"}];')
    (dist / "silent-refresh.html").write_text("<html></html>")
    (dist / "app-config.js").write_text("window.config = {};")
    (dist / "_redirects").write_text("/* /index.html 200\n")
    (dist / "serve.json").write_text("{}")
    return dist


def test_rewrite_prefixes_every_baked_in_root(tmp_path: Path) -> None:
    dist = make_fake_dist(tmp_path)
    out = tmp_path / "viewer"
    rewrite(dist, out, "/pacs/viewer", version="9.9.9", log=lambda _line: None)

    index = (out / "index.html").read_text()
    assert index.count('window.PUBLIC_URL="/pacs/viewer/"') == 2
    for reference in ('content="/pacs/viewer/assets/tile.png"', 'href="/pacs/viewer/manifest.json"',
                      'src="/pacs/viewer/app-config.js"', 'src="/pacs/viewer/app.bundle.0123456789abcdef.js"',
                      'href="/pacs/viewer/app.bundle.css"', 'href="//example.org/x"'):
        assert reference in index
    bundle = (out / "app.bundle.0123456789abcdef.js").read_text()
    assert '__webpack_require__.p = "/pacs/viewer/";' in bundle
    assert "'/pacs/viewer/dicom-microscopy-viewer/dicomMicroscopyViewer.min.js'" in bundle
    assert "'/silent-refresh.html'" in bundle  # resolved by OHIF against routerBasename: left alone
    assert '__webpack_require__.p = "/pacs/viewer/";' in (out / "decode.bundle.fedcba9876543210.js").read_text()
    assert "url(/pacs/viewer/aaaabbbbccccdddd.woff2)" in (out / "app.bundle.css").read_text()
    assert json.loads((out / "manifest.json").read_text())["icons"][0]["src"] == "/pacs/viewer/assets/icon.png"
    sw = (out / "sw.js").read_text()
    assert '"url":"/pacs/viewer/app.bundle.css"' in sw and '"url":"/pacs/viewer/dicom-microscopy-viewer/x.wasm"' in sw
    assert "/pacs/viewer/pacs/viewer" not in sw

    for dropped in ("app-config.js", "_redirects", "serve.json"):
        assert not (out / dropped).exists()
    assert (out / "assets" / "icon.png").read_bytes() == b"\x89PNG"
    assert json.loads((out / METADATA_NAME).read_text())["prefix"] == "/pacs/viewer/"
    # Hard-linked originals are never written through.
    assert (dist / "index.html").read_text() == FAKE_INDEX
    assert (dist / "app.bundle.0123456789abcdef.js").read_text() == FAKE_BUNDLE

    # Rebuilding replaces the output.
    rewrite(dist, out, "/viewer", log=lambda _line: None)
    assert '__webpack_require__.p = "/viewer/";' in (out / "app.bundle.0123456789abcdef.js").read_text()
    assert not list(tmp_path.glob("viewer.*"))


def test_rewrite_refuses_an_unknown_root_reference(tmp_path: Path) -> None:
    dist = make_fake_dist(tmp_path)
    (dist / "lazy.bundle.0000111122223333.js").write_text("img.src = '/assets/icon.png';\n")
    with pytest.raises(RewriteError, match=r"lazy\.bundle\.0000111122223333\.js: '/assets/icon\.png'"):
        rewrite(dist, tmp_path / "viewer", "/viewer/", log=lambda _line: None)
    assert not (tmp_path / "viewer").exists()
    assert not list(tmp_path.glob("viewer.*"))


def test_rewrite_refuses_a_build_without_a_public_path(tmp_path: Path) -> None:
    dist = make_fake_dist(tmp_path)
    for bundle in dist.glob("*.bundle.*.js"):
        bundle.write_text(bundle.read_text().replace('__webpack_require__.p = "/";', ""))
    with pytest.raises(RewriteError, match="webpack public path"):
        rewrite(dist, tmp_path / "viewer", "/viewer/", log=lambda _line: None)


def test_the_installed_build_is_prepared_for_viewer() -> None:
    directory = viewer_dir()
    assert json.loads((directory / METADATA_NAME).read_text())["prefix"] == "/viewer/"
    index = (directory / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/"' in index
    assert 'src="/viewer/app-config.js"' in index
    assert '="/' not in index.replace('="/viewer/', "")
    assert '__webpack_require__.p = "/viewer/";' in app_bundle(directory).read_text()
    assert not (directory / "app-config.js").exists()


# --------------------------------------------------------------------------------------------------------------------
# mount_viewer over HTTP
# --------------------------------------------------------------------------------------------------------------------


# A synthetic study that only the viewer-route test asks for (by StudyInstanceUID): one CT series, one 64x64
# 16-bit instance whose pixel data is a horizontal ramp.
STUDY_UID = "1.2.826.0.1.3680043.8.498.7001"
SERIES_UID = f"{STUDY_UID}.1"
SOP_UID = f"{SERIES_UID}.1"
SIZE = 64


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def _stub_study() -> dict[str, Any]:
    return {"0020000D": _element("UI", STUDY_UID), "00100010": _element("PN", {"Alphabetic": "Shell^Test"}),
            "00100020": _element("LO", "SHELL-1"), "00080020": _element("DA", "20240101"),
            "00080061": _element("CS", "CT"), "00081030": _element("LO", "Viewer shell test"),
            "00201206": _element("IS", 1), "00201208": _element("IS", 1)}


def _stub_series() -> dict[str, Any]:
    return {"0020000D": _element("UI", STUDY_UID), "0020000E": _element("UI", SERIES_UID),
            "00080060": _element("CS", "CT"), "00200011": _element("IS", 1), "00201209": _element("IS", 1)}


def _stub_instance(base_url: str) -> dict[str, Any]:
    frame = f"{base_url}/dicom-web/studies/{STUDY_UID}/series/{SERIES_UID}/instances/{SOP_UID}/frames/1"
    return {**_stub_study(), **_stub_series(),
            "00080016": _element("UI", "1.2.840.10008.5.1.4.1.1.2"), "00080018": _element("UI", SOP_UID),
            "00020010": _element("UI", "1.2.840.10008.1.2.1"), "00200013": _element("IS", 1),
            "00280002": _element("US", 1), "00280004": _element("CS", "MONOCHROME2"),
            "00280010": _element("US", SIZE), "00280011": _element("US", SIZE), "00280100": _element("US", 16),
            "00280101": _element("US", 16), "00280102": _element("US", 15), "00280103": _element("US", 0),
            "00280030": _element("DS", 1, 1), "00200032": _element("DS", 0, 0, 0),
            "00200037": _element("DS", 1, 0, 0, 0, 1, 0), "00281050": _element("DS", 2000),
            "00281051": _element("DS", 4000), "00281052": _element("DS", 0), "00281053": _element("DS", 1),
            "7FE00010": {"vr": "OW", "BulkDataURI": frame}}


def _stub_frame() -> Response:
    pixels = b"".join(struct.pack("<H", x * 4000 // SIZE) for _y in range(SIZE) for x in range(SIZE))
    boundary = "mosaic-stub-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n"
            .encode() + pixels + f"\r\n--{boundary}--\r\n".encode())
    return Response(body, media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


def make_app(directory: Path, calls: list[str] | None = None, *, prefix: str = "/viewer") -> FastAPI:
    """An app that mounts the viewer next to a STUB of DICOMweb.

    STUB, not Mosaic's DICOMweb: the real service (mosaic.dicomweb) is being written separately. The study list
    query answers ``[]`` (an empty archive is enough to render OHIF's study list); the one synthetic study above
    is answered only when asked for by its UID, so the viewer route has something to display. Every request is
    recorded (with its Accept header) to check that the viewer asks this origin, and how.
    """
    app = FastAPI()
    log = calls if calls is not None else []

    def record(request: Request) -> None:
        log.append(f"{request.url} accept={request.headers.get('accept', '')}")

    @app.get("/dicom-web/studies")
    def studies(request: Request) -> Response:
        record(request)
        query = request.query_params
        wanted = query.get("StudyInstanceUID") == STUDY_UID or query.get("00100020") == "SHELL-1"
        found = [_stub_study()] if wanted else []
        return Response(json.dumps(found), media_type=DICOM_JSON)

    @app.get("/dicom-web/studies/{study}/series")
    def series(study: str, request: Request) -> Response:
        record(request)
        return Response(json.dumps([_stub_series()] if study == STUDY_UID else []), media_type=DICOM_JSON)

    @app.get("/dicom-web/studies/{study}/series/{series}/metadata")
    def metadata(study: str, series: str, request: Request) -> Response:
        record(request)
        if (study, series) != (STUDY_UID, SERIES_UID):
            return Response("[]", status_code=404, media_type=DICOM_JSON)
        base_url = str(request.base_url).rstrip("/")
        return Response(json.dumps([_stub_instance(base_url)]), media_type=DICOM_JSON)

    @app.get("/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
    def frames(study: str, series: str, instance: str, frames: str, request: Request) -> Response:
        record(request)
        if (study, series, instance, frames) != (STUDY_UID, SERIES_UID, SOP_UID, "1"):
            return Response(status_code=404)
        return _stub_frame()

    mount_viewer(app, directory, dicomweb_root="/dicom-web", prefix=prefix)
    return app


@dataclass
class LiveServer:
    url: str
    calls: list[str] = field(default_factory=list)


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="viewer-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start", pytrace=False)
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    calls: list[str] = []
    with serve(make_app(viewer_dir(), calls)) as url:
        yield LiveServer(url, calls)


@pytest.fixture
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=30, follow_redirects=False) as client:
        yield client


def assert_isolated(response: httpx.Response) -> None:
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert response.headers["cross-origin-embedder-policy"] == "require-corp"
    assert response.headers["cross-origin-resource-policy"] == "same-origin"


def test_index_and_spa_routes_serve_the_shell(http: httpx.Client) -> None:
    index = (viewer_dir() / "index.html").read_text()
    for path in ("/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/segmentation?StudyInstanceUIDs=1.2.3",
                 "/viewer/viewer/dicomweb/1.2.840.1", "/viewer/index.html"):
        response = http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html"), path
        assert response.text == index, path
        assert response.headers["cache-control"] == "no-cache", path
        assert_isolated(response)

    redirect = http.get("/viewer", params={"StudyInstanceUIDs": "1.2.3"})
    assert redirect.status_code == 307
    assert redirect.headers["location"] == "/viewer/?StudyInstanceUIDs=1.2.3"
    assert http.head("/viewer/viewer?StudyInstanceUIDs=1.2.3").status_code == 200


def test_assets_cache_headers_and_not_found(http: httpx.Client) -> None:
    directory = viewer_dir()
    bundle = http.get(f"/viewer/{app_bundle(directory).name}")
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert bundle.headers["cache-control"] == IMMUTABLE
    assert_isolated(bundle)
    wasm = sorted(directory.glob("*.wasm"))[0]
    response = http.get(f"/viewer/{wasm.name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/wasm"
    assert response.headers["cache-control"] == IMMUTABLE

    css = http.get("/viewer/app.bundle.css")  # not content-hashed: revalidated
    assert css.status_code == 200 and css.headers["cache-control"] == "no-cache"
    assert "url(/viewer/" in css.text
    assert http.get("/viewer/app.bundle.css", headers={"If-None-Match": css.headers["etag"]}).status_code == 304

    for missing in ("/viewer/1234.bundle.0000000000000000.js", "/viewer/nope.css", "/viewer/assets/nope.png"):
        response = http.get(missing)
        assert response.status_code == 404, missing
        assert_isolated(response)
    for hidden in (f"/viewer/{METADATA_NAME}", "/viewer/.install-stamp"):
        assert http.get(hidden).status_code == 404
    escaped = http.get("/viewer/..%2F..%2Fpyproject.toml")
    assert "[project]" not in escaped.text


def test_app_config_is_generated(http: httpx.Client) -> None:
    response = http.get("/viewer/app-config.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "no-cache"
    assert_isolated(response)
    text = response.text
    assert text == render_app_config(dicomweb_root="/dicom-web", prefix="/viewer")
    for expected in ('"routerBasename": "/viewer"', '"qidoRoot": "/dicom-web"', "window.location.origin",
                     '"imageRendering": "wadors"', '"thumbnailRendering": "wadors"', '"supportsFuzzyMatching": true',
                     '"enableStudyLazyLoad": true', '"bulkDataURI": {\n', '"ohif.tours"'):
        assert expected in text, expected
    with pytest.raises(ValueError):
        render_app_config(dicomweb_root="dicom-web")


def test_missing_viewer_is_a_503_until_installed(tmp_path: Path) -> None:
    target = tmp_path / "viewer"
    with serve(make_app(target)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for path in ("/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/app-config.js"):
            response = client.get(path)
            assert response.status_code == 503, path
            assert response.headers["content-type"].startswith("text/html")
            assert "make install" in response.text and "scripts/install-viewer.sh" in response.text
            assert response.headers["cache-control"] == "no-store"
        assert client.get("/dicom-web/studies").status_code == 200

        os.symlink(viewer_dir(), target)  # installed while running: no restart needed
        response = client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
        assert response.status_code == 200
        assert 'window.PUBLIC_URL="/viewer/"' in response.text


def test_a_build_for_another_prefix_is_a_503(tmp_path: Path) -> None:
    copy = tmp_path / "viewer"
    copy.mkdir()
    shutil.copy(viewer_dir() / "index.html", copy / "index.html")
    shutil.copy(viewer_dir() / METADATA_NAME, copy / METADATA_NAME)
    with serve(make_app(copy, prefix="/ohif")) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.get("/ohif/")
        assert response.status_code == 503
        assert "VIEWER_PREFIX=/ohif/" in response.text
        assert client.get("/viewer/").status_code == 404


# --------------------------------------------------------------------------------------------------------------------
# A real browser: Debian's chromium, driven by Playwright
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


def test_browser_renders_the_study_list(live_server: LiveServer, browser_context: Any, tmp_path: Path) -> None:
    page, log = open_page(browser_context, f"{live_server.url}/viewer/")
    page.get_by_text("No studies available").wait_for()
    page.get_by_text("Study List").first.wait_for()
    screenshot = tmp_path / "study-list.png"
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000

    assert page.evaluate("() => window.crossOriginIsolated") is True
    assert page.evaluate("() => typeof SharedArrayBuffer") == "function"
    source = page.evaluate("() => window.config.dataSources[0].configuration")
    assert source["qidoRoot"] == f"{live_server.url}/dicom-web"
    assert source["wadoRoot"] == f"{live_server.url}/dicom-web"
    assert page.evaluate("() => window.PUBLIC_URL") == "/viewer/"
    assert page.evaluate("() => location.pathname") == "/viewer/"
    # investigationalUseDialog "never": OHIF's banner would otherwise cover the bottom of every page.
    assert page.get_by_text("Confirm and hide").count() == 0
    assert page.evaluate("() => window.config.customizationService[0]['ohif.tours']") == {"$set": []}

    qido = [call for call in live_server.calls if "/dicom-web/studies?" in call]
    assert qido, live_server.calls
    assert qido[0].startswith(f"{live_server.url}/dicom-web/studies?") and "fuzzymatching=true" in qido[0]
    assert [chunk for chunk in log.chunks if "/app.bundle." not in chunk], "no lazy chunk loaded from /viewer/"
    assert not log.problems(), log.problems()
    page.close()


def test_browser_opens_the_viewer_route(live_server: LiveServer, browser_context: Any) -> None:
    """The viewer mode pulls most lazy chunks and starts the decode and histogram workers from the public path."""
    page, log = open_page(browser_context, f"{live_server.url}/viewer/viewer?StudyInstanceUIDs=1.2.3")
    page.get_by_text("not available").first.wait_for()  # the stub archive has no such study
    assert page.evaluate("() => window.crossOriginIsolated") is True
    assert any("StudyInstanceUID=1.2.3" in call for call in live_server.calls), live_server.calls
    assert len(log.chunks) >= 10, log.chunks
    assert any("worker" in chunk for chunk in log.chunks), log.chunks
    assert not log.problems(), log.problems()
    page.close()


def test_browser_displays_a_study_without_the_tour(live_server: LiveServer, browser_context: Any,
                                                   tmp_path: Path) -> None:
    """The stub study: WADO-RS metadata and one frame decoded by the image loader's worker, drawn in a viewport."""
    page, log = open_page(browser_context, f"{live_server.url}/viewer/viewer?StudyInstanceUIDs={STUDY_UID}")
    frame_calls: list[str] = []
    deadline = time.monotonic() + 60
    while not frame_calls and time.monotonic() < deadline:
        page.wait_for_timeout(200)
        frame_calls = [call for call in live_server.calls if f"/instances/{SOP_UID}/frames/1" in call]
    assert frame_calls, live_server.calls
    assert "accept=multipart/related; type=application/octet-stream; transfer-syntax=*" in frame_calls[0]
    canvas = page.locator(".cornerstone-viewport-element canvas").first
    canvas.wait_for()
    from PIL import Image

    levels = 0
    for _attempt in range(50):  # the first frame is drawn shortly after it arrives
        shot = tmp_path / "viewport.png"
        canvas.screenshot(path=str(shot))
        with Image.open(shot) as image:
            levels = sum(1 for count in image.convert("L").histogram() if count)
        if levels > 32:
            break
        page.wait_for_timeout(200)
    page.screenshot(path=str(tmp_path / "viewer.png"))
    assert levels > 32, f"the viewport shows {levels} grey levels: the ramp was not drawn"
    assert page.locator(".shepherd-element").count() == 0, "OHIF's first-visit tour is showing"
    assert page.evaluate("() => window.crossOriginIsolated") is True
    assert not log.problems(), log.problems()
    page.close()
