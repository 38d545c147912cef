"""What a stranger can hold on the DICOM port: declared lengths, half-open requests, floods of connections,
descriptors above 1024, association slots. Raw sockets play the misbehaving peer; after each, echoscu must
still be answered. Nothing here measures memory: a peer declaring gigabytes must be aborted and closed after
its header, before the server waits for (or allocates) the bytes it declared."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from mosaic.app import Mosaic
from tests.dimse_support import (
    LOCALHOST,
    MOSAIC_AE,
    findscu,
    identifier,
    peer_args,
    pynetdicom_find,
    run_tool,
    start_node,
)
from tests.factory import make_instance, to_bytes

pytestmark = pytest.mark.dcmtk

DEADLINE = 60.0
"""How long the server may take to close a connection it must close (a deadline for a hang, not a measure)."""
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
A_ABORT = 0x07
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
RECEIVE_PATHS = {"streaming": [VERIFICATION], "pynetdicom": [VERIFICATION, STUDY_ROOT_MOVE]}
"""Abstract syntaxes that send an association to each receive path (C-MOVE is pynetdicom's)."""


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def associate_rq(abstract_syntaxes: list[str], maximum_length: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing each abstract syntax in Implicit VR Little Endian."""
    body = struct.pack(">HH", 1, 0) + MOSAIC_AE.ljust(16).encode() + b"RAWPEER".ljust(16) + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for number, syntax in enumerate(abstract_syntaxes):
        body += _item(0x20, struct.pack(">BBBB", 1 + 2 * number, 0, 0, 0) + _item(0x30, syntax.encode())
                      + _item(0x40, b"1.2.840.10008.1.2"))
    body += _item(0x50, _item(0x51, struct.pack(">I", maximum_length)) + _item(0x52, b"1.2.3.4"))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def connect(node: Mosaic) -> socket.socket:
    sock = socket.create_connection((LOCALHOST, node.dicom_port), timeout=DEADLINE)
    sock.settimeout(DEADLINE)
    return sock


def read_pdu_header(sock: socket.socket) -> tuple[int, int]:
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            raise ConnectionError("closed")
        header += chunk
    pdu_type, _, length = struct.unpack(">BBI", header)
    return pdu_type, length


def associated(node: Mosaic, abstract_syntaxes: list[str]) -> socket.socket:
    """A raw socket on which Mosaic accepted an association (A-ASSOCIATE-AC read)."""
    sock = connect(node)
    sock.sendall(associate_rq(abstract_syntaxes))
    pdu_type, length = read_pdu_header(sock)
    assert pdu_type == A_ASSOCIATE_AC
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return sock


def closed_by_server(sock: socket.socket) -> list[int]:
    """Read until the server closes the connection (within the deadline); the PDU types it sent first."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {DEADLINE:.0f} s") from None
    types = []
    while len(received) >= 6:
        types.append(received[0])
        received = received[6 + struct.unpack(">I", received[2:6])[0]:]
    return types


def echo_works(node: Mosaic, env: dict[str, str]) -> None:
    result = run_tool("echoscu", *peer_args(node), env=env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    mosaic = start_node(tmp_path_factory.mktemp("bounds") / "mosaic")
    yield mosaic
    mosaic.stop()


def test_associate_rq_declaring_four_gigabytes_is_aborted_after_its_header(node: Mosaic,
                                                                          dcmtk: dict[str, str]) -> None:
    with connect(node) as sock:
        sock.sendall(struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0) + b"\x00\x01\x00\x00" + bytes(64 * 1024))
        assert closed_by_server(sock) == [A_ABORT]
    echo_works(node, dcmtk)


def test_a_first_pdu_other_than_associate_rq_is_aborted(node: Mosaic, dcmtk: dict[str, str]) -> None:
    with connect(node) as sock:
        sock.sendall(struct.pack(">BBI", 0x04, 0, 0x7FFFFFFF) + bytes(16))
        assert closed_by_server(sock) == [A_ABORT]
    echo_works(node, dcmtk)


@pytest.mark.parametrize("receive_path", list(RECEIVE_PATHS))
def test_command_declared_as_one_and_a_half_gigabytes_is_aborted_after_its_header(
        node: Mosaic, dcmtk: dict[str, str], receive_path: str) -> None:
    with associated(node, RECEIVE_PATHS[receive_path]) as sock:
        size = 1_500_000_000
        # one P-DATA-TF whose only PDV is a command fragment of 1.5 GB (only its first bytes follow)
        sock.sendall(struct.pack(">BBI", 0x04, 0, size + 6) + struct.pack(">IBB", size + 2, 1, 0x03) + bytes(4096))
        assert closed_by_server(sock) == [A_ABORT]
    echo_works(node, dcmtk)


@pytest.mark.parametrize("receive_path", list(RECEIVE_PATHS))
def test_command_set_gathered_over_many_pdus_is_bounded(node: Mosaic, dcmtk: dict[str, str],
                                                        receive_path: str) -> None:
    with associated(node, RECEIVE_PATHS[receive_path]) as sock, contextlib.suppress(OSError):
        fragment = bytes(8192)
        for _ in range(64):  # 512 KiB of command fragments, none the last: more than any command set
            sock.sendall(struct.pack(">BBI", 0x04, 0, len(fragment) + 6)
                         + struct.pack(">IBB", len(fragment) + 2, 1, 0x01) + fragment)
        assert closed_by_server(sock) == [A_ABORT]
    echo_works(node, dcmtk)


@pytest.mark.parametrize("receive_path", list(RECEIVE_PATHS))
def test_p_data_longer_than_the_advertised_maximum_length_is_aborted(tmp_path: Path,
                                                                     dcmtk: dict[str, str],
                                                                     receive_path: str) -> None:
    node = start_node(tmp_path / "mosaic", max_pdu_size=16384)
    try:
        with associated(node, RECEIVE_PATHS[receive_path]) as sock:
            fragment = bytes(16384)  # a data set fragment: PDU length 16390 > 16384
            sock.sendall(struct.pack(">BBI", 0x04, 0, len(fragment) + 6)
                         + struct.pack(">IBB", len(fragment) + 2, 1, 0x00) + fragment)
            assert closed_by_server(sock) == [A_ABORT]
        echo_works(node, dcmtk)
    finally:
        node.stop()


def test_half_open_requests_hold_no_slot_and_are_closed_after_the_artim_time(tmp_path: Path,
                                                                             dcmtk: dict[str, str]) -> None:
    """More half-sent A-ASSOCIATE-RQs than association slots: callers are still served meanwhile, and each
    half-open connection is closed once dicom.network_timeout (the ARTIM time) has passed."""
    node = start_node(tmp_path / "mosaic", max_associations=2, network_timeout=3, max_connections_per_address=8)
    sockets = []
    try:
        for _ in range(6):
            sock = connect(node)
            sock.sendall(associate_rq([VERIFICATION])[:8])
            sockets.append(sock)
        echo_works(node, dcmtk)
        for sock in sockets:
            assert closed_by_server(sock) == []
        echo_works(node, dcmtk)
        assert node.dicom is not None and node.dicom.slots.busy == 0
    finally:
        for sock in sockets:
            sock.close()
        node.stop()


def _associate(node: Mosaic, abstract_syntaxes: list[str]) -> Association:
    ae = AE(ae_title="PYNETDICOM")
    for syntax in abstract_syntaxes:
        ae.add_requested_context(syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)


@pytest.mark.parametrize(("held", "asked"), [("streaming", "pynetdicom"), ("pynetdicom", "streaming"),
                                             ("streaming", "streaming"), ("pynetdicom", "pynetdicom")])
def test_max_associations_counts_both_receive_paths_together(tmp_path: Path, held: str,
                                                             asked: str) -> None:
    node = start_node(tmp_path / "mosaic", max_associations=2, max_connections_per_address=8)
    holding: list[Association] = []
    try:
        holding = [_associate(node, RECEIVE_PATHS[held]) for _ in range(2)]
        assert all(association.is_established for association in holding)
        refused = _associate(node, RECEIVE_PATHS[asked])
        assert refused.is_rejected, "a third association was accepted with dicom.max_associations = 2"
        answer = refused.acceptor.primitive
        assert (answer.result, answer.result_source, answer.diagnostic) == (2, 3, 2)  # transient, local limit
        holding.pop().release()
        deadline = time.monotonic() + DEADLINE
        while node.dicom is not None and node.dicom.slots.busy > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        accepted = _associate(node, RECEIVE_PATHS[asked])
        assert accepted.is_established
        holding.append(accepted)
    finally:
        for association in holding:
            association.release()
        node.stop()


@pytest.fixture
def many_descriptors() -> Iterator[int]:
    """The soft descriptor limit raised to what the test needs (restored afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard limit of open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield wanted
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_flood_of_connections_is_refused_beyond_the_door_limit(tmp_path: Path,
                                                                 dcmtk: dict[str, str],
                                                                 many_descriptors: int) -> None:
    """1100 connections that send nothing: beyond dicom.max_connections they are closed at once (with
    A-ASSOCIATE-RJ, local limit exceeded); the admitted ones are closed after the ARTIM time; the listener
    then serves echoscu."""
    # an ARTIM time longer than the flood takes to open, so exactly 16 connections are admitted
    node = start_node(tmp_path / "mosaic", max_associations=2, max_connections=16, max_connections_per_address=16,
                      network_timeout=30)
    flood: list[socket.socket] = []
    try:
        for _ in range(1100):
            flood.append(connect(node))
        answers = [closed_by_server(sock) for sock in flood]
        refused = [answer for answer in answers if answer == [A_ASSOCIATE_RJ]]
        assert len(refused) == 1100 - 16
        assert all(answer in ([], [A_ASSOCIATE_RJ]) for answer in answers)
        echo_works(node, dcmtk)
    finally:
        for sock in flood:
            sock.close()
        node.stop()


def test_one_address_cannot_fill_the_door_for_every_other_peer(tmp_path: Path) -> None:
    """A stranger at 127.0.0.1 opens far more connections than dicom.max_connections_per_address and sends
    nothing: beyond that number it is refused at once (A-ASSOCIATE-RJ), and a peer calling from another address
    (127.0.0.2, also loopback) still associates while the stranger holds every connection it got."""
    node = start_node(tmp_path / "mosaic", max_connections=16, max_connections_per_address=4, network_timeout=60)
    held: list[socket.socket] = []
    try:
        for _ in range(12):
            held.append(connect(node))
        refused = [sock for sock in held[4:] if closed_by_server(sock) == [A_ASSOCIATE_RJ]]
        assert len(refused) == 8
        ae = AE(ae_title="OTHERPEER")
        ae.add_requested_context(VERIFICATION)
        association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE, bind_address=("127.0.0.2", 0))
        try:
            assert association.is_established
            assert association.send_c_echo().Status == 0x0000
        finally:
            association.release()
    finally:
        for sock in held:
            sock.close()
        node.stop()


def test_descriptors_above_1024_are_served_on_both_receive_paths(tmp_path: Path,
                                                                 dcmtk: dict[str, str],
                                                                 many_descriptors: int) -> None:
    """With more than 1024 descriptors open in the server's process, every socket it accepts is numbered above
    1024, where select(2) cannot go: echoscu and findscu (streaming path), C-FIND with cancel checks and an
    association pynetdicom serves must all work."""
    node = start_node(tmp_path / "mosaic")
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert min(filler) < 1024 < max(filler)
        assert run_tool("storescu", *peer_args(node), _instance(tmp_path), env=dcmtk).returncode == 0
        echo_works(node, dcmtk)
        found = findscu(node, {"QueryRetrieveLevel": "STUDY", "PatientID": "FD-1024", "StudyInstanceUID": ""},
                        tmp_path / "found", env=dcmtk)
        assert len(found) == 1
        statuses, _identifiers = pynetdicom_find(
            node, identifier(QueryRetrieveLevel="STUDY", PatientID="FD-1024", StudyInstanceUID=""))
        assert statuses == [0xFF00, 0x0000]
        association = _associate(node, RECEIVE_PATHS["pynetdicom"])  # C-MOVE proposed: pynetdicom serves it
        assert association.is_established
        try:
            assert int(association.send_c_echo().Status) == 0x0000
        finally:
            association.release()
    finally:
        for descriptor in filler:
            os.close(descriptor)
        node.stop()


def _instance(tmp_path: Path) -> Path:
    path = tmp_path / "fd.dcm"
    path.write_bytes(to_bytes(make_instance(patient_id="FD-1024")))
    return path
