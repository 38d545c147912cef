"""EHR launches over real HTTP: IHE Invoke Image Display for a study, by accession and for a patient (with its
issuer and date filters), signed single-use launch links that open a browser session (and every refused one
audited and answered 403, a client that keeps sending them held back), the same 404 for another facility's study
as for an unknown one, an unsigned browser sent through /login and back, the SMART-style launch of Mosaic's own
portal, and one headless Chromium run of a signed launch landing on the study page."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, LaunchEhr, LaunchSettings, SecuritySettings, Settings
from mosaic.services.launch import canonical_query, sign
from mosaic.services.origin import IngestOrigin
from tests.browser import chromium_context
from tests.factory import make_bytes
from tests.helpers import LOCALHOST, wait_until
from tests.oidc_support import IdentityProvider

ROOT = "1.2.826.0.1.3680043.10.1234.58."
OID = "1.2.840.99999.1"
SECRET = "launch-secret-of-the-ehr-0123456789abcdef"
NORTH = ("north.doc", "north-doctor-password")
STUDIES = {  # uid suffix: (patient, issuer, date, accession, facility)
    "1": ("P1", OID, "20200101", "A100", "north"),
    "2": ("P1", OID, "20220601", "A200", "north"),
    "3": ("P1", OID, "20240301", "A300", "north"),
    "4": ("P1", OID, "20230101", "A400", "south"),  # another facility's: north's clinician never sees it
    "5": ("P2", "HOSP", "20230505", "A500", "south"),
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    folder = tmp_path_factory.mktemp("launch")
    (folder / "epic.secret").write_text(SECRET + "\n")
    (folder / "other.secret").write_text("the-other-ehrs-secret-0123456789abcdef\n")
    mosaic = Mosaic(Settings(
        data_dir=folder / "data", http=HttpSettings(port=0, trusted_proxies=["127.0.0.1"]),
        dicom=DicomSettings(port=0), security=SecuritySettings(failed_sign_ins_per_client_minute=5),
        launch=LaunchSettings(ehrs=[
            LaunchEhr(name="epic", secret_file=folder / "epic.secret"),
            LaunchEhr(name="other", secret_file=folder / "other.secret", users_may_be=["south.doc"])])))
    for suffix, (patient, issuer, day, accession, facility) in STUDIES.items():
        uid = ROOT + suffix
        mosaic.ingest.store(make_bytes(patient_id=patient, issuer=issuer, patient_name="Launch^Lena", study_uid=uid,
                                       series_uid=f"{uid}.1", sop_uid=f"{uid}.1.1", study_date=day,
                                       accession=accession, StudyDescription=f"Study {suffix}"),
                            IngestOrigin(door="test", facility=facility))
    mosaic.start(dicom=False)
    mosaic.identity.add_user(NORTH[0], roles=["clinician"], password=NORTH[1], facilities=["north"])
    mosaic.identity.add_user("south.doc", roles=["clinician"], password="south-doctor-password",
                             facilities=["south"])
    mosaic.identity.add_user("gone.doc", roles=["clinician"], password="gone-doctor-password")
    mosaic.identity.update_user("gone.doc", active=False)
    yield mosaic
    mosaic.stop()


def base(node: Mosaic) -> str:
    return f"http://{LOCALHOST}:{node.http_port}"


def signed(params: dict[str, str], *, user: str = NORTH[0], secret: str = SECRET, expires: int | None = None,
           nonce: str | None = None, path: str = "/IHEInvokeImageDisplay", **extra: str) -> str:
    """A launch link as an EHR builds it: the IID (or SMART) parameters, the user, expiry, nonce and HMAC."""
    items = {**params, "user": user, "expires": str(expires if expires is not None else int(time.time()) + 120),
             "nonce": nonce or secrets.token_urlsafe(18), **extra}
    items["signature"] = sign(secret.encode(), items.items())
    return f"{path}?{urlencode(items, quote_via=quote)}"


def launch(node: Mosaic, url: str, *, address: str | None = None, **kwargs: object) -> httpx.Response:
    headers = {"Accept": "text/html", **({"X-Forwarded-For": address} if address else {})}
    return httpx.get(base(node) + url, headers=headers, follow_redirects=False, timeout=30,
                     **kwargs)  # type: ignore[arg-type]


def session_of(response: httpx.Response) -> dict[str, str]:
    assert "mosaic_session" in response.cookies, response.headers
    return {"mosaic_session": response.cookies["mosaic_session"]}


def audit_records(node: Mosaic, **terms: str) -> list[tuple[str, str, dict[str, object]]]:
    node.audit.flush()
    records, _total = node.audit.search(limit=200, **terms)  # type: ignore[arg-type]
    return [(record.action, record.outcome, json.loads(record.detail or "{}")) for record in records]


def test_the_canonical_query_is_sorted_and_percent_encoded() -> None:
    query = canonical_query([("user", "jane doe"), ("patientID", "P1^^^&1.2&ISO"), ("signature", "x"),
                             ("expires", "1")])
    assert query == "expires=1&patientID=P1%5E%5E%5E%261.2%26ISO&user=jane%20doe"


def test_a_signed_study_launch_opens_a_session_and_lands_on_the_study_page(node: Mosaic) -> None:
    answer = launch(node, signed({"requestType": "STUDY", "studyUID": ROOT + "1"}))
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == f"/portal/studies/{ROOT}1"  # no token left in the URL
    cookie = session_of(answer)
    assert "HttpOnly" in answer.headers["set-cookie"] and "samesite=lax" in answer.headers["set-cookie"].lower()
    study = httpx.get(base(node) + answer.headers["location"], cookies=cookie, headers={"Accept": "text/html"})
    assert study.status_code == 200 and "Study 1" in study.text and "north.doc" in study.text
    records = audit_records(node, user=NORTH[0])
    assert any(action == "login" and outcome == "success" and detail.get("ehr") == "epic"
               for action, outcome, detail in records)
    launched = [detail for action, outcome, detail in records if action == "read" and detail.get("launch") == "iid"]
    assert launched and launched[0]["via"] == "signed launch from epic"
    assert launched[0]["target"] == f"/portal/studies/{ROOT}1"
    assert "signature" not in launched[0]["request"] and "nonce" not in launched[0]["request"]  # type: ignore[operator]


def test_the_same_link_twice_is_refused(node: Mosaic) -> None:
    url = signed({"requestType": "STUDY", "studyUID": ROOT + "2"})
    assert launch(node, url, address="198.51.100.1").status_code == 303
    again = launch(node, url, address="198.51.100.1")
    assert again.status_code == 403 and "used already" in again.text
    assert "mosaic_session" not in again.cookies


@pytest.mark.parametrize(("case", "url", "reason"), [
    ("expired", lambda: signed({"requestType": "STUDY", "studyUID": ROOT + "1"}, expires=int(time.time()) - 3600),
     "expired"),
    ("too far ahead", lambda: signed({"requestType": "STUDY", "studyUID": ROOT + "1"},
                                     expires=int(time.time()) + 86400), "ahead"),
    ("bad signature", lambda: signed({"requestType": "STUDY", "studyUID": ROOT + "1"}, secret="x" * 40),
     "signature does not match"),
    ("changed link", lambda: signed({"requestType": "STUDY", "studyUID": ROOT + "1"}).replace(ROOT + "1",
                                                                                               ROOT + "3"),
     "signature does not match"),
    ("unknown user", lambda: signed({"requestType": "STUDY", "studyUID": ROOT + "1"}, user="ghost.doc"),
     "no enabled account"),
    ("disabled user", lambda: signed({"requestType": "STUDY", "studyUID": ROOT + "1"}, user="gone.doc"),
     "no enabled account"),
    ("user the EHR may not be", lambda: signed({"requestType": "STUDY", "studyUID": ROOT + "1"},
                                               secret="the-other-ehrs-secret-0123456789abcdef"), "may not launch"),
])
def test_a_refused_link_is_a_403_and_an_audited_denied_sign_in(node: Mosaic, case: str, url: object,
                                                                 reason: str) -> None:
    address = f"198.51.100.{10 + len(case)}"
    answer = launch(node, url(), address=address)  # type: ignore[operator]
    assert answer.status_code == 403, (case, answer.status_code, answer.text)
    assert reason in answer.text and "mosaic_session" not in answer.cookies

    def denied() -> list[dict[str, object]]:
        return [detail for action, outcome, detail in audit_records(node, action="login")
                if outcome == "denied" and detail.get("via") == "signed launch"]

    # the middleware records the request once its answer is sent: the client can be told before it is queued
    wait_until(lambda: any(reason in str(detail["reason"]) for detail in denied()), what=f"the {case} refusal")


def test_refused_links_from_one_address_are_held_back(node: Mosaic) -> None:
    address = "203.0.113.77"
    for _ in range(5):  # security.failed_sign_ins_per_client_minute = 5
        assert launch(node, signed({"requestType": "STUDY", "studyUID": ROOT + "1"}, secret="y" * 40),
                      address=address).status_code == 403
    held = launch(node, signed({"requestType": "STUDY", "studyUID": ROOT + "1"}), address=address)  # a good one
    assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1
    assert launch(node, signed({"requestType": "STUDY", "studyUID": ROOT + "1"}),
                  address="203.0.113.78").status_code == 303  # other addresses are not held back


def test_another_facility_s_study_gets_the_same_404_as_an_unknown_one(node: Mosaic) -> None:
    theirs = launch(node, "/IHEInvokeImageDisplay?requestType=STUDY&studyUID=" + ROOT + "4", auth=NORTH)
    unknown = launch(node, "/IHEInvokeImageDisplay?requestType=STUDY&studyUID=" + ROOT + "999", auth=NORTH)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.text.replace(ROOT + "4", "") == unknown.text.replace(ROOT + "999", "")
    assert theirs.text == unknown.text  # the page names neither
    signed_theirs = launch(node, signed({"requestType": "STUDY", "studyUID": ROOT + "4"}))
    signed_unknown = launch(node, signed({"requestType": "STUDY", "studyUID": ROOT + "999"}))
    assert signed_theirs.status_code == signed_unknown.status_code == 404
    assert signed_theirs.text == signed_unknown.text
    by_accession = launch(node, "/IHEInvokeImageDisplay?requestType=STUDY&accessionNumber=A400", auth=NORTH)
    assert by_accession.status_code == 404 and by_accession.text == unknown.text
    other_patient = launch(node, "/IHEInvokeImageDisplay?requestType=PATIENT&patientID=" + quote("P2^^^HOSP"),
                           auth=NORTH)
    no_patient = launch(node, "/IHEInvokeImageDisplay?requestType=PATIENT&patientID=" + quote("P9^^^HOSP"),
                        auth=NORTH)
    assert other_patient.status_code == no_patient.status_code == 404 and other_patient.text == no_patient.text
    south = launch(node, "/IHEInvokeImageDisplay?requestType=STUDY&studyUID=" + ROOT + "4",
                   auth=("south.doc", "south-doctor-password"))
    assert south.status_code == 303  # it is there, for those who may see it


def test_a_patient_launch_with_its_issuer_lands_on_the_timeline_with_the_date_filters(node: Mosaic) -> None:
    answer = launch(node, signed({"requestType": "PATIENT", "patientID": f"P1^^^&{OID}&ISO",
                                  "lowerDateTime": "2021-01-01T00:00:00Z", "upperDateTime": "2024-12-31"}))
    assert answer.status_code == 303, answer.text
    target = urlsplit(answer.headers["location"])
    assert target.path.startswith("/portal/patients/")
    assert parse_qs(target.query) == {"since": ["2021-01-01"], "until": ["2024-12-31"]}
    timeline = httpx.get(base(node) + answer.headers["location"], cookies=session_of(answer),
                         headers={"Accept": "text/html"})
    assert timeline.status_code == 200
    shown = {suffix for suffix in STUDIES if f"/portal/studies/{ROOT}{suffix}\"" in timeline.text}
    assert shown == {"2", "3"}  # 1 is before the range, 4 is south's, 5 another patient's
    recent = launch(node, "/IHEInvokeImageDisplay?" + urlencode(
        {"requestType": "PATIENT", "patientID": f"P1^^^&{OID}&ISO", "mostRecentResults": "1"}), auth=NORTH)
    assert parse_qs(urlsplit(recent.headers["location"]).query) == {"since": ["2024-03-01"]}
    viewer = launch(node, "/IHEInvokeImageDisplay?" + urlencode(
        {"requestType": "PATIENT", "patientID": f"P1^^^{OID}", "mostRecentResults": "2", "viewerType": "IHE_BIR"}),
        auth=NORTH)
    assert viewer.headers["location"] == f"/viewer/viewer?StudyInstanceUIDs={ROOT}3,{ROOT}2"
    records = audit_records(node, user=NORTH[0], patient_id="P1")
    assert any(action == "query" and detail.get("launch") == "iid" for action, _outcome, detail in records)


def test_an_accession_launch_opens_its_study(node: Mosaic) -> None:
    answer = launch(node, "/IHEInvokeImageDisplay?requestType=STUDY&accessionNumber=A200", auth=NORTH)
    assert answer.status_code == 303 and answer.headers["location"] == f"/portal/studies/{ROOT}2"
    with_patient = launch(node, "/IHEInvokeImageDisplay?" + urlencode(
        {"requestType": "STUDY", "accessionNumber": "A200,A300", "patientID": f"P1^^^&{OID}&ISO"}), auth=NORTH)
    assert with_patient.headers["location"] == f"/viewer/viewer?StudyInstanceUIDs={ROOT}3,{ROOT}2"
    several = launch(node, f"/IHEInvokeImageDisplay?requestType=STUDY&studyUID={ROOT}1,{ROOT}3,{ROOT}4", auth=NORTH)
    assert several.headers["location"] == f"/viewer/viewer?StudyInstanceUIDs={ROOT}1,{ROOT}3"  # 4: not north's


@pytest.mark.parametrize(("query", "parameter"), [
    ("studyUID=1.2.3", "requestType"),
    ("requestType=SERIES&studyUID=1.2.3", "requestType"),
    ("requestType=STUDY", "studyUID"),
    ("requestType=STUDY&studyUID=1.2.x", "studyUID"),
    ("requestType=PATIENT", "patientID"),
    ("requestType=PATIENT&patientID=P1%5E%5E%5EHOSP&lowerDateTime=yesterday", "lowerDateTime"),
    ("requestType=PATIENT&patientID=P1%5E%5E%5EHOSP&mostRecentResults=many", "mostRecentResults"),
])
def test_a_malformed_request_is_a_400_page_naming_the_parameter(node: Mosaic, query: str, parameter: str) -> None:
    answer = launch(node, f"/IHEInvokeImageDisplay?{query}", auth=NORTH)
    assert answer.status_code == 400 and f"({parameter})" in answer.text, answer.text
    assert answer.headers["content-type"].startswith("text/html")


def test_an_unauthenticated_browser_signs_in_and_comes_back_to_the_launch(node: Mosaic) -> None:
    wanted = "/IHEInvokeImageDisplay?" + urlencode({"requestType": "PATIENT", "patientID": f"P1^^^&{OID}&ISO",
                                                    "lowerDateTime": "2021-01-01"}, quote_via=quote)
    with httpx.Client(base_url=base(node), headers={"Accept": "text/html"}, timeout=30) as browser:
        first = browser.get(wanted)
        assert first.status_code == 303
        login = urlsplit(first.headers["location"])
        assert login.path == "/login" and parse_qs(login.query)["next"] == [wanted]  # the whole query
        form = browser.get(first.headers["location"])
        csrf = re.search(r'name="csrf_token"\s+value="([^"]*)"', form.text).group(1)  # type: ignore[union-attr]
        next_field = re.search(r'name="next"\s+value="([^"]*)"', form.text).group(1)  # type: ignore[union-attr]
        signed_in = browser.post("/login", data={"username": NORTH[0], "password": NORTH[1], "csrf_token": csrf,
                                                 "next": next_field.replace("&amp;", "&")})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == wanted
        back = browser.get(wanted)
        assert back.status_code == 303 and back.headers["location"].startswith("/portal/patients/")
        assert browser.get(back.headers["location"]).status_code == 200


def test_the_smart_launch_of_mosaic_s_own_fhir_server(node: Mosaic) -> None:
    iss = f"{base(node)}/fhir"
    answer = launch(node, "/smart/launch?" + urlencode({"iss": iss, "launch": f"ImagingStudy/{ROOT}1"}), auth=NORTH)
    assert answer.status_code == 303 and answer.headers["location"] == f"/portal/studies/{ROOT}1"
    signed_link = launch(node, signed({"iss": iss, "launch": f"ImagingStudy/{ROOT}3"}, path="/smart/launch"))
    assert signed_link.status_code == 303 and signed_link.headers["location"] == f"/portal/studies/{ROOT}3"
    assert "mosaic_session" in signed_link.cookies
    theirs = launch(node, "/smart/launch?" + urlencode({"iss": iss, "launch": f"ImagingStudy/{ROOT}4"}), auth=NORTH)
    assert theirs.status_code == 404
    foreign = launch(node, "/smart/launch?" + urlencode({"iss": "https://ehr.example.org/fhir", "launch": "xyz"}),
                     auth=NORTH)
    assert foreign.status_code == 400 and "(iss)" in foreign.text
    assert httpx.get(f"{base(node)}/.well-known/smart-configuration", auth=NORTH).status_code == 404
    unsigned = launch(node, "/smart/launch?" + urlencode({"iss": iss, "launch": f"ImagingStudy/{ROOT}1"}))
    assert unsigned.status_code == 303 and unsigned.headers["location"].startswith("/login?next=")


def test_a_signed_launch_in_chromium_lands_on_the_study_page(node: Mosaic, tmp_path: Path) -> None:
    url = base(node) + signed({"requestType": "STUDY", "studyUID": ROOT + "3"})
    with chromium_context(tmp_path / "profile") as context:
        page = context.new_page()
        page.goto(url)
        assert page.url == f"{base(node)}/portal/studies/{ROOT}3"
        assert "Study 3" in page.locator("h1").first.inner_text()
        assert page.get_by_text("Signed in as").is_visible()
        page.screenshot(path=str(tmp_path / "launched-study.png"), full_page=True)
        assert any(cookie["name"] == "mosaic_session" for cookie in context.cookies(base(node)))



def test_single_sign_on_comes_back_to_the_launch_with_its_whole_query(tmp_path: Path) -> None:
    provider = IdentityProvider()
    sso = Mosaic(Settings(data_dir=tmp_path / "sso", http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                          security=SecuritySettings(oidc=provider.settings())))
    try:
        sso.ingest.store(make_bytes(patient_id="P1", issuer=OID, study_uid=ROOT + "77", accession="A77"),
                         IngestOrigin(door="test", facility="north"))
        sso.start(dicom=False)
        provider.person = {"name": "dr.sso", "claims": {"roles": ["clinician"], "facilities": ["north"]}}
        wanted = "/IHEInvokeImageDisplay?" + urlencode({"requestType": "STUDY", "accessionNumber": "A77",
                                                        "patientID": f"P1^^^&{OID}&ISO"}, quote_via=quote)
        with httpx.Client(base_url=base(sso), headers={"Accept": "text/html"}, timeout=30) as browser:
            login = browser.get(wanted)
            assert login.status_code == 303 and login.headers["location"].startswith("/login?next=")
            page_text = browser.get(login.headers["location"]).text
            link = page_text.split('href="/login/oidc?next=')[1].split('"')[0]
            landed = browser.get("/login/oidc?next=" + link.replace("&amp;", "&"), follow_redirects=True)
            assert landed.status_code == 200, landed.text
            assert [str(hop.url.raw_path, "ascii") for hop in landed.history][-1] == wanted  # back at the launch
            assert landed.url.path == f"/portal/studies/{ROOT}77" and "dr.sso" in landed.text
    finally:
        sso.stop()
        provider.stop()


def test_a_wildcard_secret_never_signs_an_administrator_in(node: Mosaic) -> None:
    """users_may_be = ["*"] is the EHR's clinicians: an administrator's account needs its own sign-in."""
    node.identity.add_user("it.admin", roles=["administrator"], password="it-admin-password-1")
    answer = launch(node, signed({"requestType": "STUDY", "studyUID": ROOT + "1"}, user="it.admin"),
                    address="198.51.100.77")
    assert answer.status_code == 403 and "administrator" in answer.text
    assert "mosaic_session" not in answer.cookies
