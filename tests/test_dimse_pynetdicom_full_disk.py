"""A full disk on pynetdicom's receive path (dicom.streaming_store = false): the data set it could not write is
still received to its end and answered 0xA700, and the association goes on (the spool file pynetdicom writes into
is Mosaic's, in the listener's spool folder: :mod:`mosaic.dimse.adjustments`)."""

from __future__ import annotations

from pathlib import Path

from mosaic.config import StorageSettings
from tests.dimse_support import blob_files, counts, start_node
from tests.factory import make_instance, to_bytes
from tests.test_dimse_store_refusals import store_all, tiny_disk

__all__ = ["tiny_disk"]


def test_full_disk_is_answered_with_a700_on_pynetdicom_s_receive_path(tmp_path: Path, tiny_disk: Path) -> None:
    node = start_node(tmp_path / "mosaic", storage=StorageSettings(path=tiny_disk / "blobs"),  # type: ignore[call-arg]
                      streaming_store=False)
    try:
        big, small = tmp_path / "big.dcm", tmp_path / "small.dcm"
        big.write_bytes(to_bytes(make_instance(patient_id="FULL-DISK", rows=1024, columns=1536)))  # 3 MiB
        small.write_bytes(to_bytes(make_instance(patient_id="AFTER-FULL-DISK")))
        answers = store_all(node, [big, small], "pynetdicom")
        assert answers[0][0] == 0xA700
        assert "space" in answers[0][1].lower(), answers
        assert answers[1] == (0x0000, "")
        assert counts(node) == {"Patient": 1, "Study": 1, "Series": 1, "Instance": 1}
        assert len(blob_files(node)) == 1
        assert not list((tiny_disk / "blobs" / ".incoming").glob("tmp*"))
    finally:
        node.stop()
