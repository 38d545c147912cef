"""The HTTP door under abuse: slow or endless requests, too many connections, unbounded parameters."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from tests.auth_support import auth_headers
from tests.factory import make_instance, to_bytes

SLOW = 40
"""Connections that send part of their headers and then nothing."""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    http = HttpSettings(port=0, header_timeout_seconds=1.0, body_timeout_seconds=1.0, max_connections=SLOW + 10,
                        max_connections_per_address=SLOW + 10)
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=http, dicom=DicomSettings(port=0)))
    mosaic.start()
    yield mosaic
    mosaic.stop()


def _closed_by_server(sock: socket.socket, deadline: float) -> bytes:
    """What the server sent before it closed ``sock`` (fails the test when it is still open at ``deadline``)."""
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data
    raise AssertionError("the server kept a connection open long after its deadline")


def test_connections_that_never_finish_their_headers_are_closed_and_others_still_served(node: Mosaic) -> None:
    slow = []
    try:
        for number in range(SLOW):
            sock = socket.create_connection(("127.0.0.1", node.http_port), timeout=60)
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{number}: ".encode())
            slow.append(sock)
        answer = httpx.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=60)
        assert answer.status_code == 200
        deadline = time.monotonic() + 60
        for sock in slow:
            sock.sendall(b"a")  # trickling bytes does not extend the deadline
        for sock in slow:
            assert _closed_by_server(sock, deadline).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in slow:
            sock.close()


def test_a_body_that_stops_arriving_is_abandoned(node: Mosaic) -> None:
    authorization = auth_headers(node)["Authorization"]
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=60) as sock:
        sock.sendall(f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                     f"Authorization: {authorization}\r\nContent-Type: multipart/related; boundary=x\r\n\r\n"
                     "--x\r\n\r\n".encode() + b"\0" * 1000)
        assert _closed_by_server(sock, time.monotonic() + 60) == b""
    spool = node.settings.blob_path / ".incoming"
    deadline = time.monotonic() + 60
    while any(spool.iterdir()) and time.monotonic() < deadline:  # the abandoned part's spool file is removed
        time.sleep(0.05)
    assert not any(spool.iterdir())


def test_connections_beyond_the_cap_are_answered_503(node: Mosaic) -> None:
    cap = node.settings.http.max_connections
    held = []
    try:
        for _ in range(cap):
            held.append(socket.create_connection(("127.0.0.1", node.http_port), timeout=60))
        with socket.create_connection(("127.0.0.1", node.http_port), timeout=60) as extra:
            answer = _closed_by_server(extra, time.monotonic() + 60)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 5" in answer
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the held ones are closed: there is room again
        try:
            if httpx.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=60).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError("the server did not accept connections again after the flood ended")


@pytest.mark.parametrize("proxy", [False, True])
def test_one_address_cannot_fill_the_door_unless_it_is_the_trusted_proxy(tmp_path: Path, proxy: bool) -> None:
    """A stranger at 127.0.0.1 holding http.max_connections_per_address connections gets 503 for one more, while
    a client at 127.0.0.2 (also loopback) is still served; the trusted reverse proxy is not held to it."""
    http = HttpSettings(port=0, max_connections=50, max_connections_per_address=5,  # type: ignore[call-arg]
                        trusted_proxies=["127.0.0.1"] if proxy else [])
    node = Mosaic(Settings(data_dir=tmp_path, http=http, dicom=DicomSettings(port=0)))  # type: ignore[call-arg]
    node.start(dicom=False)
    held = []
    try:
        for _ in range(5):
            held.append(socket.create_connection(("127.0.0.1", node.http_port), timeout=60))
        with socket.create_connection(("127.0.0.1", node.http_port), timeout=60) as extra:
            if proxy:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = _closed_by_server(extra, time.monotonic() + 60)
        if proxy:
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        else:
            assert answer.startswith(b"HTTP/1.1 503 ") and b"http.max_connections_per_address" in answer, answer
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=60)
        with other:
            assert other.get(f"http://127.0.0.1:{node.http_port}/healthz").status_code == 200
    finally:
        for sock in held:
            sock.close()
        node.stop()


def test_integer_parameters_are_bounded_and_frame_lists_deduplicated(node: Mosaic) -> None:
    dataset = make_instance(NumberOfFrames=2)
    dataset.PixelData = bytes(16 * 16 * 2 * 2)
    node.ingest.store(to_bytes(dataset), door="test")
    root = f"http://127.0.0.1:{node.http_port}"
    instance = (f"{root}/dicom-web/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
                f"/instances/{dataset.SOPInstanceUID}")
    uri = {"requestType": "WADO", "studyUID": dataset.StudyInstanceUID, "seriesUID": dataset.SeriesInstanceUID,
           "objectUID": dataset.SOPInstanceUID}
    with httpx.Client(headers=auth_headers(node), timeout=60) as client:
        assert client.get(f"{root}/wado", params={**uri, "rows": "64"}).status_code == 200
        for rows in ("25000", "100000000", "1e8", "99999999999999999999"):
            answer = client.get(f"{root}/wado", params={**uri, "rows": rows, "columns": "64"})
            assert answer.status_code == 400, (rows, answer.text)
        answer = client.get(f"{root}/wado", params={**uri, "frameNumber": "99999999999999999999"})
        assert answer.status_code == 400
        for offset in ("99999999999999999999", "-1", "2147483648"):
            for name in ("offset", "limit"):
                answer = client.get(f"{root}/dicom-web/studies", params={name: offset})
                assert answer.status_code == 400, (name, offset, answer.text)
        assert client.get(f"{root}/api/changes", params={"since": "99999999999999999999"}).status_code == 422
        answer = client.get(f"{instance}/rendered", params={"viewport": "10,10,0,0,1e309,1e309"})
        assert answer.status_code == 400
        once = client.get(f"{instance}/frames/2,1", headers={"Accept": "multipart/related; "
                                                                     "type=application/octet-stream"})
        repeated = client.get(f"{instance}/frames/" + ",".join(["2", "1"] * 3000),
                              headers={"Accept": "multipart/related; type=application/octet-stream"})
        assert repeated.status_code == 200 and repeated.content.count(b"Content-Location") == 2
        assert repeated.content == once.content


def test_every_answer_forbids_framing_by_other_sites(node: Mosaic) -> None:
    root = f"http://127.0.0.1:{node.http_port}"
    for answer in (httpx.get(f"{root}/", headers=auth_headers(node)), httpx.get(f"{root}/login"),
                   httpx.get(f"{root}/healthz"), httpx.get(f"{root}/dicom-web/studies")):
        assert answer.headers["content-security-policy"] == "frame-ancestors 'self'", answer.url
        assert answer.headers["x-frame-options"] == "SAMEORIGIN"


def test_a_forged_host_header_never_reaches_the_urls_in_answers(node: Mosaic) -> None:
    dataset = make_instance()
    node.ingest.store(to_bytes(dataset), door="test")
    root = f"http://127.0.0.1:{node.http_port}/dicom-web"
    for host, expected in ((f"evil.example:{node.http_port}", f"http://127.0.0.1:{node.http_port}/dicom-web/"),
                           (f"localhost:{node.http_port}", f"http://localhost:{node.http_port}/dicom-web/")):
        headers = {**auth_headers(node), "Host": host}
        found = httpx.get(f"{root}/studies", headers=headers).json()
        metadata = httpx.get(f"{root}/studies/{dataset.StudyInstanceUID}/metadata", headers=headers).text
        assert found[0]["00081190"]["Value"][0].startswith(expected), found
        assert "evil.example" not in metadata and expected in metadata
