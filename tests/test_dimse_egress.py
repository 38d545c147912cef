"""What C-MOVE and C-GET send: the stored bytes whenever the peer accepted the stored transfer syntax
(undefined-length sequences stay undefined), a decompressed data set for a peer that takes only uncompressed
syntaxes (JPEG 2000 here), and one INFO line per retrieval saying who, what, how many and the outcome.

Objects are stored with a pynetdicom SCU sending the file's bytes as they are (storescu would re-encode them:
dcmtk writes explicit sequence lengths), and read back with getscu ``+B`` (bit-preserving: without it getscu
re-encodes what it received the same way)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
)
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from mosaic.app import Mosaic
from mosaic.config import DicomPeer
from tests.dimse_support import LOCALHOST, MOSAIC_AE, dataset_bytes, peer_args, received_files, run_tool, start_node
from tests.factory import make_instance
from tests.helpers import free_port

pytestmark = pytest.mark.dcmtk

JPEG2000_FILE = "MR_small_jp2klossless.dcm"


def store_as_is(node: Mosaic, paths: list[Path], sop_class_uid: str, syntaxes: list[str]) -> None:
    """C-STORE each file's data set bytes unchanged (pynetdicom sending from the file)."""
    ae = AE(ae_title="PYNETDICOM")
    for syntax in syntaxes:
        ae.add_requested_context(sop_class_uid, syntax)
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
    try:
        assert association.is_established
        for path in paths:
            assert int(association.send_c_store(path).Status) == 0x0000
    finally:
        association.release()
        _config.STORE_SEND_CHUNKED_DATASET = chunked


class UncompressedOnlySCP:
    """A pynetdicom storage SCP (a C-MOVE destination) accepting MR and CT images in Explicit or Implicit VR
    Little Endian only; it keeps what it receives."""

    ae_title = "UNCOMPRESSED"

    def __init__(self) -> None:
        self.received: dict[str, tuple[str, Dataset]] = {}
        """SOP Instance UID → (transfer syntax of the context, data set)"""
        self.ae = AE(ae_title=self.ae_title)
        for sop_class in (MRImageStorage, CTImageStorage):
            self.ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.port = free_port()
        self.server = self.ae.start_server((LOCALHOST, self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_c_store)])

    def _on_c_store(self, event: Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.received[str(dataset.SOPInstanceUID)] = (str(event.context.transfer_syntax), dataset)
        return 0x0000

    def peer(self) -> DicomPeer:
        return DicomPeer(ae_title=self.ae_title, host=LOCALHOST, port=self.port)  # type: ignore[call-arg]

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def destination() -> Iterator[UncompressedOnlySCP]:
    scp = UncompressedOnlySCP()
    yield scp
    scp.stop()


@pytest.fixture
def jpeg2000(tmp_path: Path) -> Path:
    source = get_testdata_file(JPEG2000_FILE)
    assert source is not None
    path = tmp_path / JPEG2000_FILE
    shutil.copy(source, path)
    assert str(pydicom.dcmread(path).file_meta.TransferSyntaxUID) == JPEG2000Lossless
    return path


def same_pixels(received: Dataset, original: Path) -> bool:
    return bool(numpy.array_equal(received.pixel_array, pydicom.dcmread(original).pixel_array))


def test_cmove_of_jpeg2000_to_a_peer_taking_only_uncompressed_arrives_decompressed(
        tmp_path: Path, dcmtk: dict[str, str], destination: UncompressedOnlySCP, jpeg2000: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    node = start_node(tmp_path / "mosaic", peers=[destination.peer()])
    try:
        store_as_is(node, [jpeg2000], MRImageStorage, [JPEG2000Lossless])
        original = pydicom.dcmread(jpeg2000)
        with caplog.at_level(logging.INFO, logger="mosaic.dimse"):
            result = run_tool("movescu", "-S", "-aem", destination.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                              "-k", f"StudyInstanceUID={original.StudyInstanceUID}", *peer_args(node), env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
        syntax, received = destination.received[str(original.SOPInstanceUID)]
        assert syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert same_pixels(received, jpeg2000)
        lines = [record.getMessage() for record in caplog.records
                 if record.levelno == logging.INFO and record.getMessage().startswith("C-MOVE from")]
        assert len(lines) == 1, lines
        assert f"to {destination.ae_title!r}" in lines[0]
        assert "1 instances of 1 studies; 0 sent as stored, 1 converted, 0 refused" in lines[0], lines[0]
        assert lines[0].endswith("success"), lines[0]
    finally:
        node.stop()


def test_cget_of_jpeg2000_by_getscu_taking_only_uncompressed_arrives_decompressed(
        tmp_path: Path, dcmtk: dict[str, str], jpeg2000: Path) -> None:
    node = start_node(tmp_path / "mosaic")
    try:
        store_as_is(node, [jpeg2000], MRImageStorage, [JPEG2000Lossless])
        original = pydicom.dcmread(jpeg2000)
        folder = tmp_path / "got"
        folder.mkdir()
        # getscu proposes only uncompressed transfer syntaxes by default (+x=)
        result = run_tool("getscu", "-S", "+B", "-od", folder, "-k", "QueryRetrieveLevel=STUDY",
                          "-k", f"StudyInstanceUID={original.StudyInstanceUID}", *peer_args(node), env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
        [path] = received_files(folder).values()
        received = pydicom.dcmread(path)
        assert not received.file_meta.TransferSyntaxUID.is_compressed
        assert same_pixels(received, jpeg2000)
    finally:
        node.stop()


def undefined_length_instance(path: Path, syntax: str) -> Path:
    """A CT image whose sequence and item have undefined lengths (delimitation items), saved in ``syntax``."""
    dataset = make_instance(patient_id="UNDEFINED-LENGTH")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113691", "DCM", "IHE Profile"
    dataset.ProcedureCodeSequence = Sequence([code])
    dataset["ProcedureCodeSequence"].is_undefined_length = True
    dataset.ProcedureCodeSequence[0].is_undefined_length_sequence_item = True
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.save_as(path, enforce_file_format=True)
    assert b"\xfe\xff\xdd\xe0" in path.read_bytes()  # a sequence delimitation item: written undefined-length
    return path


def test_cget_by_getscu_sends_the_stored_bytes_of_undefined_length_sequences(tmp_path: Path,
                                                                              dcmtk: dict[str, str]) -> None:
    node = start_node(tmp_path / "mosaic")
    try:
        path = undefined_length_instance(tmp_path / "undefined.dcm", ExplicitVRLittleEndian)
        store_as_is(node, [path], CTImageStorage, [ExplicitVRLittleEndian])
        folder = tmp_path / "got"
        folder.mkdir()
        result = run_tool("getscu", "-S", "+B", "-od", folder, "-k", "QueryRetrieveLevel=PATIENT", "-P",
                          "-k", "PatientID=UNDEFINED-LENGTH", *peer_args(node), env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
        [received] = received_files(folder).values()
        assert dataset_bytes(received) == dataset_bytes(path)
    finally:
        node.stop()


def test_cget_sends_implicit_vr_stored_bytes_to_a_peer_taking_implicit_vr(tmp_path: Path) -> None:
    """getscu proposes storage in Explicit VR first (and +xi still proposes Explicit VR): a pynetdicom SCU
    proposing only Implicit VR Little Endian receives the stored Implicit VR bytes unchanged."""
    node = start_node(tmp_path / "mosaic")
    received: list[bytes] = []

    def on_c_store(event: Event) -> int:
        received.append(dataset_bytes(Path(event.dataset_path)))  # received into a file (as Mosaic's listener sets)
        return 0x0000

    try:
        path = undefined_length_instance(tmp_path / "undefined.dcm", ImplicitVRLittleEndian)
        store_as_is(node, [path], CTImageStorage, [ImplicitVRLittleEndian])
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
        role = build_role(CTImageStorage, scp_role=True)
        association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE, ext_neg=[role],
                                   evt_handlers=[(evt.EVT_C_STORE, on_c_store)])
        assert association.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = pydicom.dcmread(path).StudyInstanceUID
        try:
            statuses = [int(status.Status) for status, _ in association.send_c_get(
                query, StudyRootQueryRetrieveInformationModelGet)]
        finally:
            association.release()
        assert statuses[-1] == 0x0000
        assert received == [dataset_bytes(path)]
    finally:
        node.stop()
