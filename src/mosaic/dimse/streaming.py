"""The streaming receiver: Mosaic's own Upper Layer path for storage, C-ECHO and C-FIND associations.

Modalities and PACS sending images propose only storage SOP classes (and Verification); query clients
propose the C-FIND models. For those associations Mosaic answers the Upper Layer protocol itself: each
C-STORE data set is streamed from the socket straight into its new blob file (``storage.spool``) and
handed to the ingest service, and C-FIND responses are encoded from the index, without pynetdicom's
per-PDU event machinery and 1 ms polling loops (docs/benchmarks.md). Every other association (C-MOVE,
C-GET, commitment, SCP role selection, user identity) goes to pynetdicom unchanged: the request is only
peeked at, never consumed. Both paths call the same service-class handlers (:mod:`mosaic.dimse.verification`,
:mod:`~mosaic.dimse.storage`, :mod:`~mosaic.dimse.query`) and access check (:mod:`mosaic.dimse.access`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode

from mosaic.dimse import door, verification
from mosaic.dimse import upper_layer as ul
from mosaic.dimse.contexts import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from mosaic.dimse.door import AssociationRequestHandler, AssociationSlots
from mosaic.dimse.status import QueryStatus, StorageStatus
from mosaic.services.ingest import out_of_resources
from mosaic.storage.spool import Spool

log = logging.getLogger("mosaic.dimse.store")

_STORAGE = frozenset(STORAGE_SOP_CLASSES)
_TRANSFER_SYNTAXES = frozenset(TRANSFER_SYNTAXES)
_VERIFICATION_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
_FIND_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1",
                           "1.2.840.10008.5.1.4.31"})  # Patient Root, Study Root, Modality Worklist
_SIMPLE_SYNTAX_CLASSES = _FIND_CLASSES | {ul.VERIFICATION}
"""Services whose messages this path decodes itself: Implicit or Explicit VR Little Endian only."""
_BUFFER = 256 * 1024


@dataclass(frozen=True)
class StreamingContext:
    """What the receiver needs from the listener: identity, limits and the service-class handlers."""

    ae_title: str
    maximum_length: int
    network_timeout: float
    implementation_class_uid: str
    implementation_version_name: str
    spool: Spool
    """Where received data sets are written (for the filesystem blob store: straight into a new blob)."""
    calling_allowed: Callable[[str, str], bool]
    """Whether an AE title, calling from an address, may associate at all (the access policy)."""
    find: Callable[[Dataset, str, str, bool, str], Iterator[tuple[int, bytes | None, str | None]]]
    """(identifier, calling AE, SOP class, implicit VR?, peer address) → (status, encoded response, error
    comment) per response."""
    store: Callable[[Path, str, str, str, str | None, str], tuple[int, str | None]]
    """(spool file, calling AE, affected SOP class, affected SOP instance, SHA-256 of the file, peer address)
    → (status, error comment)."""
    slots: AssociationSlots
    """The process's association slots, shared with pynetdicom's associations (dicom.max_associations)."""


def served_here(request: ul.AssociateRequest) -> bool:
    """An association this path serves: every context is a storage class, Verification or a C-FIND
    information model (Patient Root, Study Root), with no SCP role selection or user identity."""
    if not request.contexts or request.other_user_items:
        return False
    if any(scp_role for _scu_role, scp_role in request.role_selection.values()):
        return False
    return all(context.abstract_syntax in _STORAGE or context.abstract_syntax in _SIMPLE_SYNTAX_CLASSES
               for context in request.contexts)


class StreamingRequestHandler(AssociationRequestHandler):
    """The plain door's per-connection handler: waits for the whole A-ASSOCIATE-RQ (bounded in time and size,
    :func:`door.peek_associate_rq`), then serves the associations it can with :class:`StreamingAssociation` and
    hands every other to pynetdicom."""

    def handle(self) -> None:
        context: StreamingContext | None = getattr(self.server, "store_context", None)
        sock = self.request
        timeout = self.ae.network_timeout
        if not isinstance(sock, socket.socket):
            self.serve(timeout)
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pdu = door.peek_associate_rq(sock, timeout if timeout is not None else 60.0)
        except door.RequestRefused as exc:
            log.warning("connection from %s closed: %s", self.client_address[0], exc)
            if exc.abort_reason is not None:
                with contextlib.suppress(OSError):
                    sock.sendall(ul.encode_abort(2, exc.abort_reason))
            door.close_quietly(sock)
            return
        except OSError:
            door.close_quietly(sock)
            return
        try:
            request = ul.parse_associate_rq(pdu)
        except ul.ProtocolError:
            request = None  # pynetdicom answers a malformed request
        if context is None or request is None or not served_here(request):
            self.serve(timeout)
            return
        sock.recv(len(pdu), socket.MSG_WAITALL)  # consume the request we peeked at
        StreamingAssociation(context, sock, self.client_address, request).run()


class StreamingAssociation:
    """One association served here (storage, C-ECHO, C-FIND), from A-ASSOCIATE-AC to release or abort."""

    def __init__(self, context: StreamingContext, sock: socket.socket, address: Any,
                 request: ul.AssociateRequest) -> None:
        self.context = context
        self.sock = sock
        self.address = address
        self.request = request
        self.calling = request.calling_ae_title
        self._peer_address = str(address[0]) if isinstance(address, tuple | list) and address else ""
        self.accepted: dict[int, tuple[str, str]] = {}
        """context id → (abstract syntax, transfer syntax)"""
        self.buffer = bytearray(_BUFFER)
        self.view = memoryview(self.buffer)
        self.command = bytearray()
        self.store: _IncomingStore | None = None
        self.query: tuple[int, int, str] | None = None
        """(context id, message id, SOP class) of the C-FIND whose identifier is arriving"""
        self.identifier = bytearray()

    def run(self) -> None:
        self.sock.settimeout(self.context.network_timeout)
        try:
            if not self._accept():
                return
            self._serve()
        except _Oversized as exc:
            log.warning("association from %r at %s aborted: %s", self.calling, self.address, exc)
            self._send_quietly(ul.encode_abort(2, door.INVALID_PDU_PARAMETER))
        except (OSError, ul.ProtocolError, TimeoutError) as exc:
            log.warning("association from %r at %s ended abnormally: %s", self.calling, self.address, exc)
            self._send_quietly(ul.encode_abort(2, 0))
        finally:
            if self.store is not None:
                self.store.discard()
            self._close()

    # --- association establishment ---------------------------------------------------------------------

    def _accept(self) -> bool:
        request = self.request
        if request.application_context != ul.APPLICATION_CONTEXT:
            self.sock.sendall(ul.encode_associate_rj(1, 1, 2))
            return False
        if not request.protocol_version & 1:
            self.sock.sendall(ul.encode_associate_rj(1, 2, 2))
            return False
        if not self.context.calling_allowed(self.calling, self._peer_address):
            log.warning("association from AE %r at %s rejected: not a known peer at that address (dicom.peers)",
                        self.calling, self.address)
            self.sock.sendall(ul.encode_associate_rj(1, 1, 3))
            return False
        if not self.context.slots.reserve(self.sock):
            log.warning("association from %r rejected: dicom.max_associations reached", self.calling)
            self.sock.sendall(ul.encode_associate_rj(2, 3, 2))
            return False
        self._reserved = True
        results = []
        for proposed in request.contexts:
            if proposed.abstract_syntax in _SIMPLE_SYNTAX_CLASSES:
                supported: tuple[str, ...] | frozenset[str] = _VERIFICATION_SYNTAXES
            else:
                supported = _TRANSFER_SYNTAXES
            chosen = next((syntax for syntax in proposed.transfer_syntaxes if syntax in supported), None)
            if chosen is None:
                first = proposed.transfer_syntaxes[0] if proposed.transfer_syntaxes else ""
                results.append((proposed.context_id, ul.TRANSFER_SYNTAXES_NOT_SUPPORTED, first))
                continue
            self.accepted[proposed.context_id] = (proposed.abstract_syntax, chosen)
            results.append((proposed.context_id, ul.ACCEPTANCE, chosen))
        self.sock.sendall(ul.encode_associate_ac(
            request, results, self.context.maximum_length, self.context.implementation_class_uid,
            self.context.implementation_version_name))
        log.debug("association from %r at %s: %d of %d contexts accepted", self.calling, self.address,
                  len(self.accepted), len(results))
        return True

    # --- data transfer -------------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            header = self._read_exact(6)
            if header is None:
                raise ul.ProtocolError("the peer closed the connection without releasing")
            pdu_type = header[0]
            (length,) = struct.unpack(">I", header[2:6])
            self._check_length(pdu_type, length)
            if pdu_type == ul.P_DATA_TF:
                self._p_data(length)
            elif pdu_type == ul.A_RELEASE_RQ:
                self._read_exact(length)
                self.sock.sendall(ul.encode_release_rp())
                return
            elif pdu_type == ul.A_ABORT:
                self._read_exact(length)
                log.info("association from %r aborted by the peer", self.calling)
                return
            else:
                raise ul.ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} during data transfer")

    def _check_length(self, pdu_type: int, length: int) -> None:
        """Refuse a PDU longer than the standard or the Maximum Length Mosaic advertised, before reading it."""
        if not door.pdu_length_allowed(pdu_type, length, self.context.maximum_length):
            raise _Oversized(f"PDU type 0x{pdu_type:02X} of {length} bytes, more than allowed (Maximum Length "
                             f"{self.context.maximum_length or 'none'})")

    def _p_data(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            header = self._read_exact(6)
            if header is None:
                raise ul.ProtocolError("connection closed inside a P-DATA-TF")
            item_length, context_id, control = struct.unpack(">IBB", header)
            if item_length < 2 or item_length + 4 > remaining:
                raise ul.ProtocolError("PDV item length does not fit its P-DATA-TF")
            if context_id not in self.accepted:
                raise ul.ProtocolError(f"PDV on presentation context {context_id}, which was not accepted")
            value_length = item_length - 2
            last = bool(control & 0x02)
            if control & 0x01:
                if len(self.command) + value_length > door.MAX_COMMAND_SET:
                    raise _Oversized(f"a command set of more than {door.MAX_COMMAND_SET} bytes")
                data = self._read_exact(value_length)
                if data is None:
                    raise ul.ProtocolError("connection closed inside a command")
                self.command += data
                if last:
                    self._on_command(context_id)
            elif self.query is not None and self.query[0] == context_id:
                if len(self.identifier) + value_length > door.MAX_IDENTIFIER:
                    raise _Oversized(f"a C-FIND identifier of more than {door.MAX_IDENTIFIER} bytes")
                data = self._read_exact(value_length)
                if data is None:
                    raise ul.ProtocolError("connection closed inside an identifier")
                self.identifier += data
                if last:
                    self._on_identifier_complete()
            else:
                if self.store is None or self.store.context_id != context_id:
                    raise ul.ProtocolError("data set fragment without a C-STORE request")
                self._stream(value_length, self.store)
                if last:
                    self._on_data_set_complete()
            remaining -= item_length + 4

    def _on_command(self, context_id: int) -> None:
        elements = ul.decode_command(bytes(self.command))
        self.command.clear()
        command_field = ul.command_us(elements, ul.COMMAND_FIELD)
        message_id = ul.command_us(elements, ul.MESSAGE_ID) or 0
        sop_class = ul.command_text(elements, ul.AFFECTED_SOP_CLASS_UID)
        if command_field == ul.C_ECHO_RQ:
            self.sock.sendall(ul.encode_command_pdata(
                context_id, ul.encode_response(ul.C_ECHO_RSP, message_id, sop_class or ul.VERIFICATION,
                                               verification.c_echo())))
            return
        if command_field == ul.C_FIND_RQ and self.accepted[context_id][0] in _FIND_CLASSES:
            self.query = (context_id, message_id, sop_class)
            self.identifier.clear()
            return
        if command_field == ul.C_CANCEL_RQ:
            return  # nothing in progress to cancel (a C-FIND answers before reading the next message)
        if command_field != ul.C_STORE_RQ or self.accepted[context_id][0] not in _STORAGE:
            raise ul.ProtocolError(f"command 0x{command_field or 0:04X} is not served on this association")
        if ul.command_us(elements, ul.COMMAND_DATA_SET_TYPE) == ul.NO_DATA_SET:
            raise ul.ProtocolError("C-STORE request without a data set")
        sop_instance = ul.command_text(elements, ul.AFFECTED_SOP_INSTANCE_UID)
        transfer_syntax = self.accepted[context_id][1]
        self.store = _IncomingStore(context_id, message_id, sop_class, sop_instance, transfer_syntax,
                                    self.context, self.calling)

    def _on_data_set_complete(self) -> None:
        store = self.store
        assert store is not None
        self.store = None
        path = store.finish()
        comment: str | None
        if store.failure is not None:
            # nothing half-written stays: the spool file goes, the association goes on
            store.discard()
            log.error("C-STORE of %s from %r refused with 0xA700: cannot write the received data set: %s",
                      store.sop_instance_uid, self.calling, store.failure)
            status = StorageStatus.REFUSED_OUT_OF_RESOURCES
            comment = out_of_resources(store.failure) or str(store.failure)
        else:
            try:
                status, comment = self.context.store(path, self.calling, store.sop_class_uid,
                                                     store.sop_instance_uid, store.sha256.hexdigest(),
                                                     self._peer_address)
            finally:
                self.context.spool.discard(path)  # a no-op for a file ingest adopted as its blob
        self.sock.sendall(ul.encode_command_pdata(store.context_id, ul.encode_response(
            ul.C_STORE_RSP, store.message_id, store.sop_class_uid, status, store.sop_instance_uid, comment)))

    def _on_identifier_complete(self) -> None:
        assert self.query is not None
        context_id, message_id, sop_class = self.query
        self.query = None
        implicit = self.accepted[context_id][1] == "1.2.840.10008.1.2"
        try:
            identifier = decode(BytesIO(bytes(self.identifier)), implicit, True)
        except Exception as exc:
            self._send_find_status(context_id, message_id, sop_class, QueryStatus.UNABLE_TO_PROCESS_IDENTIFIER,
                                  f"identifier not decodable: {exc}")
            return
        for status, data, comment in self.context.find(identifier, self.calling, sop_class, implicit,
                                                       self._peer_address):
            if status != QueryStatus.PENDING:
                self._send_find_status(context_id, message_id, sop_class, status, comment)
                return
            if self._cancel_requested():
                self._send_find_status(context_id, message_id, sop_class, QueryStatus.CANCEL, None)
                return
            assert data is not None
            self.sock.sendall(ul.encode_command_pdata(context_id, ul.encode_response(
                ul.C_FIND_RSP, message_id, sop_class, QueryStatus.PENDING, with_data_set=True))
                + ul.encode_data_set_pdata(context_id, data, self.request.maximum_length))

    def _send_find_status(self, context_id: int, message_id: int, sop_class: str, status: int,
                          comment: str | None) -> None:
        self.sock.sendall(ul.encode_command_pdata(context_id, ul.encode_response(
            ul.C_FIND_RSP, message_id, sop_class, status, error_comment=comment)))

    def _cancel_requested(self) -> bool:
        """Whether the peer sent C-CANCEL-RQ while responses were going out (PS3.7 9.3.2.3)."""
        if not door.readable(self.sock, 0):
            return False
        header = self._read_exact(6)
        if header is None:
            raise ul.ProtocolError("the peer closed the connection during a C-FIND")
        (length,) = struct.unpack(">I", header[2:6])
        self._check_length(header[0], length)
        if length > door.MAX_COMMAND_SET + 12:
            raise _Oversized(f"a PDU of {length} bytes while C-FIND responses were being sent (C-CANCEL expected)")
        body = self._read_exact(length)
        if header[0] != ul.P_DATA_TF or body is None or len(body) < 6 or not body[5] & 0x01:
            raise ul.ProtocolError("unexpected PDU while C-FIND responses were being sent")
        elements = ul.decode_command(body[6:])
        return ul.command_us(elements, ul.COMMAND_FIELD) == ul.C_CANCEL_RQ

    # --- socket helpers --------------------------------------------------------------------------------------

    def _read_exact(self, count: int) -> bytes | None:
        if count == 0:
            return b""
        view = self.view if count <= len(self.buffer) else memoryview(bytearray(count))
        received = 0
        while received < count:
            got = self.sock.recv_into(view[received:count])
            if got == 0:
                return None
            received += got
        return bytes(view[:count])

    def _stream(self, count: int, out: _IncomingStore) -> None:
        while count > 0:
            got = self.sock.recv_into(self.view[: min(count, len(self.buffer))])
            if got == 0:
                raise ul.ProtocolError("connection closed inside a data set")
            out.write(self.view[:got])
            count -= got

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _close(self) -> None:
        if getattr(self, "_reserved", False):
            self.context.slots.release(self.sock)
            self._reserved = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _short(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    data = text.encode("ascii")
    return data + pad if len(data) % 2 else data


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                     implementation_class_uid: str, implementation_version_name: str, source_ae_title: str) -> bytes:
    """Preamble, prefix and File Meta Information (PS3.10 7.1), as pydicom writes them, without pydicom."""
    body = struct.pack("<HH", 0x0002, 0x0001) + b"OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01"
    body += _short(0x00020002, b"UI", _padded(sop_class_uid, b"\x00"))
    body += _short(0x00020003, b"UI", _padded(sop_instance_uid, b"\x00"))
    body += _short(0x00020010, b"UI", _padded(transfer_syntax_uid, b"\x00"))
    body += _short(0x00020012, b"UI", _padded(implementation_class_uid, b"\x00"))
    if implementation_version_name:
        body += _short(0x00020013, b"SH", _padded(implementation_version_name[:16], b" "))
    if source_ae_title:
        body += _short(0x00020016, b"AE", _padded(source_ae_title[:16], b" "))
    group_length = _short(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


class _IncomingStore:
    """One data set being received: a Part 10 spool file (File Meta Information, then the bytes as sent).

    A write that fails (a full disk) is remembered in ``failure``; the rest of the data set is still read from
    the socket, without writing, so the request can be answered (0xA700) and the association go on."""

    def __init__(self, context_id: int, message_id: int, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax_uid: str, context: StreamingContext, calling: str) -> None:
        self.context_id = context_id
        self.message_id = message_id
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.spool = context.spool
        self.failure: OSError | None = None
        self.path: Path | None = None
        self.stream: Any = None
        self.sha256 = hashlib.sha256()
        try:
            self.path = context.spool.new()
            self.stream = open(self.path, "wb")  # noqa: SIM115
        except OSError as exc:
            self.failure = exc
        self.write(encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid,
                                    context.implementation_class_uid, context.implementation_version_name, calling))

    def write(self, data: bytes | memoryview) -> None:
        """Append received bytes, hashing them on the way (the file is never re-read to hash it)."""
        if self.failure is not None:
            return
        self.sha256.update(data)
        try:
            self.stream.write(data)
        except OSError as exc:
            self.failure = exc

    def finish(self) -> Path:
        self._close_stream()
        assert self.path is not None or self.failure is not None
        return self.path or Path()

    def _close_stream(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            try:
                stream.close()
            except OSError as exc:
                self.failure = self.failure or exc

    def discard(self) -> None:
        try:
            self._close_stream()
        finally:
            if self.path is not None:
                with contextlib.suppress(OSError):
                    self.spool.discard(self.path)
                self.path = None


class _Oversized(Exception):
    """The peer declared more bytes than the standard or the negotiation allows (answered with A-ABORT)."""
