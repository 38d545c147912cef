"""The web pages over real HTTP against a real node: one layout and navigation, HTML (never JSON) for a browser's
errors and refusals while API clients keep their answers, the audit search with empty fields, and break-glass found
by patient with its badge on every page."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, SecuritySettings, Settings
from mosaic.viewer import render_app_config
from tests.factory import make_instance, to_bytes
from tests.helpers import LOCALHOST

PAGE = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
DERM_STUDY = "1.2.826.0.1.3680043.10.1235.1"
PSY_STUDY = "1.2.826.0.1.3680043.10.1235.2"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    security = SecuritySettings(initial_admin_password="admin password 123", credential_cache_seconds=0)
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("pages"), http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0), security=security))
    mosaic.start(dicom=False)
    mosaic.ingest.store(to_bytes(make_instance(patient_id="DERM-1", patient_name="Skin^Sam", accession="A-1",
                                               study_uid=DERM_STUDY)),
                        door="import", facility="SITE-A", department="DERMATOLOGY")
    mosaic.ingest.store(to_bytes(make_instance(patient_id="PSY-1", patient_name="Mind^Max", accession="B-1",
                                               study_uid=PSY_STUDY, study_date="20230405")),
                        door="import", facility="SITE-B", department="PSYCHIATRY")
    for number in range(25):  # more than a break-glass search shows
        mosaic.ingest.store(to_bytes(make_instance(patient_id=f"MANY-{number}", patient_name=f"Many^Patient{number}",
                                                   accession=f"M-{number}",
                                                   study_uid=f"1.2.826.0.1.3680043.10.1235.100.{number}")),
                            door="import", facility="SITE-B", department="PSYCHIATRY")
    identity = mosaic.identity
    identity.add_user("derm", roles=["clinician"], password="derm-password", facilities=["SITE-A"],
                      departments=["DERMATOLOGY"])
    identity.add_user("auditor", roles=["auditor"], password="auditor-password")
    identity.add_user("research", roles=["researcher"], password="research-password")
    yield mosaic
    mosaic.stop()


@contextmanager
def browser(node: Mosaic, username: str, password: str) -> Iterator[httpx.Client]:
    """A signed-in browser: Accept as a browser sends it, the session cookie from the sign-in form."""
    with httpx.Client(base_url=f"http://{LOCALHOST}:{node.http_port}", headers=PAGE) as client:
        client.get("/login")
        signed_in = client.post("/login", data={"username": username, "password": password,
                                                "csrf_token": client.cookies["mosaic_login_csrf"]})
        assert signed_in.status_code == 303, signed_in.text
        yield client


def csrf_of(html: str) -> str:
    return html.split('name="csrf_token" value="')[1].split('"')[0]


def links(html: str) -> set[str]:
    return set(re.findall(r'href="([^"]+)"', html))


def audit_rows(node: Mosaic, **filters: Any) -> list[Any]:
    node.audit.flush()
    return node.audit.search(limit=1000, **filters)[0]


def test_the_sign_in_page_is_the_layout_without_navigation(node: Mosaic) -> None:
    answer = httpx.get(f"http://{LOCALHOST}:{node.http_port}/login", headers=PAGE)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    html = answer.text
    assert '<link rel="stylesheet" href="/static/mosaic.css">' in html
    assert '<label for="username">' in html and '<label for="password">' in html
    assert 'aria-label="Main"' not in html and "Sign out" not in html
    style = httpx.get(f"http://{LOCALHOST}:{node.http_port}/static/mosaic.css")
    assert style.status_code == 200 and ":focus-visible" in style.text


def test_a_clinician_sees_the_navigation_of_what_they_may_open(node: Mosaic) -> None:
    with browser(node, "derm", "derm-password") as client:
        html = client.get("/").text
        assert {"/portal", "/", "/viewer/", "/break-glass"} <= links(html)
        assert "/audit" not in links(html) and "/api/audit/verify" not in links(html)
        assert 'action="/logout"' in html and "signed in as <b>derm</b>" in html
        assert "Skin Sam" in html and "Mind Max" not in html  # only their site's studies


def test_an_auditor_who_signs_in_lands_on_the_audit_trail(node: Mosaic) -> None:
    with browser(node, "auditor", "auditor-password") as client:
        landing = client.get("/", follow_redirects=True)
        assert landing.status_code == 200 and str(landing.url).endswith("/audit")
        assert landing.headers["content-type"].startswith("text/html") and "<h1>Audit trail</h1>" in landing.text
        assert links(landing.text) >= {"/audit"} and "/break-glass" not in links(landing.text)
        # an API client asking the same is refused as before
        api = client.get("/", headers={"Accept": "application/json"})
        assert api.status_code == 403 and "may not query" in api.json()["error"]


def test_a_user_with_no_page_is_told_so_in_a_page(node: Mosaic) -> None:
    with browser(node, "research", "research-password") as client:
        answer = client.get("/")
        assert answer.status_code == 403 and answer.headers["content-type"].startswith("text/html")
        assert "may not query" in answer.text and "only the API" in answer.text


def test_a_refusal_is_a_page_for_a_browser_and_json_for_api_clients(node: Mosaic) -> None:
    with browser(node, "derm", "derm-password") as client:
        refused = client.get("/audit")
        assert refused.status_code == 403 and refused.headers["content-type"].startswith("text/html")
        api = client.get("/audit", headers={"Accept": "application/json"})
        assert api.status_code == 403 and api.json()["error"]
        sentence = api.json()["error"]
        assert sentence in refused.text and "not allowed to open this" in refused.text
        assert "Traceback" not in refused.text and 'href="/"' in refused.text
        assert "/audit" not in links(refused.text)  # the page links only to what derm may open
        # API paths keep their formats whatever the Accept header
        for path in ("/api/audit", f"/dicom-web/studies/{PSY_STUDY}/metadata", "/fhir/Patient/999999", "/api/users"):
            answer = client.get(path)
            assert not answer.headers.get("content-type", "").startswith("text/html"), path
            assert answer.status_code in (403, 404), path
        missing = client.get("/no-such-page")
        assert missing.status_code == 404 and "there is no page at this address." in missing.text
        assert client.get("/no-such-page", headers={"Accept": "application/json"}).json() == {"detail": "Not Found"}
        invalid = client.get("/", params={"limit": "many"})
        assert invalid.status_code == 400 and "limit" in invalid.text
        assert client.get("/", params={"limit": "many"}, headers={"Accept": "*/*"}).status_code == 422


def test_the_audit_search_takes_empty_fields_as_no_filter(node: Mosaic) -> None:
    with browser(node, "auditor", "auditor-password") as client:
        empty = client.get("/audit", params={"patient": "", "user": "", "study": "", "action": "", "since": "",
                                             "until": ""})
        assert empty.status_code == 200 and "matching record" in empty.text
        by_user = client.get("/audit", params={"user": "derm", "since": "2020-01-01T00:00", "until": ""})
        assert by_user.status_code == 200 and "<td>derm<br>" in by_user.text
        malformed = client.get("/audit", params={"since": "yesterday"})
        assert malformed.status_code == 400 and malformed.headers["content-type"].startswith("text/html")
        assert "is not a date and time" in malformed.text and 'value="yesterday"' in malformed.text


def test_break_glass_finds_studies_of_every_site_by_patient_and_audits_the_search(node: Mosaic) -> None:
    with browser(node, "derm", "derm-password") as client:
        found = client.get("/break-glass", params={"name": "mind*"})
        assert found.status_code == 200
        assert PSY_STUDY in found.text and "Mind Max" in found.text and "PSY-1" in found.text
        assert "2023-04-05" in found.text and "SITE-B" in found.text and "B-1" in found.text
        assert "PSYCHIATRY" not in found.text  # only what picking the study needs
        by_accession = client.get("/break-glass", params={"accession": "B-1"})
        assert PSY_STUDY in by_accession.text and "Skin Sam" not in by_accession.text
        many = client.get("/break-glass", params={"name": "many*"})
        assert many.text.count('type="radio"') == 20 and "narrow the search" in many.text
        short = client.get("/break-glass", params={"name": "mi*"})
        assert short.status_code == 400 and "at least 3 letters" in short.text
        assert 'type="radio"' not in short.text
        wildcard_id = client.get("/break-glass", params={"patient_id": "PSY*"})
        assert wildcard_id.status_code == 400 and 'type="radio"' not in wildcard_id.text
    searches = [row for row in audit_rows(node, user="derm") if row.action == "query" and row.break_glass]
    details = [json.loads(row.detail) for row in searches]
    terms = [detail["break_glass_search"] for detail in details]
    assert {"name": "mind*"} in terms and {"accession": "B-1"} in terms
    mind = next(detail for detail in details if detail["break_glass_search"] == {"name": "mind*"})
    assert mind["studies"] == [PSY_STUDY] and mind["matches"] == 1 and "reason" not in mind
    many = next(detail for detail in details if detail["break_glass_search"] == {"name": "many*"})
    assert many["matches"] == 20 and many["more"] is True


def test_break_glass_by_patient_opens_the_study_and_shows_its_badge(node: Mosaic) -> None:
    node.identity.add_user("night", roles=["clinician"], password="night-password", facilities=["SITE-C"])
    with browser(node, "night", "night-password") as client:
        assert "Emergency access:" not in client.get("/").text
        found = client.get("/break-glass", params={"patient_id": "DERM-1"})
        short = client.post("/api/break-glass", data={"StudyInstanceUID": DERM_STUDY, "reason": "too short",
                                                      "csrf_token": csrf_of(found.text)})
        assert short.status_code == 400 and short.headers["content-type"].startswith("text/html")
        assert "at least 10 characters" in short.text and f'value="{DERM_STUDY}"' in short.text
        opened = client.post("/api/break-glass", data={"StudyInstanceUID": DERM_STUDY,
                                                       "reason": "unconscious patient in ED",
                                                       "csrf_token": csrf_of(found.text)})
        assert opened.status_code == 303
        assert opened.headers["location"] == f"/viewer/viewer?StudyInstanceUIDs={DERM_STUDY}"
        for path in ("/", "/break-glass", "/no-such-page"):
            html = client.get(path).text
            badge = re.search(r'<a class="badge" href="([^"]+)">Emergency access: Skin Sam until\s*'
                              r'<time datetime="[^"]+">(\d\d:\d\d)</time>', html)
            assert badge is not None, path
            assert badge.group(1) == f"/viewer/viewer?StudyInstanceUIDs={DERM_STUDY}"
        assert "Skin Sam" in client.get("/").text  # the opened study is in the recent studies too
    glass = [row for row in audit_rows(node, user="night") if row.action == "break-glass"]
    assert [row.outcome for row in glass] == ["success"] and glass[0].break_glass


def test_api_clients_keep_json_answers_from_break_glass(node: Mosaic) -> None:
    token = node.identity.issue_token("derm", name="pages-test")
    answer = httpx.post(f"http://{LOCALHOST}:{node.http_port}/api/break-glass",
                        headers={"Authorization": f"Bearer {token}", **PAGE},
                        json={"StudyInstanceUID": PSY_STUDY, "reason": "short"})
    assert answer.status_code == 400 and "at least 10" in answer.json()["error"]


def test_the_viewer_links_back_to_mosaic() -> None:
    config = render_app_config(dicomweb_root="/dicom-web", prefix="/viewer")
    assert "whiteLabeling" in config and "createLogoComponentFn" in config and "href: '/'" in config


def test_the_break_glass_search_is_for_people_and_a_few_times_an_hour(tmp_path: Path) -> None:
    """Searching every facility's patients is for a person in an emergency: an API token is refused, and one user
    cannot list the directory by searching again and again."""
    from mosaic.web.account import BREAK_GLASS_SEARCHES

    node = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0)))
    node.start(dicom=False)
    try:
        node.identity.add_user("er.doc", roles=["clinician"], password="er-doctor-password", facilities=["north"])
        base = f"http://127.0.0.1:{node.http_port}/break-glass"
        token = node.identity.issue_token("er.doc", name="script")
        refused = httpx.get(base, params={"patient_id": "P1"}, timeout=30,
                            headers={"Authorization": f"Bearer {token}", "Accept": "text/html"})
        assert refused.status_code == 400 and "not for API tokens" in refused.text
        answers = [httpx.get(base, params={"patient_id": f"P{number}"}, auth=("er.doc", "er-doctor-password"),
                             timeout=30, headers={"Accept": "text/html"}).status_code
                   for number in range(BREAK_GLASS_SEARCHES + 1)]
        assert answers[:-1] == [200] * BREAK_GLASS_SEARCHES and answers[-1] == 400
    finally:
        node.stop()
