"""C-STORE answers for what Mosaic did not store, on both receive paths: a data set that is another SOP
Instance than the request names (0xC000, ErrorComment naming the data set's UID), and a full disk (0xA700,
the association going on, nothing half-written left)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from mosaic.app import Mosaic
from mosaic.config import StorageSettings
from tests.dimse_support import LOCALHOST, MOSAIC_AE, blob_files, counts, start_node
from tests.factory import PREFIX, make_instance, to_bytes
from tests.test_dimse_bad_input import encoded, part10

NOTHING = {"Patient": 0, "Study": 0, "Series": 0, "Instance": 0}
RECEIVE_PATHS = ["streaming", "pynetdicom"]


def store_all(node: Mosaic, paths: list[Path], receive_path: str) -> list[tuple[int, str]]:
    """C-STORE each file's bytes as they are, on one association: (status, error comment) per file."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    if receive_path == "pynetdicom":
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)  # not storage-only any more
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
    answers = []
    try:
        assert association.is_established
        for path in paths:
            status = association.send_c_store(path)
            assert status, "no C-STORE response (the association was aborted)"
            answers.append((int(status.Status), str(status.get("ErrorComment", ""))))
        assert association.is_established
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        association.release()
    return answers


@pytest.mark.parametrize("receive_path", RECEIVE_PATHS)
def test_data_set_of_another_sop_instance_than_requested_is_refused(tmp_path: Path, receive_path: str) -> None:
    node = start_node(tmp_path / "mosaic")
    try:
        requested = generate_uid(prefix=PREFIX)
        dataset = make_instance(patient_id="OTHER-INSTANCE")
        path = tmp_path / "other.dcm"
        # the File Meta Information (which the SCU takes the request's UIDs from) names another instance
        path.write_bytes(part10(encoded(dataset), sop_class_uid=CTImageStorage, sop_instance_uid=requested))
        [(status, comment)] = store_all(node, [path], receive_path)
        assert status == 0xC000
        assert str(dataset.SOPInstanceUID) in comment
        assert counts(node) == NOTHING
        assert blob_files(node) == []
    finally:
        node.stop()


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 2 MiB tmpfs (mounting needs root: the test is skipped otherwise)."""
    folder = Path(tempfile.mkdtemp(prefix="mosaic-full-disk-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("receive_path", [*RECEIVE_PATHS, "pynetdicom-spool"])
def test_full_disk_is_answered_with_a700_and_the_association_goes_on(
        tmp_path: Path, tiny_disk: Path, receive_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blob folder is on a 2 MiB file system: a 3 MiB object gets 0xA700 with a comment, a small one on the
    same association is stored. "pynetdicom-spool" also puts pynetdicom's own receive file on the full disk."""
    if receive_path == "pynetdicom-spool":
        monkeypatch.setattr(tempfile, "tempdir", str(tiny_disk))
    node = start_node(tmp_path / "mosaic", storage=StorageSettings(path=tiny_disk / "blobs"))  # type: ignore[call-arg]
    try:
        big, small = tmp_path / "big.dcm", tmp_path / "small.dcm"
        big.write_bytes(to_bytes(make_instance(patient_id="FULL-DISK", rows=1024, columns=1536)))  # 3 MiB
        small.write_bytes(to_bytes(make_instance(patient_id="AFTER-FULL-DISK")))
        answers = store_all(node, [big, small], receive_path.split("-")[0])
        assert answers[0][0] == 0xA700
        assert "space" in answers[0][1].lower(), answers
        assert answers[1] == (0x0000, "")
        assert counts(node) == {"Patient": 1, "Study": 1, "Series": 1, "Instance": 1}
        assert len(blob_files(node)) == 1  # the small object; nothing of the big one
        assert not list(tiny_disk.glob("tmp*"))  # nor of pynetdicom's receive file
    finally:
        node.stop()
