"""Playwright helpers shared by the browser tests (no tests here): Debian's ``/usr/bin/chromium`` driven headless.

Never ``playwright install``: its browser download is not reachable here. A missing ``/usr/bin/chromium``
(scripts/install-system-deps.sh) or ``playwright`` package (the ``test`` extra) FAILS the test, it does not skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mosaic.viewer.build import METADATA_NAME

REPO = Path(__file__).resolve().parents[1]
VIEWER_DIR = REPO / "build" / "viewer"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def viewer_dir() -> Path:
    """``build/viewer``, the OHIF build prepared for ``/viewer/`` by ``make install``; fails the test when missing."""
    if not (VIEWER_DIR / "index.html").is_file() or not (VIEWER_DIR / METADATA_NAME).is_file():
        pytest.fail(f"the OHIF viewer is not prepared in {VIEWER_DIR}: run `make install` "
                    "(or scripts/install-viewer.sh)", pytrace=False)
    return VIEWER_DIR


@dataclass
class PageLog:
    """What a page did on the network and in its console, recorded from the moment it was opened."""

    bad_responses: list[str] = field(default_factory=list)
    """4xx/5xx answers to requests under ``/viewer/``."""
    dicomweb_errors: list[str] = field(default_factory=list)
    """4xx/5xx answers to requests under ``/dicom-web/``."""
    dicomweb_requests: list[tuple[str, str]] = field(default_factory=list)
    """(URL, Accept header) of every request under ``/dicom-web/``, in order."""
    failed_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        chunk_errors = [m for m in self.console_errors if "ChunkLoadError" in m or "Loading chunk" in m
                        or "Loading CSS chunk" in m or "/viewer/" in m]
        return self.bad_responses + self.failed_requests + self.page_errors + chunk_errors


@contextmanager
def chromium_context(profile: Path, *, width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A persistent Playwright context of headless Debian chromium with a fresh profile in ``profile``."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-system-deps.sh (Debian package chromium)",
                    pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]' (never `playwright install`)",
                    pytrace=False)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            context.close()


def open_page(context: Any, url: str) -> tuple[Any, PageLog]:
    """A new page of ``context`` at ``url``, with a :class:`PageLog` that records it (listeners set first)."""
    log = PageLog()
    page = context.new_page()

    def on_response(response: Any) -> None:
        if "/viewer/" in response.url and response.status >= 400:
            log.bad_responses.append(f"{response.status} {response.url}")
        if "/dicom-web/" in response.url and response.status >= 400:
            log.dicomweb_errors.append(f"{response.status} {response.url}")

    def on_request(request: Any) -> None:
        if "/viewer/" in request.url and ".bundle." in request.url:
            log.chunks.append(request.url)
        if "/dicom-web/" in request.url:
            log.dicomweb_requests.append((request.url, request.headers.get("accept", "")))

    page.on("response", on_response)
    page.on("request", on_request)
    page.on("requestfailed", lambda request: log.failed_requests.append(f"failed {request.url} {request.failure}"))
    page.on("console", lambda message: log.console_errors.append(message.text)
            if message.type == "error" else None)
    page.on("pageerror", lambda error: log.page_errors.append(f"page error: {error}"))
    page.goto(url)
    return page, log


def sign_in(context: Any, base_url: str, path: str, *, username: str, password: str) -> None:
    """Sign ``context`` in through Mosaic's sign-in page, the way a person does: open ``path`` without a session
    (Mosaic sends the browser to ``/login``), fill in the form, and land on ``path`` with a session cookie."""
    page = context.new_page()
    try:
        page.goto(f"{base_url}{path}")
        assert page.url.startswith(f"{base_url}/login?next="), f"not sent to the sign-in page: {page.url}"
        page.fill('input[name="username"]', username)
        page.fill('input[name="password"]', password)
        with page.expect_navigation():
            page.get_by_role("button", name="Sign in").click()
        assert page.url == f"{base_url}{path}", f"not back on {path} after signing in: {page.url}"
        assert any(cookie["name"] == "mosaic_session" for cookie in context.cookies(base_url)), context.cookies()
    finally:
        page.close()
