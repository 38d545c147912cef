"""Every door's store is audited exactly once, by ingest (IngestService.store with the door's IngestOrigin): DIMSE
on both receive paths, STOW-RS over HTTP, and `mosaic import`. The audit rows naming the stored instance are
counted (per-instance records are merged per series by the trail; STOW-RS names its instances in its request's
one record)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from typer.testing import CliRunner

from mosaic.app import Mosaic
from mosaic.cli import app
from mosaic.config import Settings
from tests.auth_support import auth_headers
from tests.dimse_support import LOCALHOST, MOSAIC_AE, start_node
from tests.factory import PREFIX, make_instance, to_bytes
from tests.test_dimse_bad_input import encoded, part10

BOUNDARY = "mosaic-audit-boundary"


def audited(node: Mosaic, sop_instance_uid: str, outcome: str = "success") -> int:
    """How many store records of ``outcome`` name the instance."""
    assert node.audit.flush()
    rows, _total = node.audit.search(action="store")
    count = 0
    for row in rows:
        if row.outcome != outcome:
            continue
        named = [row.SOPInstanceUID] if row.SOPInstanceUID else [
            item["SOPInstanceUID"] if isinstance(item, dict) else item
            for item in json.loads(row.detail).get("instances", [])]
        count += named.count(sop_instance_uid)
    return count


def c_store(node: Mosaic, data: bytes, path: Path) -> int:
    path.write_bytes(data)
    ae = AE(ae_title="AUDITED_SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
    assert association.is_established
    try:
        status = association.send_c_store(path)
        return int(status.Status)
    finally:
        association.release()


@pytest.mark.parametrize("streaming_store", [True, False], ids=["streaming", "pynetdicom"])
def test_a_c_store_is_audited_once(tmp_path: Path, streaming_store: bool) -> None:
    node = start_node(tmp_path / "mosaic", streaming_store=streaming_store)
    try:
        dataset = make_instance(patient_id="AUDIT-DIMSE")
        assert c_store(node, to_bytes(dataset), tmp_path / "one.dcm") == 0x0000
        assert audited(node, str(dataset.SOPInstanceUID)) == 1
        assert audited(node, str(dataset.SOPInstanceUID), "failure") == 0
    finally:
        node.stop()


@pytest.mark.parametrize("streaming_store", [True, False], ids=["streaming", "pynetdicom"])
def test_a_refused_c_store_is_audited_once_as_a_failure(tmp_path: Path, streaming_store: bool) -> None:
    node = start_node(tmp_path / "mosaic", streaming_store=streaming_store)
    try:
        requested = generate_uid(prefix=PREFIX)  # the request names another instance than the data set
        data = part10(encoded(make_instance(patient_id="AUDIT-REFUSED")), sop_class_uid=CTImageStorage,
                      sop_instance_uid=requested)
        assert c_store(node, data, tmp_path / "other.dcm") == 0xC000
        assert audited(node, requested, "failure") == 1
    finally:
        node.stop()


def test_a_stow_rs_store_is_audited_once(tmp_path: Path) -> None:
    node = start_node(tmp_path / "mosaic")
    try:
        first, second = make_instance(patient_id="AUDIT-STOW"), make_instance(patient_id="AUDIT-STOW")
        body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + to_bytes(dataset)
                        + b"\r\n" for dataset in (first, second)) + f"--{BOUNDARY}--\r\n".encode()
        answer = httpx.post(f"http://127.0.0.1:{node.http_port}/dicom-web/studies", content=body, timeout=60,
                            headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                     f"boundary={BOUNDARY}", **auth_headers(node)})
        assert answer.status_code == 200, answer.text
        assert audited(node, str(first.SOPInstanceUID)) == 1
        assert audited(node, str(second.SOPInstanceUID)) == 1
    finally:
        node.stop()


def test_an_import_is_audited_once_per_file(tmp_path: Path) -> None:
    runner = CliRunner()
    data_dir = tmp_path / "data"
    assert runner.invoke(app, ["init", "--data-dir", str(data_dir)]).exit_code == 0
    folder = tmp_path / "files"
    folder.mkdir()
    dataset = make_instance(patient_id="AUDIT-IMPORT")
    (folder / "one.dcm").write_bytes(to_bytes(dataset))
    (folder / "notes.txt").write_text("not DICOM")
    result = runner.invoke(app, ["import", str(folder), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    node = Mosaic(Settings(data_dir=data_dir))  # type: ignore[call-arg]
    try:
        assert audited(node, str(dataset.SOPInstanceUID)) == 1
        rows, _total = node.audit.search(action="store")
        assert all(row.outcome == "success" for row in rows)  # refused files are listed to the operator instead
    finally:
        node.stop()
