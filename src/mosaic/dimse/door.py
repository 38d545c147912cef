"""What a stranger can hold on the DICOM port before it is a peer: connections, bytes, time, association slots.

A TCP connection is only a candidate until its A-ASSOCIATE-RQ is complete and accepted. Until then it holds
no association slot; it must deliver the request within the ARTIM time (PS3.8 9.1.5: dicom.network_timeout)
and within :data:`MAX_ASSOCIATE_PDU` bytes, or it is aborted and closed. Each door (the plain and the TLS
listener) admits at most ``max_connections`` connections at once, and ``max_connections_per_address`` of them
from one IP address, refusing more in its accept loop without starting a thread, so a flood on one door cannot
starve the other and one stranger cannot fill a door. One :class:`AssociationSlots` per process counts the
associations of both receive paths (Mosaic's streaming receiver and pynetdicom) against dicom.max_associations.
Waiting on sockets uses poll(2), which has no 1024-descriptor ceiling as select(2) has.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any

from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler

from mosaic.dimse import upper_layer as ul

log = logging.getLogger("mosaic.dimse.door")

MAX_ASSOCIATE_PDU = 64 * 1024
"""Largest A-ASSOCIATE-RQ/AC variable field accepted: 128 presentation contexts with their transfer syntaxes
and the user information items fit many times over."""
MAX_FIXED_PDU = 1024
"""Largest A-ASSOCIATE-RJ, A-RELEASE-RQ/RP or A-ABORT accepted (the standard's are 4 bytes long)."""
MAX_COMMAND_SET = 64 * 1024
"""Largest DIMSE command set accepted (a C-STORE-RQ is about 200 bytes)."""
MAX_IDENTIFIER = 16 * 1024 * 1024
"""Largest data set held in memory (C-FIND/C-MOVE/C-GET identifiers, N-ACTION information): C-STORE data
sets are streamed to disk instead."""
PYNETDICOM_MAX_PDU = 1024 * 1024
"""What pynetdicom's associations advertise (and enforce) when dicom.max_pdu_size is 0: pynetdicom holds each
PDU in memory, the streaming receiver never does."""

UNEXPECTED_PDU = 2
"""A-ABORT reason (PS3.8 9.3.8): unexpected PDU."""
INVALID_PDU_PARAMETER = 6
"""A-ABORT reason (PS3.8 9.3.8): invalid PDU parameter value."""
LOCAL_LIMIT_EXCEEDED = (2, 3, 2)
"""A-ASSOCIATE-RJ: rejected-transient, service provider (presentation related), local limit exceeded."""


def pdu_length_allowed(pdu_type: int, length: int, maximum_length: int) -> bool:
    """Whether a PDU of this type may be this long, ``maximum_length`` being the Maximum Length Mosaic advertised
    for P-DATA-TF variable fields (0: none). Checked on the header, before anything is read or allocated."""
    if pdu_type == ul.P_DATA_TF:
        return maximum_length == 0 or length <= maximum_length
    if pdu_type in (ul.A_ASSOCIATE_RQ, ul.A_ASSOCIATE_AC):
        return length <= MAX_ASSOCIATE_PDU
    return length <= MAX_FIXED_PDU


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has data (or an end of stream) to read within ``timeout`` seconds (poll(2))."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(timeout, 0.0) * 1000))


class RequestRefused(Exception):
    """The connection did not deliver an acceptable A-ASSOCIATE-RQ; ``abort_reason``: the A-ABORT reason to send
    (None: just close, as when the ARTIM timer expires)."""

    def __init__(self, reason: str, *, abort_reason: int | None = None) -> None:
        super().__init__(reason)
        self.abort_reason = abort_reason


def peek_associate_rq(sock: socket.socket, timeout: float) -> bytes:
    """The whole A-ASSOCIATE-RQ waiting on ``sock``, read without consuming it, within ``timeout`` seconds (the
    ARTIM timer) and :data:`MAX_ASSOCIATE_PDU` bytes; raises :class:`RequestRefused` otherwise."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not readable(sock, remaining):
            raise RequestRefused(f"no complete A-ASSOCIATE-RQ within {timeout:g} s (ARTIM)")
        data = sock.recv(MAX_ASSOCIATE_PDU + 6, socket.MSG_PEEK)
        if not data:
            raise RequestRefused("closed before a complete A-ASSOCIATE-RQ")
        if data[0] != ul.A_ASSOCIATE_RQ:
            raise RequestRefused(f"PDU type 0x{data[0]:02X} before an A-ASSOCIATE-RQ", abort_reason=UNEXPECTED_PDU)
        if len(data) >= 6:
            (length,) = struct.unpack(">I", data[2:6])
            if not pdu_length_allowed(ul.A_ASSOCIATE_RQ, length, 0):
                raise RequestRefused(f"A-ASSOCIATE-RQ of {length} bytes (at most {MAX_ASSOCIATE_PDU})",
                                     abort_reason=INVALID_PDU_PARAMETER)
            if len(data) >= length + 6:
                return data[: length + 6]
        # the rest of the request is still in flight: data already waiting makes poll return at once
        time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 2, 0.05)


class AssociationSlots:
    """The associations of one process, on both receive paths and both doors, against dicom.max_associations.

    A holder is the streaming receiver's socket (released explicitly) or pynetdicom's association thread (its
    slot ends with the thread, however the association ends)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._holders: set[Any] = set()
        self._lock = threading.Lock()

    def reserve(self, holder: Any) -> bool:
        with self._lock:
            self._holders = {held for held in self._holders
                             if not isinstance(held, threading.Thread) or held.is_alive()}
            if len(self._holders) >= self.maximum:
                return False
            self._holders.add(holder)
            return True

    def release(self, holder: Any) -> None:
        with self._lock:
            self._holders.discard(holder)

    @property
    def busy(self) -> int:
        with self._lock:
            return sum(1 for held in self._holders if not isinstance(held, threading.Thread) or held.is_alive())


class ConnectionLimit:
    """Mixed into a listener (socketserver): at most ``max_connections`` connections open at once on this door.

    Each admitted connection is served by one daemon thread for its whole life (the handler waits for
    pynetdicom's association thread), so the open connections are the live threads. Beyond the limit the accept
    loop answers A-ASSOCIATE-RJ (transient, local limit exceeded) and closes, without starting a thread."""

    max_connections = 128
    max_connections_per_address = 32
    """Of those, at most this many from one IP address: one stranger (or one misbehaving device) holding
    half-open requests cannot fill the door for every other peer."""
    request_queue_size = 128
    """The listen backlog (socketserver's default, 5, makes a burst of callers wait for SYN retransmissions)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open_connections: set[tuple[threading.Thread, Any, str]] = set()
        self._connection_lock = threading.Lock()
        self._refused = 0
        self._refused_logged = -10.0
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connection_lock:
            self._open_connections = {(thread, sock, address) for thread, sock, address in self._open_connections
                                      if thread.is_alive()}
            address = client_address[0] if client_address else ""
            if len(self._open_connections) >= self.max_connections:
                self._refuse(request, client_address, "dicom.max_connections", self.max_connections)
                return
            if sum(1 for _thread, _sock, other in self._open_connections
                   if other == address) >= self.max_connections_per_address:
                self._refuse(request, client_address, "dicom.max_connections_per_address",
                             self.max_connections_per_address)
                return
            thread = threading.Thread(target=self.process_request_thread,  # type: ignore[attr-defined]
                                      args=(request, client_address), daemon=True, name="dicom-connection")
            self._open_connections.add((thread, request, address))
        thread.start()

    def _refuse(self, request: Any, client_address: Any, limit: str, count: int) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= 10:
            log.warning("connection from %s refused: %d connections open on port %s (%s); %d refused since the "
                        "last report", client_address[0] if client_address else "?", count,
                        self.server_address[1], limit, self._refused)  # type: ignore[attr-defined]
            self._refused, self._refused_logged = 0, now
        if not isinstance(request, ssl.SSLSocket):  # no TLS session yet to answer in
            with contextlib.suppress(OSError, ValueError):
                request.setblocking(False)
                request.send(ul.encode_associate_rj(*LOCAL_LIMIT_EXCEEDED))
        close_quietly(request)

    def close_connections(self) -> None:
        """Shut every open connection of this door (server stop): their threads end on the closed socket."""
        with self._connection_lock:
            sockets = [sock for _thread, sock, _address in self._open_connections]
        for sock in sockets:
            with contextlib.suppress(OSError, ValueError):
                sock.shutdown(socket.SHUT_RDWR)


class AssociationRequestHandler(RequestHandler):
    """pynetdicom's per-connection handler, whose thread lasts as long as the connection: :meth:`serve` returns
    when pynetdicom's association thread has ended (that is how :class:`ConnectionLimit` counts connections)."""

    _association: Association | None = None

    def _create_association(self) -> Association:
        self._association = super()._create_association()
        return self._association

    def serve(self, network_timeout: float | None) -> None:
        """Hand the connection to pynetdicom and wait for its association to end. With ``network_timeout`` on the
        socket, a PDU that stops half-way ends the association instead of blocking its reader for ever."""
        if network_timeout is not None:
            self.request.settimeout(network_timeout)
        RequestHandler.handle(self)
        if self._association is not None:
            self._association.join()


def raise_descriptor_limit() -> None:
    """Let the process open as many descriptors as its hard limit allows (the soft limit is often 1024)."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536),
                                                        hard))


def close_quietly(sock: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError, ValueError):
        sock.close()


def set_nodelay(event: Any) -> None:
    """pynetdicom's ``EVT_CONN_OPEN`` handler: no Nagle delay on the association's socket (small PDUs go at once)."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
