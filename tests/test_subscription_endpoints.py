"""Where FHIR Subscriptions may send patient data: not to the archive's own machine or a cloud metadata service,
https unless an administrator lists the endpoint, never following a redirect, with no framing headers of the
subscriber's own, and only so many per account."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, FhirSettings, HttpSettings, Settings, WorkflowSettings
from mosaic.fhir.endpoints import endpoint_refusal, header_refusal
from tests.helpers import wait_until
from tests.test_study_available import LOCALHOST, PREFIX, FakeEhr, post, store, subscription


@pytest.mark.parametrize(("url", "prefixes", "refused"), [
    ("https://10.20.30.40/notify", [], False),  # a hospital network's EHR
    ("http://10.20.30.40/notify", [], True),  # patient data in the clear
    ("https://127.0.0.1/notify", [], True),  # the archive's own machine
    ("https://[::1]/notify", [], True),
    ("https://169.254.169.254/latest/meta-data/", [], True),  # a cloud metadata service
    ("https://0.0.0.0/", [], True),
    ("https://user:secret@10.20.30.40/", [], True),
    ("http://127.0.0.1:8080/in", ["http://127.0.0.1:8080/"], False),  # listed by the administrator
    ("https://10.20.30.40/notify", ["https://ehr.example.org/"], True),  # a list is the whole list
    ("https://ehr.example.org.evil.net/in", ["https://ehr.example.org"], True),  # a host is not a string prefix
    ("https://ehr.example.org/notifyother", ["https://ehr.example.org/notify"], True),
    ("https://ehr.example.org/notify/7", ["https://ehr.example.org/notify"], False),
    ("https://ehr.example.org:8443/in", ["https://ehr.example.org:9443/"], True),
    ("gopher://10.20.30.40/", [], True),
])
def test_the_endpoint_rules(url: str, prefixes: list[str], refused: bool) -> None:
    assert (endpoint_refusal(url, prefixes) is not None) is refused


def test_framing_headers_are_the_archives() -> None:
    assert header_refusal(["Authorization: Bearer abc"]) is None
    for line in ("Host: elsewhere", "Content-Length: 0", "Transfer-Encoding: chunked", "X-Broken\r\nHost: a"):
        assert header_refusal([line]) is not None, line


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                             workflow=WorkflowSettings(study_stable_seconds=0.3, sweep_seconds=0.1),
                             fhir=FhirSettings(retry_seconds=0.1, max_retry_seconds=0.2,
                                               subscription_endpoints=[f"http://{LOCALHOST}:"],
                                               max_subscriptions_per_account=2)))
    mosaic.start()
    mosaic.identity.add_user("ehr", roles=["integration"])
    yield mosaic
    mosaic.stop()


class Redirecting:
    """An endpoint that answers every notification with a 302 to another path of its own."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.paths.append(self.path)
                self.send_response(302)
                self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_redirect_is_not_followed_and_the_subscription_shows_the_error(node: Mosaic) -> None:
    endpoint = Redirecting()
    try:
        token = node.identity.issue_token("ehr")
        created = post(node, token, subscription(f"http://{LOCALHOST}:{endpoint.port}/in"))
        assert created.status_code == 201, created.text
        store(node, f"{PREFIX}.41")
        wait_until(lambda: endpoint.paths, what="a notification attempt")
        read = httpx.get(f"http://{LOCALHOST}:{node.http_port}/fhir/Subscription/{created.json()['id']}",
                         headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
        wait_until(lambda: httpx.get(f"http://{LOCALHOST}:{node.http_port}/fhir/Subscription/"
                                     f"{created.json()['id']}", headers={"Authorization": f"Bearer {token}"},
                                     timeout=30).json().get("status") == "error", what="the error status")
        assert "/elsewhere" not in endpoint.paths  # neither the POST nor a GET followed the redirect
        assert read["resourceType"] == "Subscription"
    finally:
        endpoint.stop()


def test_an_account_holds_only_so_many_subscriptions_and_bad_endpoints_are_refused(tmp_path: Path) -> None:
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                             fhir=FhirSettings(max_subscriptions_per_account=2)))
    mosaic.start()
    ehr = FakeEhr()
    try:
        mosaic.identity.add_user("ehr", roles=["integration"])
        token = mosaic.identity.issue_token("ehr")
        for url, says in ((f"http://{LOCALHOST}:{ehr.port}/in", "https only"),
                          (f"https://{LOCALHOST}:{ehr.port}/in", "loopback"),
                          ("https://169.254.169.254/latest/meta-data/", "link-local")):
            answer = post(mosaic, token, subscription(url))
            assert answer.status_code == 400, url
            assert says in (OperationOutcome.model_validate(answer.json()).issue[0].diagnostics or "")
        body = subscription("https://10.20.30.40/notify")
        assert [post(mosaic, token, body).status_code for _ in range(3)] == [201, 201, 403]
        assert len(mosaic.subscriptions.find("ehr")) == 2
    finally:
        ehr.stop()
        mosaic.stop()


def test_channel_header_values_are_not_read_back_and_a_huge_body_is_refused(node: Mosaic) -> None:
    token = node.identity.issue_token("ehr")
    body = subscription(f"http://{LOCALHOST}:9/in")
    body["channel"]["header"] = ["Authorization: Bearer ehr-secret-token"]
    created = post(node, token, body)
    assert created.status_code == 201, created.text
    read = httpx.get(f"http://{LOCALHOST}:{node.http_port}/fhir/Subscription/{created.json()['id']}",
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert "ehr-secret-token" not in created.text and "ehr-secret-token" not in read.text
    assert read.json()["channel"]["header"] == ["Authorization: (not shown)"]
    huge = subscription(f"http://{LOCALHOST}:9/in") | {"reason": "x" * (70 * 1024)}
    answer = post(node, token, huge)
    assert answer.status_code == 413 and OperationOutcome.model_validate(answer.json()).issue
    assert len(node.subscriptions.find("ehr")) == 1


def test_a_notification_goes_to_the_address_that_was_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the endpoint's name resolves to an allowed address when it is checked and to the archive's
    own machine a moment later. The notification must go to the checked address (here one that does not answer),
    never to a second lookup's. The resolver is replaced (no DNS server can be run here); the sockets are real."""
    import socket

    listener = socket.create_server((LOCALHOST, 0))
    listener.settimeout(0.1)
    accepted: list[object] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:  # the listener closed at the end of the test
                return

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "ehr.rebind.test":
            return real(host, *args, **kwargs)
        lookups.append(host)
        address = "192.0.2.10" if len(lookups) <= 2 else LOCALHOST  # the check, then the attacker's answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                             workflow=WorkflowSettings(study_stable_seconds=0.3, sweep_seconds=0.1),
                             fhir=FhirSettings(retry_seconds=30, max_retry_seconds=30,
                                               notification_timeout_seconds=0.5)))
    mosaic.start()
    try:
        mosaic.identity.add_user("ehr", roles=["integration"])
        token = mosaic.identity.issue_token("ehr")
        created = post(mosaic, token, subscription(f"https://ehr.rebind.test:{port}/in"))
        assert created.status_code == 201, created.text
        store(mosaic, f"{PREFIX}.61")
        location = f"http://{LOCALHOST}:{mosaic.http_port}/fhir/Subscription/{created.json()['id']}"
        wait_until(lambda: httpx.get(location, headers={"Authorization": f"Bearer {token}"},
                                     timeout=30).json().get("status") == "error", what="the failed notification")
        assert len(lookups) == 2  # one at creation, one for the notification: none behind the check's back
        assert accepted == []  # nothing reached the archive's own machine
    finally:
        mosaic.stop()
        stopping.set()
        listener.close()
        for connection in accepted:
            connection.close()  # type: ignore[attr-defined]
