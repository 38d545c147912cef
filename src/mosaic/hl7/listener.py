"""The MLLP listener: one thread per connection, messages answered in order on the connection they came in.

A frame larger than ``hl7.max_message_bytes`` closes the connection (nothing of it is applied); a connection
silent for ``hl7.idle_timeout`` seconds is closed; a message cut off by the peer is not applied. With
``hl7.tls_cert_file`` every connection speaks TLS (mutual with ``hl7.tls_ca_file``); a failed handshake is audited.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from typing import Any

from mosaic.config import Hl7Settings
from mosaic.hl7.door import Hl7Door
from mosaic.hl7.mllp import FrameTooLarge, Framing, frame, read_frames

log = logging.getLogger("mosaic.hl7")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    door: Hl7Door
    settings: Hl7Settings
    tls: ssl.SSLContext | None = None
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection while fewer than ``hl7.max_connections`` are served, else it is closed."""
        if not self.slots.acquire(blocking=False):
            log.warning("HL7 connection from %s refused: %d connections are served already (hl7.max_connections)",
                        client_address[0], self.settings.max_connections)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def server_context(settings: Hl7Settings) -> ssl.SSLContext | None:
    """The TLS context of the listener (``hl7.tls_cert_file``), or None for plain MLLP."""
    if settings.tls_cert_file is None:
        return None
    if settings.tls_key_file is None:
        raise ValueError("hl7.tls_cert_file needs hl7.tls_key_file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                         cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    context.verify_mode = ssl.CERT_REQUIRED if settings.tls_ca_file else ssl.CERT_NONE
    return context


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        connection: socket.socket = self.request
        connection.settimeout(self.server.settings.idle_timeout)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        address = str(self.client_address[0])
        if self.server.tls is not None:
            try:  # in this connection's thread: a caller that never says hello holds up no one else
                connection = self.server.tls.wrap_socket(connection, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.warning("HL7 TLS handshake with %s failed: %s", address, exc)
                self.server.door.refused_handshake(address, str(exc))
                return
        framing = Framing()
        answered: dict[str, int] = {}
        try:
            for payload in read_frames(connection, max_bytes=self.server.settings.max_message_bytes,
                                       framing=framing):
                answer = self.server.door.handle(payload, address)
                answered[answer.code] = answered.get(answer.code, 0) + 1
                connection.sendall(frame(answer.payload))
        except FrameTooLarge as exc:
            log.warning("HL7 connection from %s closed: %s", address, exc)
        except OSError as exc:
            log.info("HL7 connection from %s ended: %s", address, exc)
        finally:
            if framing.unfinished:
                log.warning("HL7 connection from %s closed in the middle of a message: it was not applied", address)
            if framing.skipped_bytes:
                log.warning("HL7 connection from %s sent %d bytes outside MLLP frames (ignored)", address,
                            framing.skipped_bytes)
            log.info("HL7 connection from %s: %s", address,
                     ", ".join(f"{count} {code}" for code, count in sorted(answered.items())) or "no messages")


class Hl7Server:
    """Serves ``hl7.host``:``hl7.port`` until :meth:`stop`."""

    def __init__(self, settings: Hl7Settings, door: Hl7Door) -> None:
        self.settings = settings
        self._server = _Server((settings.host, settings.port), _Connection, bind_and_activate=True)
        self._server.door = door
        self._server.settings = settings
        self._server.tls = server_context(settings)
        self._server.slots = threading.BoundedSemaphore(settings.max_connections)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="hl7-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
