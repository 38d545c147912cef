"""pynetdicom's receive path, bounded as the streaming receiver is (see :mod:`mosaic.dimse.door`).

pynetdicom reads a whole PDU into memory once its header names the length, and gathers a command set or an
identifier from any number of PDUs; its sockets are polled with select(2), which fails for descriptors above
1024. Installed by :func:`mosaic.dimse.adjustments.apply` (the listener's start, an SCU's first call), for every
association Mosaic accepts or requests:

* a PDU longer than the standard or the negotiated Maximum Length allows is answered with A-ABORT and the
  connection closed, before its body is read;
* a command set over :data:`~mosaic.dimse.door.MAX_COMMAND_SET`, or a data set held in memory over
  :data:`~mosaic.dimse.door.MAX_IDENTIFIER`, likewise (C-STORE data sets go to a file and are not bounded);
* readiness is asked with poll(2);
* a C-STORE data set whose file cannot be written (a full disk) is still received to its end, and the
  handler answers 0xA700 (:func:`spool_failure`) instead of the association being aborted.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import struct
import tempfile
from typing import Any, cast

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from mosaic.dimse import upper_layer as ul
from mosaic.dimse.door import INVALID_PDU_PARAMETER, MAX_COMMAND_SET, MAX_IDENTIFIER, pdu_length_allowed, readable

log = logging.getLogger("mosaic.dimse.door")

_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))


def _local_maximum_length(dul: DULServiceProvider) -> int:
    """The Maximum Length this side advertised for P-DATA-TF PDUs (0: none)."""
    assoc = dul.assoc
    local = assoc.acceptor if assoc.is_acceptor else assoc.requestor
    return int(local.maximum_length or 0)


def _abort(dul: DULServiceProvider, reason: str) -> None:
    """A-ABORT (service provider, invalid PDU parameter value) and close: the state machine sees the transport
    connection closed (Evt17) and ends the association."""
    sock = cast(AssociationSocket, dul.socket)
    address = getattr(getattr(dul.assoc, "requestor", None), "address", "") or "?"
    log.warning("association with %s aborted: %s", address, reason)
    with contextlib.suppress(Exception):
        sock.send(ul.encode_abort(2, INVALID_PDU_PARAMETER))
    sock.close()


def read_pdu_data(self: DULServiceProvider) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data`` with the PDU length checked before the body is read."""
    sock = cast(AssociationSocket, self.socket)
    try:
        header = sock.recv(6)
    except (OSError, TimeoutError):
        self.event_queue.put("Evt17")  # transport connection closed
        return
    if len(header) != 6:
        self.event_queue.put("Evt17")
        return
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type not in _KNOWN_PDU_TYPES:
        log.error("unknown PDU type 0x%02X received", pdu_type)
        self.event_queue.put("Evt19")  # unrecognised PDU
        return
    maximum = _local_maximum_length(self)
    if not pdu_length_allowed(pdu_type, length, maximum):
        _abort(self, f"PDU type 0x{pdu_type:02X} declares {length} bytes, more than allowed "
                     f"(Maximum Length {maximum or 'none'}, A-ASSOCIATE at most 64 KiB)")
        return
    try:
        body = sock.recv(length)
    except (OSError, TimeoutError) as exc:
        log.error("connection closed before the whole PDU was received: %s", exc)
        self.event_queue.put("Evt17")
        return
    if len(body) != length:
        log.error("the PDU is shorter than its header says (%d of %d bytes)", len(body), length)
        self.event_queue.put("Evt17")
        return
    try:
        pdu, event = self._decode_pdu(header + body)
    except Exception as exc:
        log.error("unable to decode the received PDU: %s", exc)
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


_receive_primitive = DIMSEServiceProvider.receive_primitive


def receive_bounded_primitive(self: DIMSEServiceProvider, primitive: Any) -> None:
    """Gather a message's fragments only while its command set and in-memory data set stay within bounds."""
    message = self.message
    command = message.encoded_command_set.tell() if message is not None else 0
    in_memory = message is not None and not isinstance(message, C_STORE_RQ) \
        and getattr(message, "_data_set_file", None) is None
    data_set = message.data_set.tell() if in_memory and message is not None and message.data_set else 0
    for _context_id, value in primitive.presentation_data_value_list or ():
        if value and value[0] & 0x01:
            command += len(value) - 1
        elif message is None or in_memory:
            data_set += len(value) - 1
    if command > MAX_COMMAND_SET or data_set > MAX_IDENTIFIER:
        self.message = None
        what = f"a command set of {command} bytes" if command > MAX_COMMAND_SET else \
            f"a data set of {data_set} bytes held in memory"
        _abort(self.dul, f"{what} (at most {MAX_COMMAND_SET if command > MAX_COMMAND_SET else MAX_IDENTIFIER})")
        return
    _receive_primitive(self, primitive)


def ready(self: AssociationSocket) -> bool:
    """pynetdicom's ``AssociationSocket.ready`` with poll(2) instead of select(2)."""
    sock = self.socket
    if sock is None or self._is_connected is False:
        return False
    try:
        ready = readable(sock, 0)
    except (OSError, ValueError):
        self.event_queue.put("Evt17")
        return False
    if isinstance(sock, ssl.SSLSocket):
        return ready or bool(sock.pending())  # decrypted bytes poll cannot see
    return ready


class SpoolFile:
    """pynetdicom's temporary file of an incoming C-STORE data set, which remembers a failed write instead of
    raising it on the association's reactor thread (which would abort the association)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.failure: OSError | None = None
        self._stream: Any = None
        try:
            self._stream = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115
            self.name = self._stream.name
        except OSError as exc:
            self.failure, self.name = exc, ""

    @property
    def file(self) -> SpoolFile:
        return self  # pynetdicom calls ``.file.flush()``

    def write(self, data: bytes) -> int:
        if self.failure is None:
            try:
                self._stream.write(data)
            except OSError as exc:
                self.failure = exc
        return len(data)

    def flush(self) -> None:
        if self.failure is None:
            try:
                self._stream.flush()
            except OSError as exc:
                self.failure = exc

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except OSError as exc:
                self.failure = self.failure or exc


def spool_failure(request: Any) -> OSError | None:
    """Why the data set of a C-STORE request pynetdicom received could not be written, or None."""
    spool = getattr(request, "_dataset_file", None)
    return spool.failure if isinstance(spool, SpoolFile) else None

