"""The same object sent again by another route is "already stored", not a conflicting duplicate: what is compared
is the data set, not the Part 10 File Meta Information (which names the sender, the implementation that wrote the
file, the AE it came from). A real difference still meets the duplicate policy. Doors: dcmtk storescu from two AEs,
STOW-RS over httpx, `mosaic import` of a copy written by another implementation (a CD)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from mosaic.app import Mosaic
from mosaic.index.schema import Instance
from mosaic.services.importer import import_paths
from tests.auth_support import auth_headers
from tests.dimse_support import LOCALHOST, MOSAIC_AE, run_tool, start_node
from tests.factory import make_instance, to_bytes

pytestmark = pytest.mark.dcmtk


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    node = start_node(tmp_path_factory.mktemp("duplicates") / "mosaic")
    yield node
    node.stop()


def storescu(node: Mosaic, ae_title: str, path: Path, dcmtk: dict[str, str]) -> str:
    result = run_tool("storescu", "-v", "-aet", ae_title, "-aec", MOSAIC_AE, LOCALHOST, str(node.dicom_port), path,
                      env=dcmtk)
    return result.stdout + result.stderr


def stow(node: Mosaic, data: bytes) -> httpx.Response:
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b--\r\n"
    return httpx.post(f"http://{LOCALHOST}:{node.http_port}/dicom-web/studies", content=body, timeout=60,
                      headers={**auth_headers(node),
                               "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})


def copies(node: Mosaic, sop_instance_uid: str) -> int:
    with node.database.session() as session:
        return session.query(Instance).filter_by(SOPInstanceUID=sop_instance_uid).count()


def rewritten_by_another_implementation(dataset: pydicom.Dataset) -> bytes:
    """The same data set in a file another application wrote (a CD burner, another PACS)."""
    dataset.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1234.99.1"
    dataset.file_meta.ImplementationVersionName = "CD_BURNER_7"
    dataset.file_meta.SourceApplicationEntityTitle = "OLD_PACS"
    return to_bytes(dataset)


def test_an_instance_sent_again_by_another_ae_over_stow_and_from_a_cd_is_already_stored(
        node: Mosaic, tmp_path: Path, dcmtk: dict[str, str]) -> None:
    dataset = make_instance(patient_id="DUP-1")
    first = tmp_path / "first.dcm"
    first.write_bytes(to_bytes(dataset))
    assert "Status: 0x0111" not in storescu(node, "CT_SCANNER", first, dcmtk)
    assert copies(node, dataset.SOPInstanceUID) == 1
    output = storescu(node, "ROUTER", first, dcmtk)  # the same object forwarded by a router
    assert "Received Store Response (Success)" in output, output
    answer = stow(node, rewritten_by_another_implementation(dataset))
    assert answer.status_code == 200, answer.text
    cd = tmp_path / "cd"
    cd.mkdir()
    (cd / "IM0001").write_bytes(rewritten_by_another_implementation(dataset))
    report = import_paths(node.ingest, [cd])
    assert dict(report.outcomes) == {"already-stored": 1}, report.rejected
    assert copies(node, dataset.SOPInstanceUID) == 1


def test_a_real_difference_is_still_a_duplicate(node: Mosaic, tmp_path: Path, dcmtk: dict[str, str]) -> None:
    dataset = make_instance(patient_id="DUP-2")
    path = tmp_path / "original.dcm"
    path.write_bytes(to_bytes(dataset))
    storescu(node, "CT_SCANNER", path, dcmtk)
    dataset.PatientName = "Other^Name"
    changed = tmp_path / "changed.dcm"
    changed.write_bytes(to_bytes(dataset))
    assert "Status: 0x111" in storescu(node, "ROUTER", changed, dcmtk)
    assert stow(node, to_bytes(dataset)).status_code == 409
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
