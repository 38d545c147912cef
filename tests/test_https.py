"""HTTPS out of the box (http.tls_cert_file): DICOMweb over TLS with the dicomweb-client package, plain HTTP not
answered, and browser cookies marked Secure."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, SecuritySettings, Settings
from tests.factory import make_instance, to_bytes
from tests.helpers import LOCALHOST
from tests.tls_support import certificate_authority, issued_certificate

STUDY = "1.2.826.0.1.3680043.10.1234.41"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosaic, Path]]:
    folder = tmp_path_factory.mktemp("https")
    ca = certificate_authority(folder, "hospital-ca")
    certificate, key = issued_certificate(folder, ca, "pacs.example")
    node = Mosaic(Settings(data_dir=folder / "data", dicom=DicomSettings(port=0),  # type: ignore[call-arg]
                           http=HttpSettings(port=0, tls_cert_file=certificate, tls_key_file=key),  # type: ignore[call-arg]
                           security=SecuritySettings(initial_admin_password="admin-password-1")))  # type: ignore[call-arg]
    node.start(dicom=False)
    node.ingest.store(to_bytes(make_instance(study_uid=STUDY, patient_id="TLS-WEB")), door="import")
    yield node, ca[0]
    node.stop()


def test_dicomweb_over_https_with_dicomweb_client(secured: tuple[Mosaic, Path]) -> None:
    node, ca = secured
    session = requests.Session()
    session.verify = str(ca)
    session.trust_env = False  # else requests prefers a REQUESTS_CA_BUNDLE from the environment to session.verify
    client = DICOMwebClient(f"https://{LOCALHOST}:{node.http_port}/dicom-web", session=session,
                            headers={"Authorization": f"Bearer {node.identity.issue_token('admin')}"})
    studies = client.search_for_studies()
    assert [study["0020000D"]["Value"][0] for study in studies] == [STUDY]
    with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust the hospital CA
        requests.get(f"https://{LOCALHOST}:{node.http_port}/healthz", timeout=10)


def test_plain_http_is_not_answered(secured: tuple[Mosaic, Path]) -> None:
    node, _ca = secured
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{LOCALHOST}:{node.http_port}/healthz", timeout=10)


def test_browser_cookies_are_secure(secured: tuple[Mosaic, Path]) -> None:
    node, ca = secured
    context = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(base_url=f"https://{LOCALHOST}:{node.http_port}", verify=context) as browser:
        form = browser.get("/login")
        csrf = form.text.split('name="csrf_token" value="')[1].split('"')[0]
        assert "secure" in form.headers["set-cookie"].lower()
        signed_in = browser.post("/login", data={"username": "admin", "password": "admin-password-1",
                                                 "csrf_token": csrf, "next": "/api/me"})
        assert signed_in.status_code == 303
        session_cookie = [value for value in signed_in.headers.get_list("set-cookie")
                          if value.startswith("mosaic_session=")]
        assert session_cookie and "; secure" in session_cookie[0].lower()
        assert browser.get("/api/me").json()["name"] == "admin"
