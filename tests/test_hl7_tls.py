"""MLLP over TLS (hl7.tls_cert_file, mutual with hl7.tls_ca_file): a sender with a certificate of the configured
CA is answered over TLS; one without a certificate, or speaking plain MLLP, gets nothing and is audited."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, Hl7Sender, Hl7Settings, HttpSettings, Settings
from tests.helpers import wait_until
from tests.tls_support import certificate_authority, issued_certificate

LOCALHOST = "127.0.0.1"
MESSAGE = (b"\x0bMSH|^~\\&|EPIC|GENHOSP|MOSAIC|RAD|20261207||ADT^A04^ADT_A01|T1|P|2.5.1\r"
           b"PID|1||TLS1^^^GENHOSP||Secure^Sam||19700101|M\r\x1c\x0d")


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    ca = certificate_authority(tmp_path, "hospital-ca")
    server, server_key = issued_certificate(tmp_path, ca, "mosaic")
    client, client_key = issued_certificate(tmp_path, ca, "epic")
    return {"ca": ca[0], "server": server, "server_key": server_key, "client": client, "client_key": client_key}


@pytest.fixture
def node(tmp_path: Path, certificates: dict[str, Path]) -> Iterator[Mosaic]:
    settings = Settings(data_dir=tmp_path / "data", http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                        hl7=Hl7Settings(port=0, senders=[Hl7Sender(application="EPIC")],
                                        tls_cert_file=certificates["server"], tls_key_file=certificates["server_key"],
                                        tls_ca_file=certificates["ca"]))
    mosaic = Mosaic(settings)
    mosaic.start(http=False)
    yield mosaic
    mosaic.stop()


def _exchange(connection: socket.socket) -> bytes:
    connection.sendall(MESSAGE)
    received = b""
    while not received.endswith(b"\x1c\x0d"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_a_sender_with_a_certificate_is_answered_over_tls(node: Mosaic, certificates: dict[str, Path]) -> None:
    context = ssl.create_default_context(cafile=str(certificates["ca"]))
    context.check_hostname = False
    context.load_cert_chain(str(certificates["client"]), str(certificates["client_key"]))
    with socket.create_connection((LOCALHOST, node.hl7_port), timeout=10) as raw, \
            context.wrap_socket(raw) as connection:
        assert b"MSA|AA|T1" in _exchange(connection)


def test_no_certificate_or_plain_mllp_gets_nothing_and_is_audited(node: Mosaic,
                                                                   certificates: dict[str, Path]) -> None:
    context = ssl.create_default_context(cafile=str(certificates["ca"]))
    context.check_hostname = False  # no client certificate
    with socket.create_connection((LOCALHOST, node.hl7_port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw) as connection:
                answer = _exchange(connection)
        except (ssl.SSLError, OSError):
            answer = b""
    assert b"MSA" not in answer
    with socket.create_connection((LOCALHOST, node.hl7_port), timeout=10) as plain:
        try:
            answer = _exchange(plain)
        except OSError:
            answer = b""
    assert b"MSA" not in answer

    def audited() -> bool:
        node.audit.flush()
        records, _ = node.audit.search(action="login")
        return sum("TLS handshake failed" in record.detail for record in records) >= 2
    wait_until(audited, timeout=30, what="two refused TLS handshakes in the audit trail")
    with node.database.session() as session:
        from sqlalchemy import select

        from mosaic.index.schema import Patient
        assert session.scalars(select(Patient.PatientID)).all() == []


def test_tls_settings_without_the_certificate_are_refused_at_start_up() -> None:
    """A CA or key without the listener's certificate would leave MLLP in plain text: a configuration error."""
    from pydantic import ValidationError

    from mosaic.config import Hl7Settings

    with pytest.raises(ValidationError, match="without tls_cert_file"):
        Hl7Settings(tls_ca_file=Path("/etc/ssl/certs/ca-certificates.crt"))
