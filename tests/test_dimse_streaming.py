"""The streaming C-STORE receiver against a raw-socket peer that misbehaves on purpose.

Storage-only associations are served by Mosaic's own Upper Layer code (mosaic.dimse.streaming);
these tests speak the protocol byte by byte to check what it does with broken peers: nothing
half-stored, no spool file left behind, the listener still serving afterwards.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from mosaic.app import Mosaic
from mosaic.config import DicomPeer, DicomSettings, HttpSettings, Settings
from mosaic.dimse import upper_layer as ul
from mosaic.index.query import Scope
from tests.factory import make_instance, to_bytes


def associate_rq(calling: str = "RAWPEER", contexts: list[tuple[int, str, list[str]]] | None = None) -> bytes:
    contexts = contexts or [(1, CTImageStorage, [ExplicitVRLittleEndian])]
    body = struct.pack(">HH", 1, 0) + b"MOSAIC".ljust(16) + calling.encode().ljust(16) + bytes(32)
    body += struct.pack(">BBH", 0x10, 0, len(ul.APPLICATION_CONTEXT)) + ul.APPLICATION_CONTEXT.encode()
    for context_id, abstract, syntaxes in contexts:
        items = struct.pack(">BBH", 0x30, 0, len(abstract)) + abstract.encode()
        for syntax in syntaxes:
            items += struct.pack(">BBH", 0x40, 0, len(syntax)) + syntax.encode()
        body += struct.pack(">BBHBBBB", 0x20, 0, len(items) + 4, context_id, 0, 0, 0) + items
    user = struct.pack(">BBHI", 0x51, 0, 4, 16384)
    body += struct.pack(">BBH", 0x50, 0, len(user)) + user
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = sock.recv(6, socket.MSG_WAITALL)
    if len(header) < 6:
        return 0, b""
    (length,) = struct.unpack(">I", header[2:6])
    return header[0], sock.recv(length, socket.MSG_WAITALL)


def pdv(context_id: int, control: int, value: bytes) -> bytes:
    item = struct.pack(">IBB", len(value) + 2, context_id, control) + value
    return struct.pack(">BBI", 0x04, 0, len(item)) + item


def store_command(sop_instance_uid: str, message_id: int = 1) -> bytes:
    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value

    def uid(text: str) -> bytes:
        return text.encode() + (b"\x00" if len(text) % 2 else b"")

    rest = (element(0x00000002, uid(CTImageStorage)) + element(0x00000100, struct.pack("<H", 1))
            + element(0x00000110, struct.pack("<H", message_id)) + element(0x00000700, struct.pack("<H", 0))
            + element(0x00000800, struct.pack("<H", 0)) + element(0x00001000, uid(sop_instance_uid)))
    return element(0x00000000, struct.pack("<I", len(rest))) + rest


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0, max_associations=2, allow_unknown_calling_aes=False,
                                                 peers=[DicomPeer(ae_title="RAWPEER", host="127.0.0.1", port=1),
                                                        DicomPeer(ae_title="SCU", host="127.0.0.1", port=1)])))
    mosaic.start()
    yield mosaic
    mosaic.stop()


def connect(node: Mosaic) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.dicom_port), timeout=10)
    return sock


def stored_count(node: Mosaic) -> int:
    return sum(1 for _ in node.blobs.iter_keys())


def spool_files(node: Mosaic) -> list[Path]:
    return list((node.settings.blob_path / ".incoming").iterdir())


def dataset_bytes(sop_uid: str) -> bytes:
    data = to_bytes(make_instance(sop_uid=sop_uid))
    from mosaic.core.dicom import parse_instance

    return data[parse_instance(data).dataset_offset:]


def test_a_raw_peer_can_store_byte_exact_over_the_streaming_path(node: Mosaic) -> None:
    uid = "1.2.826.0.1.3680043.10.1234.61"
    with connect(node) as sock:
        sock.sendall(associate_rq())
        pdu_type, _ = read_pdu(sock)
        assert pdu_type == ul.A_ASSOCIATE_AC
        sock.sendall(pdv(1, 0x03, store_command(uid)))
        data = dataset_bytes(uid)
        sock.sendall(pdv(1, 0x00, data[:1000]) + pdv(1, 0x02, data[1000:]))
        pdu_type, body = read_pdu(sock)
        elements = ul.decode_command(body[6:])
        assert pdu_type == ul.P_DATA_TF and ul.command_us(elements, 0x00000900) == 0x0000
        sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
        assert read_pdu(sock)[0] == ul.A_RELEASE_RP
    [instance] = node.retrieve.instances_by_uid([uid], scope=Scope.everything()).values()
    with node.blobs.open(instance.blob_key) as stream:
        assert stream.read()[instance.dataset_offset:] == data


def test_a_peer_that_vanishes_mid_data_set_leaves_nothing_behind(node: Mosaic) -> None:
    uid = "1.2.826.0.1.3680043.10.1234.62"
    with connect(node) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == ul.A_ASSOCIATE_AC
        sock.sendall(pdv(1, 0x03, store_command(uid)) + pdv(1, 0x00, dataset_bytes(uid)[:500]))
    import time

    # the association ends (its slot is released) only after the half-received data set is discarded
    assert node.dicom is not None
    deadline = time.monotonic() + 10
    while node.dicom.slots.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not node.dicom.slots.busy
    assert spool_files(node) == []
    assert stored_count(node) == 0
    assert node.retrieve.instances_by_uid([uid], scope=Scope.everything()) == {}


@pytest.mark.parametrize(
    "broken",
    [
        pdv(7, 0x03, b"\x00" * 8),  # a presentation context that was never proposed
        pdv(1, 0x02, b"\x00" * 8),  # data before any command
        struct.pack(">BBI", 0x09, 0, 2) + b"\x00\x00",  # an unknown PDU type
        pdv(1, 0x03, b"\x00\x00\x00\x01\xff\xff\xff\x7f"),  # a command element longer than the command
    ],
    ids=["unknown-context", "data-without-command", "unknown-pdu", "garbage-command"],
)
def test_protocol_violations_are_aborted(node: Mosaic, broken: bytes) -> None:
    with connect(node) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock)[0] == ul.A_ASSOCIATE_AC
        sock.sendall(broken)
        assert read_pdu(sock)[0] == ul.A_ABORT
    assert stored_count(node) == 0


def test_unknown_calling_ae_is_rejected_when_not_allowed(node: Mosaic) -> None:
    with connect(node) as sock:
        sock.sendall(associate_rq(calling="STRANGER"))
        pdu_type, body = read_pdu(sock)
    assert pdu_type == ul.A_ASSOCIATE_RJ
    assert tuple(body[1:4]) == (1, 1, 3)  # rejected-permanent, service-user, calling AE not recognised


def test_associations_beyond_the_maximum_are_rejected(node: Mosaic) -> None:
    sockets = [connect(node) for _ in range(2)]
    try:
        for sock in sockets:
            sock.sendall(associate_rq())
            assert read_pdu(sock)[0] == ul.A_ASSOCIATE_AC
        with connect(node) as extra:
            extra.sendall(associate_rq())
            pdu_type, body = read_pdu(extra)
        assert pdu_type == ul.A_ASSOCIATE_RJ and tuple(body[1:4]) == (2, 3, 2)  # transient, local limit
    finally:
        for sock in sockets:
            sock.close()


def test_garbage_instead_of_an_association_request_does_not_hurt_the_listener(node: Mosaic) -> None:
    with connect(node) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        with contextlib.suppress(TimeoutError, OSError):
            sock.recv(100)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", node.dicom_port, ae_title="MOSAIC")
    assert association.is_established
    assert association.send_c_store(make_instance()).Status == 0x0000
    association.release()


def test_storage_and_query_on_one_association(node: Mosaic) -> None:
    node.ingest.store(to_bytes(make_instance(patient_id="MIXED")), door="test")
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    association = ae.associate("127.0.0.1", node.dicom_port, ae_title="MOSAIC")
    assert association.is_established
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "MIXED"
    query.StudyInstanceUID = ""
    answers = [identifier for status, identifier in association.send_c_find(
        query, StudyRootQueryRetrieveInformationModelFind) if status and status.Status == 0xFF00]
    assert len(answers) == 1
    assert association.send_c_store(make_instance()).Status == 0x0000  # storage works there too
    association.release()


@pytest.mark.parametrize(("version", "calling"), [("MOSAIC_010", "CT01"), ("ODD_NAME", "MODALITY_A"), ("V1", "")])
def test_file_meta_is_what_pydicom_writes(version: str, calling: str) -> None:
    import io

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    from mosaic.dimse.streaming import encode_file_meta

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1234.123"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.3811.3.0.4"
    if version:
        meta.ImplementationVersionName = version
    if calling:
        meta.SourceApplicationEntityTitle = calling
    expected = io.BytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)  # type: ignore[arg-type]
    assert encode_file_meta(CTImageStorage, "1.2.826.0.1.3680043.10.1234.123", "1.2.840.10008.1.2.4.50",
                            "1.2.826.0.1.3680043.9.3811.3.0.4", version, calling) == expected.getvalue()


def find_command(message_id: int = 7) -> bytes:
    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + struct.pack("<I", len(value)) + value

    study_root = b"1.2.840.10008.5.1.4.1.2.2.1\x00"
    rest = (element(0x00000002, study_root) + element(0x00000100, struct.pack("<H", 0x0020))
            + element(0x00000110, struct.pack("<H", message_id)) + element(0x00000700, struct.pack("<H", 0))
            + element(0x00000800, struct.pack("<H", 0)))
    return element(0x00000000, struct.pack("<I", len(rest))) + rest


def cancel_command(message_id: int = 7) -> bytes:
    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + struct.pack("<I", len(value)) + value

    rest = (element(0x00000100, struct.pack("<H", 0x0FFF)) + element(0x00000120, struct.pack("<H", message_id))
            + element(0x00000800, struct.pack("<H", 0x0101)))
    return element(0x00000000, struct.pack("<I", len(rest))) + rest


def study_identifier() -> bytes:
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    data = encode(identifier, True, True)
    assert data is not None
    return data


def find_statuses(sock: socket.socket) -> list[int]:
    statuses = []
    while True:
        pdu_type, body = read_pdu(sock)
        assert pdu_type == ul.P_DATA_TF
        if not body[5] & 0x01:
            continue  # a data set fragment
        status = ul.command_us(ul.decode_command(body[6:]), 0x00000900)
        assert status is not None
        statuses.append(status)
        if status != 0xFF00:
            return statuses


def test_cfind_answers_every_match_then_success(node: Mosaic) -> None:
    for number in range(5):
        node.ingest.store(to_bytes(make_instance(study_uid=f"1.2.826.0.1.3680043.10.1234.9{number}")), door="test")
    study_root = "1.2.840.10008.5.1.4.1.2.2.1"
    with connect(node) as sock:
        sock.sendall(associate_rq(contexts=[(1, study_root, ["1.2.840.10008.1.2"])]))
        assert read_pdu(sock)[0] == ul.A_ASSOCIATE_AC
        sock.sendall(pdv(1, 0x03, find_command()) + pdv(1, 0x02, study_identifier()))
        assert find_statuses(sock) == [0xFF00] * 5 + [0x0000]


def test_cfind_cancelled_by_the_peer_stops_with_fe00(node: Mosaic) -> None:
    for number in range(5):
        node.ingest.store(to_bytes(make_instance(study_uid=f"1.2.826.0.1.3680043.10.1234.8{number}")), door="test")
    study_root = "1.2.840.10008.5.1.4.1.2.2.1"
    with connect(node) as sock:
        sock.sendall(associate_rq(contexts=[(1, study_root, ["1.2.840.10008.1.2"])]))
        assert read_pdu(sock)[0] == ul.A_ASSOCIATE_AC
        sock.sendall(pdv(1, 0x03, find_command()) + pdv(1, 0x02, study_identifier()) + pdv(1, 0x03, cancel_command()))
        statuses = find_statuses(sock)
    assert statuses[-1] == 0xFE00 and len(statuses) < 6
