"""DICOM Upper Layer PDUs (PS3.8 9.3) and DIMSE command sets (PS3.7 E) for the streaming C-STORE path.

Only what a storage-only association needs: parse an A-ASSOCIATE-RQ, encode the AC / RJ / RELEASE-RP
/ ABORT answers, read PDV item headers, and encode or decode the (Implicit VR Little Endian) command
sets of C-STORE and C-ECHO. Everything else stays with pynetdicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_CANCEL_RQ = 0x0FFF
DATA_SET_PRESENT = 0x0000
NO_DATA_SET = 0x0101

# presentation context results (PS3.8 9.3.3.2)
ACCEPTANCE = 0
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class ProtocolError(Exception):
    """The peer sent something the Upper Layer protocol does not allow here."""


@dataclass
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass
class AssociateRequest:
    """The parts of an A-ASSOCIATE-RQ the acceptor decides on."""

    protocol_version: int
    called_ae_title_raw: bytes
    calling_ae_title_raw: bytes
    application_context: str
    contexts: list[ProposedContext] = field(default_factory=list)
    maximum_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    role_selection: dict[str, tuple[int, int]] = field(default_factory=dict)
    other_user_items: list[int] = field(default_factory=list)
    """Sub-item types this path does not handle (user identity, extended negotiation, …)."""

    @property
    def calling_ae_title(self) -> str:
        return self.calling_ae_title_raw.decode("ascii", "replace").strip(" \x00")

    @property
    def called_ae_title(self) -> str:
        return self.called_ae_title_raw.decode("ascii", "replace").strip(" \x00")


def _uid(data: bytes) -> str:
    return data.decode("ascii", "replace").rstrip("\x00 ")


def parse_associate_rq(pdu: bytes) -> AssociateRequest:
    """Decode a whole A-ASSOCIATE-RQ PDU (header included); raises ProtocolError when malformed."""
    if len(pdu) < 74 or pdu[0] != A_ASSOCIATE_RQ:
        raise ProtocolError("not an A-ASSOCIATE-RQ")
    (length,) = struct.unpack(">I", pdu[2:6])
    if len(pdu) != 6 + length:
        raise ProtocolError("A-ASSOCIATE-RQ length does not match its header")
    (version,) = struct.unpack(">H", pdu[6:8])
    request = AssociateRequest(version, pdu[10:26], pdu[26:42], "")
    offset = 74
    while offset < len(pdu):
        if offset + 4 > len(pdu):
            raise ProtocolError("truncated item in A-ASSOCIATE-RQ")
        item_type = pdu[offset]
        (item_length,) = struct.unpack(">H", pdu[offset + 2 : offset + 4])
        body = pdu[offset + 4 : offset + 4 + item_length]
        if len(body) != item_length:
            raise ProtocolError("truncated item in A-ASSOCIATE-RQ")
        if item_type == 0x10:
            request.application_context = _uid(body)
        elif item_type == 0x20:
            request.contexts.append(_parse_context(body))
        elif item_type == 0x50:
            _parse_user_information(body, request)
        offset += 4 + item_length
    return request


def _sub_items(body: bytes) -> list[tuple[int, bytes]]:
    items: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(body):
        if offset + 4 > len(body):
            raise ProtocolError("truncated sub-item")
        (length,) = struct.unpack(">H", body[offset + 2 : offset + 4])
        value = body[offset + 4 : offset + 4 + length]
        if len(value) != length:
            raise ProtocolError("truncated sub-item")
        items.append((body[offset], value))
        offset += 4 + length
    return items


def _parse_context(body: bytes) -> ProposedContext:
    if len(body) < 4:
        raise ProtocolError("truncated presentation context item")
    context = ProposedContext(body[0], "", [])
    for item_type, value in _sub_items(body[4:]):
        if item_type == 0x30:
            context.abstract_syntax = _uid(value)
        elif item_type == 0x40:
            context.transfer_syntaxes.append(_uid(value))
    return context


def _parse_user_information(body: bytes, request: AssociateRequest) -> None:
    for item_type, value in _sub_items(body):
        if item_type == 0x51 and len(value) == 4:
            (request.maximum_length,) = struct.unpack(">I", value)
        elif item_type == 0x52:
            request.implementation_class_uid = _uid(value)
        elif item_type == 0x55:
            request.implementation_version_name = value.decode("ascii", "replace").strip()
        elif item_type == 0x54 and len(value) >= 4:
            (uid_length,) = struct.unpack(">H", value[:2])
            uid = _uid(value[2 : 2 + uid_length])
            request.role_selection[uid] = (value[2 + uid_length], value[3 + uid_length])
        elif item_type == 0x53:
            continue  # asynchronous operations window: not answering means the default, 1 and 1
        else:
            request.other_user_items.append(item_type)


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _even(text: str) -> bytes:
    data = text.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def encode_associate_ac(request: AssociateRequest, results: list[tuple[int, int, str]], maximum_length: int,
                        implementation_class_uid: str, implementation_version_name: str) -> bytes:
    """A-ASSOCIATE-AC: ``results`` holds (context id, result, transfer syntax) per proposed context."""
    body = bytearray(struct.pack(">HH", 1, 0))
    body += request.called_ae_title_raw + request.calling_ae_title_raw + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode("ascii"))
    for context_id, result, transfer_syntax in results:
        sub_item = _item(0x40, transfer_syntax.encode("ascii"))
        body += _item(0x21, struct.pack(">BBBB", context_id, 0, result, 0) + sub_item)
    user = _item(0x51, struct.pack(">I", maximum_length))
    user += _item(0x52, implementation_class_uid.encode("ascii"))
    user += _item(0x55, implementation_version_name.encode("ascii")[:16])
    body += _item(0x50, user)
    return _pdu(A_ASSOCIATE_AC, bytes(body))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(A_ASSOCIATE_RJ, struct.pack(">BBBB", 0, result, source, reason))


def encode_release_rp() -> bytes:
    return _pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT; source 2 is the service provider, reason 0 "not specified", 2 "unexpected PDU"."""
    return _pdu(A_ABORT, struct.pack(">BBBB", 0, 0, source, reason))


def encode_command_pdata(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF carrying a whole command set as its last fragment."""
    pdv = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    return _pdu(P_DATA_TF, pdv)


def encode_data_set_pdata(context_id: int, data: bytes, maximum_length: int) -> bytes:
    """P-DATA-TF PDUs carrying a data set, each within the peer's maximum PDU length (0: no limit)."""
    room = maximum_length - 6 if maximum_length > 6 else len(data) or 1
    pdus = []
    for start in range(0, max(len(data), 1), room):
        fragment = data[start : start + room]
        control = 0x02 if start + room >= len(data) else 0x00
        pdus.append(_pdu(P_DATA_TF, struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment))
    return b"".join(pdus)


# --- DIMSE command sets (always Implicit VR Little Endian) --------------------------------------------------


def decode_command(data: bytes) -> dict[int, bytes]:
    """Elements of a command set by tag ``(group << 16) | element`` with their raw values."""
    elements: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, element, length = struct.unpack("<HHI", data[offset : offset + 8])
        value = data[offset + 8 : offset + 8 + length]
        if len(value) != length:
            raise ProtocolError("truncated command set")
        elements[(group << 16) | element] = value
        offset += 8 + length
    if offset != len(data):
        raise ProtocolError("trailing bytes after the command set")
    return elements


def command_us(elements: dict[int, bytes], tag: int) -> int | None:
    value = elements.get(tag)
    return struct.unpack("<H", value[:2])[0] if value is not None and len(value) >= 2 else None


def command_text(elements: dict[int, bytes], tag: int) -> str:
    value = elements.get(tag, b"")
    return value.decode("ascii", "replace").rstrip("\x00 ")


AFFECTED_SOP_CLASS_UID = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
COMMAND_DATA_SET_TYPE = 0x00000800
AFFECTED_SOP_INSTANCE_UID = 0x00001000
MOVE_ORIGINATOR_AE_TITLE = 0x00001030


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def encode_response(command_field: int, message_id: int, sop_class_uid: str, status: int,
                    sop_instance_uid: str | None = None, error_comment: str | None = None, *,
                    with_data_set: bool = False) -> bytes:
    """A C-STORE-RSP / C-ECHO-RSP / C-FIND-RSP command set (PS3.7 9.3.1.2, 9.3.5.2, 9.3.2.2)."""
    rest = _element(AFFECTED_SOP_CLASS_UID, _even(sop_class_uid))
    rest += _element(COMMAND_FIELD, struct.pack("<H", command_field))
    rest += _element(0x00000120, struct.pack("<H", message_id))
    rest += _element(COMMAND_DATA_SET_TYPE, struct.pack("<H", DATA_SET_PRESENT if with_data_set else NO_DATA_SET))
    rest += _element(0x00000900, struct.pack("<H", status))
    if error_comment:
        comment = error_comment.encode("ascii", "replace")[:64]
        rest += _element(0x00000902, comment + b" " if len(comment) % 2 else comment)
    if sop_instance_uid is not None:
        rest += _element(AFFECTED_SOP_INSTANCE_UID, _even(sop_instance_uid))
    return _element(0x00000000, struct.pack("<I", len(rest))) + rest
