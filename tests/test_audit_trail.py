"""The audit trail is tamper-evident and leaves Mosaic for an audit repository without ever being dropped.

Tampering is done the way an intruder with database access would: SQL straight on the index file.
The audit repository is a real TCP syslog collector on loopback (RFC 6587 octet counting).
"""

from __future__ import annotations

import re
import socket
import socketserver
import sqlite3
import ssl
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from mosaic.app import Mosaic
from mosaic.cli import app as cli
from mosaic.config import DicomSettings, HttpSettings, SecuritySettings, Settings, SyslogSettings
from mosaic.governance.audit import AuditEntry
from mosaic.index.query import Scope
from tests.auth_support import auth_headers
from tests.factory import make_instance, to_bytes
from tests.helpers import LOCALHOST, free_port, wait_until
from tests.tls_support import certificate_authority, issued_certificate


def new_node(data_dir: Path, **security: object) -> Mosaic:
    node = Mosaic(Settings(data_dir=data_dir, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                           security=SecuritySettings(**security)))  # type: ignore[arg-type]
    node.start(dicom=False)
    return node


def write_records(node: Mosaic, count: int) -> None:
    for number in range(count):
        node.audit.record(AuditEntry(action="read", outcome="success", actor=f"user{number}", interface="http",
                                     PatientID=f"P{number}", detail={"n": number}))
    assert node.audit.flush()


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Mosaic, Path]]:
    node = new_node(tmp_path)
    write_records(node, 10)
    yield node, tmp_path / "index.sqlite"
    node.stop()


def tamper(index: Path, *statements: str) -> None:
    with sqlite3.connect(index) as connection:
        for statement in statements:
            connection.execute(statement)


def verify_cli(data_dir: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["audit", "verify", "--data-dir", str(data_dir)])
    return result.exit_code, result.output


def test_an_untouched_chain_verifies(chain: tuple[Mosaic, Path]) -> None:
    node, index = chain
    report = node.audit.verify()
    assert report.intact and report.checked == 10
    code, output = verify_cli(index.parent)
    assert code == 0 and "intact" in output, output


@pytest.mark.parametrize(("statements", "bad_seq", "words"), [
    (["UPDATE audit_record SET actor = 'someone-else' WHERE seq = 4"], 4, "was changed"),
    (["UPDATE audit_record SET outcome = 'denied' WHERE seq = 7"], 7, "was changed"),
    (["DELETE FROM audit_record WHERE seq = 5"], 5, "is missing"),
    # renumber the rest to hide the gap: the chain still breaks where the record was
    (["DELETE FROM audit_record WHERE seq = 5",
      "UPDATE audit_record SET seq = seq - 1 WHERE seq > 5"], 5, "does not follow"),
    # two records swapped
    (["UPDATE audit_record SET seq = 1000 WHERE seq = 3", "UPDATE audit_record SET seq = 3 WHERE seq = 4",
      "UPDATE audit_record SET seq = 4 WHERE seq = 1000"], 3, ""),
    (["DELETE FROM audit_record WHERE seq > 8"], 9, "removed from the end"),
])
def test_tampering_is_found_and_the_first_bad_record_named(chain: tuple[Mosaic, Path], statements: list[str],
                                                           bad_seq: int, words: str) -> None:
    node, index = chain
    tamper(index, *statements)
    report = node.audit.verify()
    assert not report.intact
    assert report.first_bad_seq == bad_seq, report
    assert words in report.reason
    code, output = verify_cli(index.parent)
    assert code == 1
    assert f"broken at record {bad_seq}" in " ".join(output.split()), output


def test_a_rehashed_edit_is_still_found(chain: tuple[Mosaic, Path]) -> None:
    """An intruder who recomputes the edited record's hash breaks the link to the next record."""
    node, index = chain
    from mosaic.governance.audit import record_hash, row_values
    from mosaic.index.schema import AuditRecord

    with node.database.session() as session:
        row = session.get(AuditRecord, 6)
        assert row is not None
        values = row_values(row)
        values["actor"] = "nobody"
        forged = record_hash(6, row.recorded_at, values, row.previous_hash)
    tamper(index, f"UPDATE audit_record SET actor = 'nobody', hash = '{forged}' WHERE seq = 6")
    report = node.audit.verify()
    assert report.first_bad_seq == 7 and "does not follow" in report.reason


def test_concurrent_writers_keep_one_unbroken_chain(tmp_path: Path) -> None:
    node = new_node(tmp_path)
    try:
        threads = [threading.Thread(target=write_records, args=(node, 50)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report = node.audit.verify()
        assert report.intact and report.checked == 200
    finally:
        node.stop()


# --- the audit repository (syslog) ----------------------------------------------------------------

class Collector:
    """A TCP syslog collector (RFC 6587 octet counting) that keeps every message it gets."""

    def __init__(self, port: int, *, reading: bool = True, tls: ssl.SSLContext | None = None) -> None:
        self.messages: list[bytes] = []
        self.reading = reading
        self.handshake_failures: list[str] = []
        self.connected = False
        collector = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                collector.connected = True
                if tls is not None:
                    try:
                        self.request = tls.wrap_socket(self.request, server_side=True)
                    except (ssl.SSLError, OSError) as exc:
                        collector.handshake_failures.append(str(exc))
                        return
                buffer = b""
                while True:
                    if not collector.reading:
                        time.sleep(0.05)
                        if collector.stopped:
                            return
                        continue
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    while b" " in buffer:
                        length, _, rest = buffer.partition(b" ")
                        if len(rest) < int(length):
                            break
                        collector.messages.append(rest[:int(length)])
                        buffer = rest[int(length):]

        self.stopped = False
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((LOCALHOST, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def audit(self) -> list[bytes]:
        """The PS3.15 audit messages received (not the chain's signed checkpoints, which come too)."""
        return [message for message in list(self.messages) if b" IHE+RFC-3881 " in message.partition(b"\xef")[0]]

    @property
    def checkpoints(self) -> list[bytes]:
        return [message for message in list(self.messages) if b" MOSAIC-CHECKPOINT " in message.partition(b"\xef")[0]]

    def stop(self) -> None:
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()


def audit_xml(message: bytes) -> ElementTree.Element:
    header, _, xml = message.partition(b"\xef\xbb\xbf")
    assert re.match(rb"<(\d+)>1 \d{4}-\d\d-\d\dT[\d:.]+Z \S+ mosaic - IHE\+RFC-3881 - $", header), header
    assert int(re.match(rb"<(\d+)>", header).group(1)) // 8 == 10  # authpriv
    return ElementTree.fromstring(xml.decode("utf-8"))


def test_records_wait_for_a_collector_that_is_down_and_arrive_in_order(tmp_path: Path) -> None:
    port = free_port()
    node = new_node(tmp_path, audit_syslog=SyslogSettings(host=LOCALHOST, port=port, retry_seconds=0.2))
    collector = None
    try:
        node.ingest.store(to_bytes(make_instance(patient_id="SYSLOG-1", study_uid="1.2.826.0.1.3680043.10.1234.77")),
                          door="import")
        headers = auth_headers(node)
        base = f"http://{LOCALHOST}:{node.http_port}"
        # the collector is down: clinical requests are answered all the same
        for _ in range(3):
            response = httpx.get(f"{base}/dicom-web/studies/1.2.826.0.1.3680043.10.1234.77/metadata",
                                 headers={**headers, "X-Request": str(_)})
            assert response.status_code == 200
        assert node.audit.flush()
        total = node.audit.total()
        assert total >= 1
        collector = Collector(port)
        wait_until(lambda: len(collector.audit) >= total, timeout=30, what="syslog delivery")
        messages = [audit_xml(message) for message in collector.audit]
        reads = [message for message in messages
                 if message.find("EventIdentification/EventID").get("csd-code") == "110104"]  # Instances Transferred
        assert reads, [ElementTree.tostring(message) for message in messages]
        objects = {element.get("ParticipantObjectID") for element in reads[0].iter("ParticipantObjectIdentification")}
        assert {"SYSLOG-1", "1.2.826.0.1.3680043.10.1234.77"} <= objects
        user = reads[0].find("ActiveParticipant").get("UserID")
        assert user == "admin"
        # nothing twice, nothing lost, in the chain's order
        times = [message.find("EventIdentification").get("EventDateTime") for message in messages]
        assert times == sorted(times) and len(messages) == total
    finally:
        node.stop()
        if collector is not None:
            collector.stop()


def test_a_stuck_collector_does_not_hold_up_retrieval(tmp_path: Path) -> None:
    """Nor storage: the forwarder holds no index transaction while it waits on the collector (on SQLite a write
    transaction would stop every C-STORE)."""
    port = free_port()
    collector = Collector(port, reading=False)  # accepts, never reads: the forwarder's sends block
    node = new_node(tmp_path, audit_syslog=SyslogSettings(host=LOCALHOST, port=port, retry_seconds=0.2))
    try:
        headers = auth_headers(node)
        base = f"http://{LOCALHOST}:{node.http_port}"
        write_records(node, 6000)  # more than the socket buffers hold (4 MB on the sending side here)
        for _ in range(20):
            assert httpx.get(f"{base}/dicom-web/studies", headers=headers).status_code == 200
        wait_until(lambda: collector.connected, timeout=30, what="the forwarder sending into the stuck collector")
        stored = node.ingest.store(to_bytes(make_instance(patient_id="WHILE-STUCK")), door="import")
        assert stored.sop_instance_uid and node.retrieve.instances_by_uid([stored.sop_instance_uid],
                                                                          scope=Scope.everything())
        assert node.audit.flush(), "audit records reach the index while the collector is stuck"
        collector.reading = True
        wait_until(lambda: len(collector.audit) >= node.audit.total(), timeout=60, what="syslog catch-up")
    finally:
        node.stop()
        collector.stop()


def test_syslog_over_udp(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind((LOCALHOST, 0))
    receiver.settimeout(10)
    node = new_node(tmp_path, audit_syslog=SyslogSettings(host=LOCALHOST, port=receiver.getsockname()[1],
                                                          protocol="udp"))
    try:
        write_records(node, 1)
        message, _ = receiver.recvfrom(65536)
        while b"MOSAIC-CHECKPOINT" in message.partition(b"\xef")[0]:  # the chain's signed checkpoint came first
            message, _ = receiver.recvfrom(65536)
        assert audit_xml(message).find("EventIdentification").get("EventOutcomeIndicator") == "0"
    finally:
        node.stop()
        receiver.close()


@pytest.mark.postgres
def test_two_nodes_on_postgresql_append_to_one_chain(tmp_path: Path, fresh_postgres_url: str) -> None:
    """Scale-out: two nodes sharing one PostgreSQL index keep a single unbroken chain (the head row is locked
    for each batch)."""
    from mosaic.config import IndexSettings

    nodes = [Mosaic(Settings(data_dir=tmp_path / f"node{number}", http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0), index=IndexSettings(url=fresh_postgres_url)))  # type: ignore[call-arg]
             for number in range(2)]
    for node in nodes:
        node.start(dicom=False)
    try:
        threads = [threading.Thread(target=write_records, args=(node, 100)) for node in nodes for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report = nodes[0].audit.verify()
        assert report.intact, report
        assert report.checked == nodes[1].audit.total() >= 400
    finally:
        for node in nodes:
            node.stop()


def test_instances_stored_one_by_one_are_recorded_per_series(tmp_path: Path) -> None:
    node = new_node(tmp_path)
    try:
        for number in range(30):
            node.audit.record(AuditEntry(action="store", outcome="success", actor="CT_SCANNER", actor_kind="ae",
                                         address="10.1.1.1", interface="dimse", PatientID="P1",
                                         StudyInstanceUID="1.2.3", SeriesInstanceUID=f"1.2.3.{number % 2}",
                                         SOPInstanceUID=f"1.2.3.{number % 2}.{number}",
                                         detail={"outcome": "stored"}))
        assert node.audit.flush()
        rows, total = node.audit.search(action="store")
        import json

        # one record per series and writer batch (a batch gathers for a quarter second), never one per instance
        assert 2 <= total < 30
        listed = sorted(item["SOPInstanceUID"] for row in rows for item in json.loads(row.detail)["instances"])
        assert listed == sorted(f"1.2.3.{number % 2}.{number}" for number in range(30))
        assert all(row.SeriesInstanceUID in {"1.2.3.0", "1.2.3.1"} for row in rows)
        assert node.audit.verify().intact
    finally:
        node.stop()


def test_syslog_over_mutual_tls_to_an_atna_repository(tmp_path: Path) -> None:
    """IHE ATNA: the repository proves who it is with its certificate, and Mosaic with its own."""
    hospital_ca = certificate_authority(tmp_path, "hospital-ca")
    repository_certificate, repository_key = issued_certificate(tmp_path, hospital_ca, "audit-repository")
    mosaic_certificate, mosaic_key = issued_certificate(tmp_path, hospital_ca, "mosaic-node")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(hospital_ca[0]))
    server.load_cert_chain(str(repository_certificate), str(repository_key))
    server.verify_mode = ssl.CERT_REQUIRED  # only nodes with a certificate of the hospital's CA
    port = free_port()
    collector = Collector(port, tls=server)
    node = new_node(tmp_path / "data", audit_syslog=SyslogSettings(
        host=LOCALHOST, port=port, protocol="tls", tls_ca_file=hospital_ca[0], tls_cert_file=mosaic_certificate,
        tls_key_file=mosaic_key, retry_seconds=0.2))
    try:
        write_records(node, 5)
        wait_until(lambda: len(collector.audit) >= node.audit.total(), timeout=30, what="TLS syslog delivery")
        assert [audit_xml(message).find("ActiveParticipant").get("UserID") for message in collector.audit[-5:]] \
            == [f"user{number}" for number in range(5)]
    finally:
        node.stop()
        collector.stop()


def test_a_collector_with_an_untrusted_certificate_gets_nothing_and_nothing_is_dropped(tmp_path: Path) -> None:
    impostor_ca = certificate_authority(tmp_path, "impostor-ca")
    hospital_ca = certificate_authority(tmp_path, "hospital-ca")
    certificate, key = issued_certificate(tmp_path, impostor_ca, "impostor")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(certificate), str(key))
    port = free_port()
    collector = Collector(port, tls=server)
    node = new_node(tmp_path / "data", audit_syslog=SyslogSettings(
        host=LOCALHOST, port=port, protocol="tls", tls_ca_file=hospital_ca[0], retry_seconds=0.2))
    try:
        write_records(node, 3)
        wait_until(lambda: len(collector.handshake_failures) >= 2, timeout=30, what="refused handshakes")
        assert collector.messages == []
        from mosaic.index.schema import AuditCursor

        with node.database.session() as session:
            cursor = session.get(AuditCursor, "syslog")
        assert cursor is None or cursor.seq == 0  # every record still waits for a trusted repository
    finally:
        node.stop()
        collector.stop()
