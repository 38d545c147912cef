"""The pages in headless Chromium (Debian's /usr/bin/chromium via Playwright): a clinician signs in and sees the
navigation, an auditor lands on something usable, a refusal is a page, and break-glass by patient name opens the
study in the viewer (which links back) with the badge on the next page. Screenshots at desktop and phone size go to
/tmp/pages-shots/ for a person to look at."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, SecuritySettings, Settings
from tests.browser import chromium_context, viewer_dir
from tests.factory import make_instance, to_bytes

SHOTS = Path("/tmp/pages-shots")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
OTHER_SITE_STUDY = "1.2.826.0.1.3680043.10.1236.2"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    security = SecuritySettings(initial_admin_password="admin password 123", credential_cache_seconds=0)
    node = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("pages-browser"),
                           http=HttpSettings(port=0, viewer_dir=viewer_dir()),  # type: ignore[call-arg]
                           dicom=DicomSettings(port=0), security=security))
    node.start(dicom=False)
    node.ingest.store(to_bytes(make_instance(patient_id="DERM-1", patient_name="Skin^Sam", accession="A-1",
                                             study_uid="1.2.826.0.1.3680043.10.1236.1", study_date="20240212")),
                      door="import", facility="SITE-A", department="DERMATOLOGY")
    node.ingest.store(to_bytes(make_instance(patient_id="PSY-1", patient_name="Mind^Max", accession="B-1",
                                             study_uid=OTHER_SITE_STUDY, study_date="20230405")),
                      door="import", facility="SITE-B", department="PSYCHIATRY")
    node.identity.add_user("derm", roles=["clinician"], password="derm-password", facilities=["SITE-A"],
                           departments=["DERMATOLOGY"])
    node.identity.add_user("auditor", roles=["auditor"], password="auditor-password")
    try:
        yield f"http://127.0.0.1:{node.http_port}"
    finally:
        node.stop()


@pytest.fixture
def context(tmp_path: Path) -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_context(tmp_path / "profile", **DESKTOP) as browser:
        yield browser


def shoot(page: Any, name: str) -> None:
    """The page at desktop and at phone size, whole."""
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=str(SHOTS / f"{name}-{size}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)


def sign_in(page: Any, base_url: str, username: str, password: str, path: str = "/") -> None:
    page.goto(base_url + path)
    assert "/login?next=" in page.url
    shoot(page, "login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def nav_links(page: Any) -> list[str]:
    return [str(link.inner_text()) for link in page.locator('nav[aria-label="Main"] a').all()]


def test_a_clinician_signs_in_and_sees_the_navigation(base_url: str, context: Any) -> None:
    page = context.new_page()
    sign_in(page, base_url, "derm", "derm-password")
    assert page.url == base_url + "/"
    assert nav_links(page) == ["Patients", "Recent studies", "Viewer", "Emergency access"]
    assert page.get_by_role("heading", name="Recent studies").is_visible()
    assert page.get_by_text("Skin Sam").is_visible() and page.get_by_text("Mind Max").count() == 0
    page.keyboard.press("Tab")  # the skip link first, visible when focused
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    shoot(page, "landing-clinician")
    page.set_viewport_size(PHONE)  # the table scrolls inside its box; the page itself does not scroll sideways
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate("(() => { const box = document.querySelector('.scroll');"
                         " return box.scrollWidth > box.clientWidth; })()")


def test_an_auditor_lands_on_the_audit_trail_and_a_clinician_on_a_refusal_page(base_url: str, context: Any
                                                                               ) -> None:
    page = context.new_page()
    sign_in(page, base_url, "auditor", "auditor-password")
    assert page.url == base_url + "/audit"
    assert page.get_by_role("heading", name="Audit trail").is_visible() and nav_links(page) == ["Audit trail"]
    page.get_by_role("button", name="Search").click()  # every field empty
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="Audit trail").is_visible() and "matching record" in page.content()
    shoot(page, "audit")
    page.get_by_label("User").fill("derm")
    page.get_by_role("button", name="Search").click()
    page.wait_for_load_state()
    assert "user=derm" in page.url
    context.clear_cookies()
    clinician = context.new_page()
    sign_in(clinician, base_url, "derm", "derm-password", path="/audit")
    answer = clinician.goto(base_url + "/audit")
    assert answer.status == 403 and answer.headers["content-type"].startswith("text/html")
    assert clinician.get_by_role("heading", name="Not allowed").is_visible()
    assert clinician.get_by_role("alert").inner_text().startswith("derm (clinician) may not read-audit")
    shoot(clinician, "refused")


def test_break_glass_by_patient_name_opens_the_study_and_the_badge_shows(base_url: str, context: Any) -> None:
    page = context.new_page()
    sign_in(page, base_url, "derm", "derm-password")
    page.get_by_role("link", name="Emergency access").click()
    page.get_by_label("Patient name").fill("mind*")
    page.get_by_role("button", name="Search all studies").click()
    page.wait_for_load_state()
    assert page.get_by_role("cell", name="SITE-B").is_visible()
    shoot(page, "break-glass-found")
    page.get_by_label("Mind Max", exact=False).first.check()
    page.locator("#reason-search").fill("unconscious patient in the ED")
    with page.expect_navigation():
        page.locator("#open-form").get_by_role("button", name="Open the study").click()
    assert page.url.endswith(f"/viewer/viewer?StudyInstanceUIDs={OTHER_SITE_STUDY}")
    back = page.locator("a[data-mosaic-home]")
    back.wait_for()
    page.screenshot(path=str(SHOTS / "viewer-desktop.png"))
    with page.expect_navigation():
        back.click()
    assert page.url == base_url + "/"
    badge = page.locator("aside.glass a.badge")
    assert badge.inner_text().startswith("Emergency access: Mind Max until ")
    assert badge.get_attribute("href") == f"/viewer/viewer?StudyInstanceUIDs={OTHER_SITE_STUDY}"
    assert page.get_by_text("Mind Max").count() >= 2  # the badge, and the opened study among the recent ones
    shoot(page, "landing-with-badge")
