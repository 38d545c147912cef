"""Objects Mosaic must refuse over C-STORE: each gets a specific failure status, leaves nothing in the index
and no blob behind, and a log line names the object and the reason.

Bytes no honest SCU would produce (not DICOM, truncated, no SOP Instance UID, a SOP class other than the
negotiated one) are sent with a pynetdicom SCU straight from a crafted Part 10 file, on both of Mosaic's
receive paths: the streaming receiver (storage-only association) and pynetdicom (an association that also
proposes C-FIND). A malformed UID and a duplicate are sent with storescu.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from mosaic.app import Mosaic
from tests.dimse_support import (
    LOCALHOST,
    MOSAIC_AE,
    blob_files,
    counts,
    identifier,
    peer_args,
    pynetdicom_find,
    run_tool,
    start_node,
)
from tests.factory import PREFIX, make_instance, to_bytes

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.filterwarnings("ignore::UserWarning:pydicom"),  # pydicom reading malformed input
]

CANNOT_UNDERSTAND = 0xC000
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
DUPLICATE_SOP_INSTANCE = 0x0111
NOTHING = {"Patient": 0, "Study": 0, "Series": 0, "Instance": 0}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    """One node for every refusal: after each, it must still hold nothing."""
    mosaic = start_node(tmp_path_factory.mktemp("bad-input") / "mosaic")
    yield mosaic
    mosaic.stop()


def part10(data_set: bytes, *, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """A Part 10 file: valid File Meta Information (which a sending SCU takes its UIDs from), any data set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)  # type: ignore[arg-type]
    return buffer.getvalue() + data_set


def encoded(dataset: Dataset) -> bytes:
    """A data set's bytes in Explicit VR Little Endian, without meta information."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def send_file(node: Mosaic, path: Path, *, receive_path: str, sop_class_uid: str) -> int:
    """C-STORE a Part 10 file's data set bytes as they are, with pynetdicom; the response status."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(sop_class_uid, ExplicitVRLittleEndian)
    if receive_path == "pynetdicom":
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)  # not storage-only any more
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes, never a re-encoding
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
    try:
        assert association.is_established
        status = association.send_c_store(path)
        assert status, "no C-STORE response"
        return int(status.Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        association.release()


def assert_nothing_kept(node: Mosaic, **find_keys: str) -> None:
    assert counts(node) == NOTHING
    assert blob_files(node) == []
    query = identifier(**{"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": "", **find_keys})
    statuses, responses = pynetdicom_find(node, query)
    assert (statuses, responses) == ([0x0000], [])


def assert_logged(caplog: pytest.LogCaptureFixture, sop_instance_uid: str, reason: str) -> None:
    lines = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert any(sop_instance_uid in line and re.search(reason, line) for line in lines), lines


RECEIVE_PATHS = ["streaming", "pynetdicom"]


@pytest.mark.parametrize("receive_path", RECEIVE_PATHS)
def test_bytes_that_are_not_dicom_are_refused(node: Mosaic, tmp_path: Path, receive_path: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    uid = generate_uid(prefix=PREFIX)
    path = tmp_path / "not-dicom.dcm"
    path.write_bytes(part10(b"This is a text file, not a DICOM data set at all.\n" * 8,
                            sop_class_uid=CTImageStorage, sop_instance_uid=uid))
    with caplog.at_level(logging.WARNING):
        status = send_file(node, path, receive_path=receive_path, sop_class_uid=CTImageStorage)
    assert status == CANNOT_UNDERSTAND
    assert_nothing_kept(node, SOPInstanceUID=uid)
    # pydicom reads text as one element of an unknown tag: what is missing then is the SOP Class UID
    assert_logged(caplog, uid, r"not (readable as )?(a )?DICOM|truncated|SOPClassUID is missing")


@pytest.mark.parametrize("receive_path", RECEIVE_PATHS)
def test_truncated_object_is_refused(node: Mosaic, tmp_path: Path, receive_path: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    dataset = make_instance(patient_id="TRUNCATED", rows=64, columns=64)
    path = tmp_path / "truncated.dcm"
    path.write_bytes(to_bytes(dataset)[:-1000])  # the Pixel Data value ends 1000 bytes early
    uid = str(dataset.SOPInstanceUID)
    with caplog.at_level(logging.WARNING):
        status = send_file(node, path, receive_path=receive_path, sop_class_uid=CTImageStorage)
    assert status == CANNOT_UNDERSTAND
    assert_nothing_kept(node, PatientID="TRUNCATED")
    assert_logged(caplog, uid, "truncated")


@pytest.mark.parametrize("receive_path", RECEIVE_PATHS)
def test_data_set_without_sop_instance_uid_is_refused(node: Mosaic, tmp_path: Path, receive_path: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    dataset = make_instance(patient_id="NO-UID")
    uid = str(dataset.SOPInstanceUID)
    del dataset.SOPInstanceUID
    path = tmp_path / "no-uid.dcm"
    path.write_bytes(part10(encoded(dataset), sop_class_uid=CTImageStorage, sop_instance_uid=uid))
    with caplog.at_level(logging.WARNING):
        status = send_file(node, path, receive_path=receive_path, sop_class_uid=CTImageStorage)
    assert status == CANNOT_UNDERSTAND
    assert_nothing_kept(node, PatientID="NO-UID")
    assert_logged(caplog, uid, "SOPInstanceUID is missing")


@pytest.mark.parametrize("receive_path", RECEIVE_PATHS)
def test_data_set_of_another_sop_class_than_negotiated_is_refused(node: Mosaic, tmp_path: Path,
                                                                  receive_path: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    dataset = make_instance(patient_id="MISMATCH", sop_class_uid=MRImageStorage, modality="MR")
    uid = str(dataset.SOPInstanceUID)
    path = tmp_path / "mismatch.dcm"
    path.write_bytes(part10(encoded(dataset), sop_class_uid=CTImageStorage, sop_instance_uid=uid))
    with caplog.at_level(logging.WARNING):
        status = send_file(node, path, receive_path=receive_path, sop_class_uid=CTImageStorage)
    assert status == DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert_nothing_kept(node, SOPInstanceUID=uid)
    assert_logged(caplog, uid, "does not match the negotiated")


def test_malformed_sop_instance_uid_from_storescu_is_refused(node: Mosaic, tmp_path: Path,
                                                             dcmtk: dict[str, str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    dataset = make_instance(patient_id="BAD-UID", sop_uid="1.2.03.abc")
    path = tmp_path / "bad-uid.dcm"
    path.write_bytes(to_bytes(dataset))
    with caplog.at_level(logging.WARNING):
        result = run_tool("storescu", "-d", *peer_args(node), path, env=dcmtk)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert re.search(r"DIMSE Status\s*:\s*0xc000", output), output
    assert_nothing_kept(node, PatientID="BAD-UID")
    assert_logged(caplog, "1.2.03.abc", "is not a UID")


def test_second_object_with_a_stored_sop_instance_uid_is_refused_as_duplicate(
        tmp_path: Path, dcmtk: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    node = start_node(tmp_path / "mosaic")
    try:
        uid = generate_uid(prefix=PREFIX)
        first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
        for path, name in ((first, "First^Version"), (second, "Second^Version")):
            path.write_bytes(to_bytes(make_instance(patient_id="DUP", patient_name=name, sop_uid=uid)))
        assert run_tool("storescu", *peer_args(node), first, env=dcmtk).returncode == 0
        blobs = blob_files(node)
        with caplog.at_level(logging.WARNING):
            result = run_tool("storescu", "-d", *peer_args(node), second, env=dcmtk)
        assert re.search(r"DIMSE Status\s*:\s*0x0111", result.stdout + result.stderr), result.stdout
        assert counts(node)["Instance"] == 1
        assert blob_files(node) == blobs
        _statuses, [stored] = pynetdicom_find(node, identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID=uid,
                                                                PatientName=""))
        assert str(stored.PatientName) == "First^Version"
        assert_logged(caplog, uid, "already stored")
        # the very same bytes again are a success, stored once
        assert run_tool("storescu", *peer_args(node), first, env=dcmtk).returncode == 0
        assert counts(node)["Instance"] == 1 and blob_files(node) == blobs
    finally:
        node.stop()


def test_refusal_does_not_end_the_association(tmp_path: Path) -> None:
    """After a refused object, the same association still stores good ones."""
    node = start_node(tmp_path / "mosaic")
    good = make_instance(patient_id="GOOD-AFTER-BAD")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(part10(b"garbage!" * 16, sop_class_uid=CTImageStorage, sop_instance_uid=generate_uid()))
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
        assert association.is_established
        try:
            assert int(association.send_c_store(bad).Status) == CANNOT_UNDERSTAND
            assert int(association.send_c_store(good).Status) == 0x0000
        finally:
            association.release()
        assert counts(node) == {"Patient": 1, "Study": 1, "Series": 1, "Instance": 1}
        assert len(blob_files(node)) == 1
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        node.stop()
