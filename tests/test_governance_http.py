"""Trying to get in over HTTP where one should not: no credentials, wrong ones, expired or foreign tokens,
roles without the permission, studies outside one's scope; and what the audit trail then says."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import select

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, OidcSettings, SecuritySettings, Settings
from mosaic.governance.policy import AccessDenied
from mosaic.index.query import Scope
from mosaic.index.schema import Series, Study
from tests.factory import make_instance, to_bytes
from tests.helpers import LOCALHOST, wait_until

ADMIN_PASSWORD = "correct horse battery staple"
ISSUER = "https://idp.example.org/realms/hospital"


class Jwks:
    """An identity provider's signing key, its JWKS served on loopback, and a stranger's key."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "idp-1", "use": "sig", "alg": "RS256"})
        body = json.dumps({"keys": [jwk]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{LOCALHOST}:{self.server.server_address[1]}/jwks.json"

    def token(self, *, key: Any = None, audience: str = "mosaic", issuer: str = ISSUER, expires_in: int = 300,
              **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": issuer, "aud": audience, "sub": "u-123", "iat": now, "exp": now + expires_in, **claims}
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": "idp-1"})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def idp() -> Iterator[Jwks]:
    provider = Jwks()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, idp: Jwks) -> Iterator[Mosaic]:
    security = SecuritySettings(initial_admin_password=ADMIN_PASSWORD, credential_cache_seconds=0,
                                sign_in_delay_seconds=60,
                                oidc=OidcSettings(issuer=ISSUER, jwks_url=idp.url))  # type: ignore[call-arg]
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("governance"), http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0), security=security))
    mosaic.start(dicom=False)
    # site A dermatology photos, site B psychiatry: labelled at ingest, as a configured peer would be
    mosaic.ingest.store(to_bytes(make_instance(patient_id="DERM-1", patient_name="Skin^Sam", accession="A-1",
                                               study_uid="1.2.826.0.1.3680043.10.1234.1")),
                        door="import", facility="SITE-A", department="DERMATOLOGY")
    mosaic.ingest.store(to_bytes(make_instance(patient_id="PSY-1", patient_name="Mind^Max", accession="B-1",
                                               study_uid="1.2.826.0.1.3680043.10.1234.2")),
                        door="import", facility="SITE-B", department="PSYCHIATRY")
    identity = mosaic.identity
    identity.add_user("derm", roles=["clinician"], password="derm-password", facilities=["SITE-A"],
                      departments=["DERMATOLOGY"])
    identity.add_user("auditor", roles=["auditor"], password="auditor-password")
    identity.add_user("research", roles=["researcher"], password="research-password")
    yield mosaic
    mosaic.stop()


DERM_STUDY = "1.2.826.0.1.3680043.10.1234.1"
PSY_STUDY = "1.2.826.0.1.3680043.10.1234.2"


def url(node: Mosaic, path: str) -> str:
    return f"http://{LOCALHOST}:{node.http_port}{path}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_of(node: Mosaic, user: str) -> dict[str, str]:
    return bearer(node.identity.issue_token(user, name="test"))


def audit_records(node: Mosaic, **filters: Any) -> list[Any]:
    node.audit.flush()
    rows, _total = node.audit.search(limit=1000, **filters)
    return rows


PATIENT_DATA_ROUTES = [
    ("GET", "/"),
    ("GET", "/dicom-web/studies"),
    ("GET", "/dicom-web/studies?PatientID=DERM-1"),
    ("GET", f"/dicom-web/studies/{DERM_STUDY}/metadata"),
    ("GET", f"/dicom-web/studies/{DERM_STUDY}"),
    ("GET", f"/dicom-web/studies/{DERM_STUDY}/thumbnail"),
    ("GET", f"/wado?requestType=WADO&studyUID={DERM_STUDY}&seriesUID=1&objectUID=2"),
    ("POST", "/dicom-web/studies"),
    ("GET", "/api/changes"),
    ("GET", "/api/audit"),
    ("GET", "/audit"),
    ("GET", "/metrics"),
    ("GET", "/viewer/"),
]


@pytest.mark.parametrize(("method", "path"), PATIENT_DATA_ROUTES)
def test_no_credentials_no_answer(node: Mosaic, method: str, path: str) -> None:
    response = httpx.request(method, url(node, path), headers={"Accept": "application/json"})
    assert response.status_code == 401, response.text
    assert "credentials are required" in response.json()["error"]
    assert DERM_STUDY not in response.text and "DERM-1" not in response.text


def test_health_and_sign_in_page_are_public(node: Mosaic) -> None:
    assert httpx.get(url(node, "/healthz")).status_code == 200
    page = httpx.get(url(node, "/login"))
    assert page.status_code == 200 and 'name="password"' in page.text


def test_a_browser_without_a_session_is_sent_to_sign_in(node: Mosaic) -> None:
    response = httpx.get(url(node, "/dicom-web/studies?PatientID=X"), headers={"Accept": "text/html"})
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fdicom-web%2Fstudies%3FPatientID%3DX"


@pytest.mark.parametrize(("header", "reason"), [
    ("Bearer mosaic_not-a-real-token", "unknown API token"),
    ("Bearer nonsense", "neither a Mosaic API token nor a JWT"),
    ("Basic " + "YWRtaW46d3Jvbmc=", "wrong password"),  # admin:wrong
    ("Digest abc", "not Bearer or Basic"),
])
def test_wrong_credentials_are_refused_with_the_reason(node: Mosaic, header: str, reason: str) -> None:
    response = httpx.get(url(node, "/dicom-web/studies"), headers={"Authorization": header})
    assert response.status_code == 401
    assert reason in response.json()["error"]


def test_failed_sign_in_is_audited(node: Mosaic) -> None:
    httpx.get(url(node, "/dicom-web/studies"), headers={"Authorization": "Basic YWRtaW46d3Jvbmc="})
    failures = [row for row in audit_records(node, action="login") if row.outcome == "denied"]
    assert any(row.actor == "admin" and "wrong password" in row.detail for row in failures)


def test_basic_credentials_of_a_local_account_work(node: Mosaic) -> None:
    response = httpx.get(url(node, "/dicom-web/studies"), auth=("admin", ADMIN_PASSWORD))
    assert response.status_code == 200
    assert {study["00100020"]["Value"][0] for study in response.json()} == {"DERM-1", "PSY-1"}


def test_revoked_and_expired_api_tokens_stop_working(node: Mosaic) -> None:
    node.identity.add_user("ris", roles=["integration"])
    token = node.identity.issue_token("ris")
    assert httpx.get(url(node, "/dicom-web/studies"), headers=bearer(token)).status_code == 200
    node.identity.revoke_tokens("ris")
    refused = httpx.get(url(node, "/dicom-web/studies"), headers=bearer(token))
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    expired = node.identity.issue_token("ris", days=-1)
    refused = httpx.get(url(node, "/dicom-web/studies"), headers=bearer(expired))
    assert refused.status_code == 401 and "expired" in refused.json()["error"]


def test_sign_in_form_sets_a_session_and_needs_its_csrf_token(node: Mosaic) -> None:
    with httpx.Client(base_url=url(node, "")) as browser:
        browser.get("/login")
        csrf = browser.cookies["mosaic_login_csrf"]
        forged = browser.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                              "csrf_token": "forged", "next": "/"})
        assert forged.status_code == 403 and "mosaic_session" not in browser.cookies
        wrong = browser.post("/login", data={"username": "admin", "password": "nope", "csrf_token": csrf})
        assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
        csrf = browser.cookies["mosaic_login_csrf"]
        signed_in = browser.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                                 "csrf_token": csrf, "next": "https://evil.example.org/"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"  # never off-site
        landing = browser.get("/")
        assert landing.status_code == 200 and "signed in as <b>admin</b>" in landing.text
        assert browser.get("/dicom-web/studies").status_code == 200
        # an unsafe request riding on the cookie alone (cross-site request forgery) is refused
        stow = browser.post("/dicom-web/studies", content=b"", headers={"Content-Type": "multipart/related"})
        assert stow.status_code == 403 and "CSRF" in stow.json()["error"]
        # a plain HTML form (what another site can make a browser post) to an API route that takes no body
        for path in ("/api/retention/run", "/api/users/admin/tokens"):
            forged = browser.post(path, data={"anything": "x"})
            assert forged.status_code == 403 and "CSRF" in forged.json()["error"], (path, forged.text)
        csrf_token = browser.get("/api/me").json()["csrf_token"]
        logout_forged = browser.post("/logout", data={"csrf_token": "forged"})
        assert logout_forged.status_code == 403
        assert browser.post("/logout", data={"csrf_token": csrf_token}).status_code == 303
        assert browser.get("/dicom-web/studies", headers={"Accept": "application/json"}).status_code == 401
    logins = [row for row in audit_records(node, user="admin", action="login") if row.outcome == "success"]
    assert logins and logins[0].interface == "http" and logins[0].address == LOCALHOST


def test_roles_without_the_permission_are_refused(node: Mosaic) -> None:
    auditor, research, derm = token_of(node, "auditor"), token_of(node, "research"), token_of(node, "derm")
    refused = httpx.get(url(node, "/dicom-web/studies"), headers=auditor)
    assert refused.status_code == 403 and "may not query" in refused.json()["error"]
    assert httpx.get(url(node, f"/dicom-web/studies/{DERM_STUDY}/metadata"), headers=research).status_code == 403
    stow = httpx.post(url(node, "/dicom-web/studies"), headers={**derm, "Content-Type": "multipart/related"})
    assert stow.status_code == 403 and "may not store" in stow.json()["error"]
    assert httpx.get(url(node, "/api/audit"), headers=derm).status_code == 403
    assert httpx.get(url(node, "/metrics"), headers=derm).status_code == 403
    assert httpx.get(url(node, "/api/audit"), headers=auditor).status_code == 200
    denied = [row for row in audit_records(node, user="auditor") if row.outcome == "denied"]
    assert any(row.action == "query" for row in denied)


def test_query_reveals_nothing_outside_the_scope(node: Mosaic) -> None:
    derm = token_of(node, "derm")
    studies = httpx.get(url(node, "/dicom-web/studies"), headers=derm)
    assert [study["0020000D"]["Value"][0] for study in studies.json()] == [DERM_STUDY]
    by_patient = httpx.get(url(node, "/dicom-web/studies"), params={"PatientID": "PSY-1"}, headers=derm)
    assert by_patient.json() == []
    paged = httpx.get(url(node, "/dicom-web/studies"), params={"limit": "1", "offset": "0"}, headers=derm)
    assert paged.headers["X-Total-Count"] == "1"  # counts are scoped too
    series = httpx.get(url(node, f"/dicom-web/studies/{PSY_STUDY}/series"), headers=derm)
    unknown = httpx.get(url(node, "/dicom-web/studies/1.2.3.999/series"), headers=derm)
    assert (series.status_code, series.json()) == (unknown.status_code, unknown.json()) == (200, [])
    # an out-of-scope study looks exactly like no study at all
    hidden = httpx.get(url(node, f"/dicom-web/studies/{PSY_STUDY}/metadata"), headers=derm)
    missing = httpx.get(url(node, "/dicom-web/studies/1.2.3.999/metadata"), headers=derm)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"].replace(PSY_STUDY, "X") == missing.json()["error"].replace("1.2.3.999", "X")
    for path in (f"/dicom-web/studies/{PSY_STUDY}", f"/dicom-web/studies/{PSY_STUDY}/thumbnail"):
        assert httpx.get(url(node, path), headers=derm).status_code == 404
    landing = httpx.get(url(node, "/"), headers=derm)
    assert "DERM-1" in landing.text and "PSY-1" not in landing.text
    changes = httpx.get(url(node, "/api/changes"), headers=derm)
    assert changes.status_code == 403


def test_wado_uri_with_padded_uids_is_judged_on_the_study_it_serves(node: Mosaic) -> None:
    """WADO-URI strips its UIDs: a trailing space must not make the guard look up another (unknown, so allowed)
    study than the one served."""
    derm = token_of(node, "derm")
    stored = node.retrieve.instances_in(PSY_STUDY, scope=Scope.everything())[0]
    series = psy_series_uid(node)
    for padded in (f"{PSY_STUDY} ", f" {PSY_STUDY}"):
        answer = httpx.get(url(node, "/wado"), headers=derm, params={
            "requestType": "WADO", "studyUID": padded, "seriesUID": series, "objectUID": stored.SOPInstanceUID,
            "contentType": "application/dicom"})
        assert answer.status_code == 404, (padded, answer.status_code)


def test_a_browser_whose_session_ended_is_sent_to_sign_in(node: Mosaic) -> None:
    """Signed out in another tab (or expired): the next page is the sign-in page, and the dead cookie is dropped;
    an API call with it still gets a 401."""
    with httpx.Client(base_url=url(node, "")) as browser:
        browser.get("/login")
        browser.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                     "csrf_token": browser.cookies["mosaic_login_csrf"]})
        node.identity.close_session(browser.cookies["mosaic_session"])  # the other tab signed out
        page = browser.get("/viewer/", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fviewer%2F"
        assert "mosaic_session=;" in page.headers["set-cookie"] and "max-age=0" in page.headers["set-cookie"].lower()
    with httpx.Client(base_url=url(node, ""), cookies={"mosaic_session": "ended"}) as api:
        assert api.get("/api/me").status_code == 401


def test_break_glass_opens_one_study_with_a_reason_and_is_flagged(node: Mosaic) -> None:
    node.identity.add_user("er", roles=["clinician"], password="er-password", facilities=["SITE-A"],
                           departments=["EMERGENCY"])
    er = token_of(node, "er")
    assert httpx.get(url(node, f"/dicom-web/studies/{PSY_STUDY}/metadata"), headers=er).status_code == 404
    for reason in ("  ", "x", "e r   ", "a b c d e f g h i"):  # the page asks for 10 characters besides spaces
        too_short = httpx.post(url(node, "/api/break-glass"), headers=er,
                               json={"StudyInstanceUID": PSY_STUDY, "reason": reason})
        assert too_short.status_code == 400 and "at least 10 characters" in too_short.json()["error"], reason
    with pytest.raises(AccessDenied, match="at least 10 characters"):  # whichever door asks the policy
        node.policy.break_glass(node.identity.check_token(er["Authorization"][7:]), PSY_STUDY, "e r")
    assert not [row for row in audit_records(node, user="er") if row.break_glass and row.outcome == "success"]
    opened = httpx.post(url(node, "/api/break-glass"), headers=er,
                        json={"StudyInstanceUID": PSY_STUDY, "reason": "unconscious patient in the ED"})
    assert opened.status_code == 200, opened.text
    metadata = httpx.get(url(node, f"/dicom-web/studies/{PSY_STUDY}/metadata"), headers=er)
    assert metadata.status_code == 200 and metadata.json()[0]["00100020"]["Value"] == ["PSY-1"]
    # only that study: the rest of site B stays hidden
    assert [study["0020000D"]["Value"][0] for study in httpx.get(url(node, "/dicom-web/studies"),
                                                                 headers=er).json()] == [PSY_STUDY]
    flagged = [row for row in audit_records(node, user="er") if row.break_glass]
    actions = {row.action for row in flagged}
    assert {"break-glass", "read"} <= actions
    glass = next(row for row in flagged if row.action == "break-glass")
    assert glass.PatientID == "PSY-1" and "unconscious patient" in glass.detail


def test_every_read_is_audited_with_who_what_where(node: Mosaic) -> None:
    admin = token_of(node, "admin")
    assert httpx.get(url(node, f"/dicom-web/studies/{DERM_STUDY}/metadata"), headers=admin).status_code == 200
    # the middleware records the request once its answer is sent: the client can be told before it is queued
    wait_until(lambda: audit_records(node, study=DERM_STUDY, user="admin", action="read"),
               what="the read's audit record")
    record = audit_records(node, study=DERM_STUDY, user="admin", action="read")[0]
    assert (record.actor_kind, record.roles, record.address, record.interface, record.outcome) == (
        "token", "administrator", LOCALHOST, "dicomweb", "success")
    assert record.PatientID == "DERM-1"
    assert httpx.get(url(node, "/dicom-web/studies"), headers=admin).status_code == 200
    wait_until(lambda: audit_records(node, user="admin", action="query"), what="the query's audit record")
    query = audit_records(node, user="admin", action="query")
    assert query and all(row.interface in ("dicomweb", "http") for row in query)


def test_openid_connect_bearer_tokens(node: Mosaic, idp: Jwks) -> None:
    good = idp.token(preferred_username="dr.who", roles=["clinician"], facilities=["SITE-A"],
                     departments=["DERMATOLOGY"])
    response = httpx.get(url(node, "/dicom-web/studies"), headers=bearer(good))
    assert response.status_code == 200
    assert [study["0020000D"]["Value"][0] for study in response.json()] == [DERM_STUDY]
    assert httpx.get(url(node, "/api/me"), headers=bearer(good)).json()["name"] == "dr.who"
    shouted = idp.token(preferred_username=" DR.WHO ", roles=["clinician"])  # one person, whatever the case
    assert httpx.get(url(node, "/api/me"), headers=bearer(shouted)).json()["name"] == "dr.who"
    cases = {
        "expired": idp.token(preferred_username="dr.who", roles=["clinician"], expires_in=-120),
        "not issued by": idp.token(preferred_username="dr.who", issuer="https://elsewhere.example.org"),
        "not for audience": idp.token(preferred_username="dr.who", audience="another-app"),
        "invalid": idp.token(preferred_username="dr.who", key=idp.other),  # signed by someone else
    }
    for reason, token in cases.items():
        refused = httpx.get(url(node, "/dicom-web/studies"), headers=bearer(token))
        assert refused.status_code == 401, reason
        assert reason in refused.json()["error"], (reason, refused.json())
    no_roles = idp.token(preferred_username="nobody")
    assert httpx.get(url(node, "/dicom-web/studies"), headers=bearer(no_roles)).status_code == 403
    # the provider does not speak for a local account, nor for a person disabled in Mosaic
    posing = httpx.get(url(node, "/api/me"), headers=bearer(idp.token(preferred_username="admin",
                                                                       roles=["administrator"])))
    assert posing.status_code == 401 and "local Mosaic account" in posing.json()["error"]
    posing = httpx.get(url(node, "/api/me"), headers=bearer(idp.token(preferred_username="Admin ",
                                                                       roles=["administrator"])))
    assert posing.status_code == 401 and "local Mosaic account" in posing.json()["error"]
    node.identity.single_sign_on(node.identity.check_jwt(good))  # dr.who signed in once in a browser
    node.identity.update_user("dr.who", active=False)
    again = idp.token(preferred_username="dr.who", roles=["clinician"], expires_in=299)
    refused = httpx.get(url(node, "/api/me"), headers=bearer(again))
    assert refused.status_code == 401 and "disabled" in refused.json()["error"]


def test_audit_search_api_and_fhir_audit_events(node: Mosaic) -> None:
    auditor = token_of(node, "auditor")
    httpx.get(url(node, f"/dicom-web/studies/{DERM_STUDY}/metadata"), headers=token_of(node, "derm"))
    node.audit.flush()
    found = httpx.get(url(node, "/api/audit"), headers=auditor, params={"patient": "DERM-1", "user": "derm"})
    assert found.status_code == 200
    records = found.json()["records"]
    assert records and all(row["PatientID"] == "DERM-1" and row["actor"] == "derm" for row in records)
    since = httpx.get(url(node, "/api/audit"), headers=auditor, params={"since": "2999-01-01T00:00:00"})
    assert since.json()["total"] == 0
    bundle = httpx.get(url(node, "/api/audit"), headers=auditor,
                       params={"study": DERM_STUDY, "format": "fhir"}).json()
    assert bundle["resourceType"] == "Bundle" and bundle["entry"]
    for entry in bundle["entry"]:
        event = AuditEvent.model_validate(entry["resource"])  # an independent reading of each resource
        assert event.type.system == "http://dicom.nema.org/resources/ontology/DCM"
        assert any(entity.what.identifier.value == f"urn:oid:{DERM_STUDY}" for entity in event.entity or [])
    page = httpx.get(url(node, "/audit"), headers=auditor, params={"patient": "DERM-1"})
    assert page.status_code == 200 and "derm" in page.text
    # reading the audit trail is itself audited
    assert audit_records(node, user="auditor", action="audit-read")


def test_development_mode_opens_http_explicitly(tmp_path: Path) -> None:
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                             security=SecuritySettings(development_mode=True)))  # type: ignore[call-arg]
    mosaic.start(dicom=False)
    try:
        assert httpx.get(url(mosaic, "/dicom-web/studies")).status_code == 200
    finally:
        mosaic.stop()


def test_first_start_creates_one_administrator_and_says_its_password_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0))
    first = Mosaic(settings)
    first.start(dicom=False)
    password = first.initial_admin_password
    assert password and len(password) >= 12
    assert httpx.get(url(first, "/dicom-web/studies"), auth=("admin", password)).status_code == 200
    first.stop()
    second = Mosaic(settings)
    second.start(dicom=False)
    try:
        assert second.initial_admin_password is None
        assert [account.username for account in second.identity.users()] == ["admin"]
    finally:
        second.stop()


def test_password_guessing_holds_back_the_guesser(node: Mosaic) -> None:
    """Five wrong passwords make this client wait (429, Retry-After) before trying that name again (this node's
    first wait, 60 s, outlasts the test); other clients are not held back: tests/test_sign_in_throttle.py."""
    node.identity.add_user("target", roles=["clinician"], password="the-real-password")
    for attempt in range(5):
        guess = httpx.get(url(node, "/dicom-web/studies"), auth=("target", f"guess-{attempt}"))
        assert guess.status_code == 401 and "wrong password" in guess.json()["error"]
    locked = httpx.get(url(node, "/dicom-web/studies"), auth=("target", "the-real-password"))
    assert locked.status_code == 429 and "too many wrong passwords" in locked.json()["error"]
    assert 1 <= int(locked.headers["retry-after"]) <= 60
    node.identity.set_password("target", "a-new-password")  # an administrator resets it
    assert httpx.get(url(node, "/dicom-web/studies"), auth=("target", "a-new-password")).status_code == 200


def test_break_glass_page_sends_the_clinician_to_the_viewer(node: Mosaic) -> None:
    node.identity.add_user("night", roles=["clinician"], password="night-password", facilities=["SITE-C"])
    with httpx.Client(base_url=url(node, "")) as browser:
        browser.get("/login")
        browser.post("/login", data={"username": "night", "password": "night-password",
                                     "csrf_token": browser.cookies["mosaic_login_csrf"]})
        page = browser.get("/break-glass", params={"study": DERM_STUDY})
        assert page.status_code == 200 and DERM_STUDY in page.text
        csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        forged = browser.post("/api/break-glass", data={"StudyInstanceUID": DERM_STUDY, "reason": "stroke alert",
                                                        "csrf_token": "forged"})
        assert forged.status_code == 403
        opened = browser.post("/api/break-glass", data={"StudyInstanceUID": DERM_STUDY, "reason": "stroke alert",
                                                        "csrf_token": csrf})
        assert opened.status_code == 303
        assert opened.headers["location"] == f"/viewer/viewer?StudyInstanceUIDs={DERM_STUDY}"
        assert browser.get(f"/dicom-web/studies/{DERM_STUDY}/metadata").status_code == 200


@pytest.mark.postgres
def test_the_same_door_on_postgresql(tmp_path: Path, fresh_postgres_url: str) -> None:
    """Scale-out configuration: accounts, sessions, tokens, scope, break-glass and the audit chain on PostgreSQL."""
    from mosaic.config import IndexSettings

    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                             index=IndexSettings(url=fresh_postgres_url),  # type: ignore[call-arg]
                             security=SecuritySettings(initial_admin_password=ADMIN_PASSWORD,
                                                       credential_cache_seconds=0)))  # type: ignore[call-arg]
    mosaic.start(dicom=False)
    try:
        mosaic.ingest.store(to_bytes(make_instance(patient_id="PG-1", study_uid=PSY_STUDY)), door="import",
                            facility="SITE-B", department="PSYCHIATRY")
        mosaic.identity.add_user("pg.doc", roles=["clinician"], password="pg-doc-password", facilities=["SITE-A"])
        with httpx.Client(base_url=url(mosaic, "")) as browser:
            browser.get("/login")
            signed_in = browser.post("/login", data={"username": "pg.doc", "password": "pg-doc-password",
                                                     "csrf_token": browser.cookies["mosaic_login_csrf"]})
            assert signed_in.status_code == 303
            assert browser.get("/dicom-web/studies").json() == []
            csrf = browser.get("/api/me").json()["csrf_token"]
            opened = browser.post("/api/break-glass", json={"StudyInstanceUID": PSY_STUDY,
                                                            "reason": "tumour board consult"},
                                  headers={"X-CSRF-Token": csrf})
            assert opened.status_code == 200, opened.text
            assert browser.get(f"/dicom-web/studies/{PSY_STUDY}/metadata").status_code == 200
        token = mosaic.identity.issue_token("pg.doc", days=1)
        assert httpx.get(url(mosaic, "/api/me"), headers=bearer(token)).json()["name"] == "pg.doc"
        mosaic.audit.flush()
        assert mosaic.audit.verify().intact
        assert any(row.break_glass for row in mosaic.audit.search(user="pg.doc")[0])
    finally:
        mosaic.stop()


def test_a_store_cannot_add_to_another_sites_study(node: Mosaic) -> None:
    """STOW is a door into existing studies too: a SITE-A technologist may store new studies, but not add
    instances to (or replace instances of) a SITE-B study; nothing of the refused part is kept."""
    node.identity.add_user("tech.a", roles=["technologist"], facilities=["SITE-A"])
    tech = token_of(node, "tech.a")
    intruder = make_instance(patient_id="PSY-1", study_uid=PSY_STUDY)
    own = make_instance(patient_id="NEW-1", InstitutionName="SITE-A")
    boundary = "mosaic-test-boundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + to_bytes(dataset) + b"\r\n"
                    for dataset in (intruder, own)) + f"--{boundary}--\r\n".encode()
    before = node.retrieve.instances_in(PSY_STUDY, scope=Scope.everything())
    response = httpx.post(url(node, "/dicom-web/studies"), content=body, headers={
        **tech, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert response.status_code == 202, response.text
    failed = response.json()["00081198"]["Value"]
    assert [item["00081155"]["Value"][0] for item in failed] == [intruder.SOPInstanceUID]
    assert failed[0]["00081197"]["Value"] == [0x0124]
    assert node.retrieve.instances_in(PSY_STUDY, scope=Scope.everything()) == before
    assert node.retrieve.instances_by_uid([own.SOPInstanceUID], scope=Scope.everything())  # its own new study is stored


def test_a_store_cannot_reach_another_sites_study_through_its_series_or_instances(node: Mosaic) -> None:
    """A new Study Instance UID does not open a way in: an object that names another site's series (which would
    file it under that study) or another site's instance (which would be reported a duplicate, or replaced) is
    refused like any other store into that study (0x0124), and its existence is not given away."""
    node.identity.add_user("tech.b", roles=["technologist"], facilities=["SITE-A"])
    tech = token_of(node, "tech.b")
    stored = node.retrieve.instances_in(PSY_STUDY, scope=Scope.everything())[0]
    into_series = make_instance(patient_id="NEW-2", study_uid="1.2.826.0.1.3680043.10.1234.77",
                                series_uid=psy_series_uid(node))
    same_instance = make_instance(patient_id="NEW-3", study_uid="1.2.826.0.1.3680043.10.1234.78",
                                  sop_uid=stored.SOPInstanceUID)
    boundary = "mosaic-test-boundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + to_bytes(dataset)
                    + b"\r\n" for dataset in (into_series, same_instance)) + f"--{boundary}--\r\n".encode()
    before = node.retrieve.instances_in(PSY_STUDY, scope=Scope.everything())
    response = httpx.post(url(node, "/dicom-web/studies"), content=body, headers={
        **tech, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert response.status_code == 409, response.text
    failed = {item["00081155"]["Value"][0]: item["00081197"]["Value"][0]
              for item in response.json()["00081198"]["Value"]}
    assert failed == {into_series.SOPInstanceUID: 0x0124, same_instance.SOPInstanceUID: 0x0124}
    assert node.retrieve.instances_in(PSY_STUDY, scope=Scope.everything()) == before
    assert not node.retrieve.instances_by_uid([into_series.SOPInstanceUID], scope=Scope.everything())


def psy_series_uid(node: Mosaic) -> str:
    with node.database.session() as session:
        return str(session.scalar(select(Series.SeriesInstanceUID).join(Study, Series.study_pk == Study.pk)
                                  .where(Study.StudyInstanceUID == PSY_STUDY)))


@pytest.mark.parametrize("path", ["/api/break-glass", "/api/exports", "/api/users", "/api/holds"])
def test_a_body_that_is_not_json_is_a_400_that_says_so(node: Mosaic, path: str) -> None:
    response = httpx.post(url(node, path), content=b"{not json", headers={
        **token_of(node, "admin"), "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "not JSON" in response.json()["error"]
