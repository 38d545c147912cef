"""Single sign-on for the browser (OpenID Connect authorization code flow with PKCE): a person signs in at the
hospital's identity provider and gets a Mosaic session with the provider's roles and scope; forged, replayed,
foreign or expired answers are refused and audited.

The identity provider is a small one served on loopback (``tests.oidc_support``), standing in for Keycloak or
Entra ID, which cannot run on this machine; it checks the client, its secret, the redirect URI and PKCE.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, SecuritySettings, Settings
from tests.factory import make_instance, to_bytes
from tests.helpers import LOCALHOST
from tests.oidc_support import CLIENT_ID, IdentityProvider

SITE_A_STUDY = "1.2.826.0.1.3680043.10.1234.31"
SITE_B_STUDY = "1.2.826.0.1.3680043.10.1234.32"


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, idp: IdentityProvider) -> Iterator[Mosaic]:
    security = SecuritySettings(initial_admin_password="admin-password-1", credential_cache_seconds=0,  # type: ignore[call-arg]
                                oidc=idp.settings())
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("sso"), http=HttpSettings(port=0),  # type: ignore[call-arg]
                             dicom=DicomSettings(port=0), security=security))  # type: ignore[call-arg]
    mosaic.start(dicom=False)
    for study, facility in ((SITE_A_STUDY, "SITE-A"), (SITE_B_STUDY, "SITE-B")):
        mosaic.ingest.store(to_bytes(make_instance(study_uid=study, patient_id=f"P-{facility}")), door="import",
                            facility=facility, department="DERMATOLOGY")
    yield mosaic
    mosaic.stop()


@contextmanager
def sign_in(node: Mosaic, idp: IdentityProvider, username: str, **claims: Any) -> Iterator[httpx.Client]:
    """A browser that goes through the whole flow (Mosaic → provider → Mosaic) and lands on /api/me."""
    idp.person = {"name": username, "claims": claims}
    with httpx.Client(base_url=f"http://{LOCALHOST}:{node.http_port}", follow_redirects=True) as browser:
        browser.get("/login/oidc", params={"next": "/api/me"})
        yield browser


def denied(node: Mosaic) -> list[str]:
    node.audit.flush()
    rows = node.audit.search(action="login", limit=20)[0]
    return [json.loads(row.detail)["reason"] for row in rows if row.outcome == "denied"
            and json.loads(row.detail or "{}").get("via") == "oidc"]


def test_the_sign_in_page_offers_the_provider(node: Mosaic) -> None:
    page = httpx.get(f"http://{LOCALHOST}:{node.http_port}/login", params={"next": "/viewer/"})
    assert "Sign in with St. Elsewhere sign-in" in page.text and "/login/oidc?next=/viewer/" in page.text


def test_single_sign_on_opens_a_session_with_the_providers_roles_and_scope(node: Mosaic,
                                                                          idp: IdentityProvider) -> None:
    with sign_in(node, idp, "dr.derm", roles=["clinician"], facilities=["SITE-A"], name="Dr Derm") as browser:
        me = browser.get("/api/me")
        assert me.status_code == 200, me.text
        assert (me.json()["name"], me.json()["roles"], me.json()["facilities"]) == ("dr.derm", ["clinician"],
                                                                                   ["SITE-A"])
        studies = browser.get("/dicom-web/studies").json()
        assert [study["0020000D"]["Value"][0] for study in studies] == [SITE_A_STUDY]
    asked = idp.requests[-1]
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["redirect_uri"] == f"http://{LOCALHOST}:{node.http_port}/login/oidc/callback"
    node.audit.flush()
    signed_in = [row for row in node.audit.search(action="login", user="dr.derm", limit=5)[0]]
    assert signed_in[0].outcome == "success" and json.loads(signed_in[0].detail)["via"] == "oidc"
    account = next(account for account in node.identity.users() if account.username == "dr.derm")
    assert (account.display_name, account.has_password, account.source) == ("Dr Derm", False, "oidc")


def test_roles_follow_the_provider_and_an_administrator_can_still_disable_the_person(
        node: Mosaic, idp: IdentityProvider) -> None:
    with sign_in(node, idp, "dr.rad", roles=["clinician"]) as browser:
        assert browser.get("/api/me").json()["roles"] == ["clinician"]
    with sign_in(node, idp, "dr.rad", roles=["radiologist"]) as browser:
        assert browser.get("/api/me").json()["roles"] == ["radiologist"]
    node.identity.update_user("dr.rad", active=False)
    with sign_in(node, idp, "dr.rad", roles=["radiologist"]) as browser:
        assert browser.get("/api/me").status_code == 401
    assert "account 'dr.rad' is disabled in Mosaic" in denied(node)[0]


@pytest.mark.parametrize(("tamper", "name", "reason"), [
    ({"nonce": "replayed-from-another-sign-in"}, "eve", "nonce mismatch"),
    ({"key": "stranger"}, "eve", "Signature verification failed"),
    ({"aud": "another-application"}, "eve", "not for audience 'mosaic-web'"),
    ({"expires_in": -600}, "eve", "has expired"),
    ({"error": True}, "eve", "access_denied"),
    ({}, "admin", "is a local Mosaic account"),
])
def test_sign_ins_that_must_fail(node: Mosaic, idp: IdentityProvider, tamper: dict[str, Any], name: str,
                                 reason: str) -> None:
    idp.tamper = {**tamper, **({"key": idp.stranger} if tamper.get("key") else {})}
    try:
        with sign_in(node, idp, name, roles=["administrator"]) as browser:
            assert browser.get("/api/me").status_code == 401  # no session
    finally:
        idp.tamper = {}
    assert reason in denied(node)[0]
    accounts = {account.username: account for account in node.identity.users()}
    assert "eve" not in accounts  # nobody was provisioned
    assert accounts["admin"].has_password  # the local administrator stays local


def test_a_forged_callback_is_refused(node: Mosaic, idp: IdentityProvider) -> None:
    """A link to the callback with a code the attacker obtained, in a victim's browser that never started a sign-in
    (login CSRF): no session, and the code is never exchanged."""
    idp.person = {"name": "mallory", "claims": {"roles": ["clinician"]}}
    query = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": "x", "scope": "openid",
             "state": "s", "nonce": "n", "code_challenge": "c" * 43, "code_challenge_method": "S256"}
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(idp.authorize(query)).query)["code"][0]
    with httpx.Client(base_url=f"http://{LOCALHOST}:{node.http_port}") as victim:
        answer = victim.get("/login/oidc/callback", params={"code": code, "state": "s"})
        assert answer.status_code == 401 and "state mismatch" in answer.text
        assert victim.get("/api/me").status_code == 401
    assert code in idp.codes  # never exchanged
    assert "state mismatch" in denied(node)[0]


def test_user_names_from_the_provider_are_one_account_whatever_their_case_and_spaces(
        node: Mosaic, idp: IdentityProvider) -> None:
    for spelling in ("CLIN.A ", "clin.a", " Clin.A", "\uff23\uff2c\uff29\uff2e.\uff21"):  # full-width: NFKC
        with sign_in(node, idp, spelling, roles=["clinician"]) as browser:
            me = browser.get("/api/me")
            assert me.status_code == 200 and me.json()["name"] == "clin.a", (spelling, me.text)
    named = [account.username for account in node.identity.users() if account.username.lower().strip() == "clin.a"]
    assert named == ["clin.a"]


def test_an_account_created_before_names_were_normalised_is_still_the_persons(node: Mosaic,
                                                                               idp: IdentityProvider) -> None:
    from datetime import UTC, datetime

    from mosaic.index.schema import UserAccount

    now = datetime.now(UTC)
    with node.database.session(write=True) as session:  # as single sign-on created it before the fix
        session.add(UserAccount(username="Legacy.Rad", display_name="", password_hash="", roles="clinician",
                                facilities="*", departments="*", active=True, source="oidc", created_at=now,
                                updated_at=now))
    with sign_in(node, idp, "LEGACY.RAD", roles=["radiologist"]) as browser:
        me = browser.get("/api/me")
        assert me.status_code == 200 and (me.json()["name"], me.json()["roles"]) == ("Legacy.Rad", ["radiologist"])
    assert [account.username for account in node.identity.users()
            if account.username.lower() == "legacy.rad"] == ["Legacy.Rad"]  # no second account


def test_a_local_account_in_another_case_is_not_taken_over(node: Mosaic, idp: IdentityProvider) -> None:
    node.identity.add_user("Night.Admin", roles=["administrator"], password="night-admin-password")
    with sign_in(node, idp, "night.admin", roles=["administrator"]) as browser:
        assert browser.get("/api/me").status_code == 401
    assert "'Night.Admin' is a local Mosaic account" in denied(node)[0]
    accounts = [account for account in node.identity.users() if account.username.lower() == "night.admin"]
    assert [(account.username, account.source) for account in accounts] == [("Night.Admin", "local")]


def test_a_forged_host_header_never_becomes_the_redirect_uri(node: Mosaic) -> None:
    """A phishing link through Mosaic with ``Host: evil.example`` must not send the provider's code there."""
    answer = httpx.get(f"http://{LOCALHOST}:{node.http_port}/login/oidc", params={"next": "/api/me"},
                       headers={"Host": "evil.example"}, follow_redirects=False)
    assert answer.status_code in (302, 303, 307), answer.text
    asked = urllib.parse.parse_qs(urllib.parse.urlsplit(answer.headers["location"]).query)
    assert asked["redirect_uri"] == [f"http://{LOCALHOST}:{node.http_port}/login/oidc/callback"]
