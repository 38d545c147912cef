"""DICOM over TLS (PS3.15 B.1, BCP 195; IHE ATNA secure node): the contexts Mosaic listens and calls with, a
listener that shakes hands in each connection's own thread, and the names a peer's certificate carries.

pynetdicom's own TLS server performs the handshake in its accept loop, where one caller that never sends a
ClientHello would hold up every other; here the accept loop only accepts, and each connection's thread shakes
hands (within dicom.network_timeout) before the association starts. A failed handshake (no certificate, one
from another CA, an expired one) is reported to ``on_refused`` (the listener audits it) and the connection
closed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from mosaic.config import DicomTlsSettings
from mosaic.dimse.door import AssociationRequestHandler, ConnectionLimit

log = logging.getLogger("mosaic.dimse.tls")


def _check(settings: DicomTlsSettings) -> None:
    if settings.cert_file is None or settings.key_file is None:
        raise ValueError("dicom.tls needs cert_file and key_file (Mosaic's certificate and its private key)")
    if settings.ca_file is None:
        raise ValueError("dicom.tls needs ca_file: the CA certificates peers' certificates must chain to")


def server_context(settings: DicomTlsSettings) -> ssl.SSLContext:
    """What the TLS listener shows and accepts: TLS 1.2 or later, client certificates from ``ca_file``."""
    _check(settings)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(settings.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    context.verify_mode = ssl.CERT_REQUIRED if settings.require_client_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(settings: DicomTlsSettings) -> ssl.SSLContext:
    """What Mosaic calls a TLS peer with: its own certificate, the peer's checked against ``ca_file``. Peers are
    configured by address, so the certificate is checked for its CA, not for a host name."""
    _check(settings)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    return context


def certificate_names(certificate: dict[str, Any] | None) -> frozenset[str]:
    """The subject common names and DNS subject alternative names of a (verified) peer certificate."""
    if not certificate:
        return frozenset()
    names = {value for entry in certificate.get("subject", ()) for key, value in entry if key == "commonName"}
    names |= {value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"}
    return frozenset(names)


def peer_names(sock: Any) -> frozenset[str] | None:
    """The certificate names of the peer on ``sock``; None when the connection is not TLS."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return certificate_names(sock.getpeercert())
    except (ValueError, OSError):
        return frozenset()


class TlsRequestHandler(AssociationRequestHandler):
    """Completes the TLS handshake in this connection's thread, then hands the association to pynetdicom."""

    def handle(self) -> None:
        sock = self.request
        assert isinstance(sock, ssl.SSLSocket)
        server: TlsAssociationServer = self.server  # type: ignore[assignment]
        try:
            sock.settimeout(server.handshake_timeout)
            sock.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            address = str(self.client_address[0]) if isinstance(self.client_address, tuple) else ""
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            log.warning("TLS connection from %s refused: %s", address, reason)
            server.on_refused(address, f"TLS handshake failed: {reason}")
            _close(sock)
            return
        self.serve(self.ae.network_timeout)


class TlsAssociationServer(ConnectionLimit, ThreadedAssociationServer):
    """pynetdicom's threaded server, with the handshake moved out of the accept loop (see the module), admitting
    at most ``max_connections`` connections at once."""

    handshake_timeout: float = 60.0
    on_refused: Callable[[str, str], None] = staticmethod(lambda _address, _reason: None)  # type: ignore[assignment]
    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client_socket, address = self.socket.accept()
        assert self.ssl_context is not None
        wrapped = self.ssl_context.wrap_socket(client_socket, server_side=True, do_handshake_on_connect=False)
        return wrapped, address


class SharedPort:
    """Mixed into a listener that shares its port with the other DICOM worker processes (SO_REUSEPORT: the kernel
    spreads connections over them)."""

    def server_bind(self) -> None:
        listening: socket.socket = self.socket  # type: ignore[attr-defined]
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()  # type: ignore[misc]


class SharedPortTlsServer(SharedPort, TlsAssociationServer):
    """The TLS listener shared with the other DICOM worker processes."""


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
