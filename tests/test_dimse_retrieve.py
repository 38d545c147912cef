"""C-ECHO, C-MOVE and C-GET against a running Mosaic node, with dcmtk echoscu, movescu (into a storescp) and
getscu, and a pynetdicom SCU where the exact status matters."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from mosaic.app import Mosaic
from tests.dimse_support import (
    LOCALHOST,
    MOSAIC_AE,
    StoreSCP,
    dataset_bytes,
    peer_args,
    received_files,
    run_tool,
    start_node,
)
from tests.factory import PREFIX, make_instance

pytestmark = pytest.mark.dcmtk


@dataclass
class Retrieval:
    node: Mosaic
    destination: StoreSCP
    work: Path
    study: str
    other_study: str
    sent: dict[str, Path]
    """SOPInstanceUID → the file sent (of the study and of the other study)."""
    study_instances: list[str]


@pytest.fixture(params=["folder", "s3"])
def retrieval(request: pytest.FixtureRequest, tmp_path: Path, dcmtk: dict[str, str]) -> Iterator[Retrieval]:
    """A node knowing one storescp as C-MOVE destination, holding a 5-instance study (2 series) and
    another study; blobs in a folder (sent straight from the blob file) or in S3 (from a local copy)."""
    storage = request.getfixturevalue("s3_storage_settings") if request.param == "s3" else None
    destination = StoreSCP(tmp_path / "moved", dcmtk, ae_title="DESTINATION").start()
    node = start_node(tmp_path / "mosaic", peers=[destination.peer()], storage=storage)
    study, other_study = generate_uid(prefix=PREFIX), generate_uid(prefix=PREFIX)
    sent: dict[str, Path] = {}
    study_instances: list[str] = []
    series = [generate_uid(prefix=PREFIX) for _ in range(3)]
    for number, (study_uid, series_uid) in enumerate(
            [(study, series[0])] * 3 + [(study, series[1])] * 2 + [(other_study, series[2])], start=1):
        dataset = make_instance(study_uid=study_uid, series_uid=series_uid, instance_number=number,
                                patient_id="MOVE-1", accession="MOVE")
        path = tmp_path / "input" / f"{number}.dcm"
        path.parent.mkdir(exist_ok=True)
        dataset.save_as(path, enforce_file_format=True)
        sent[str(dataset.SOPInstanceUID)] = path
        if study_uid == study:
            study_instances.append(str(dataset.SOPInstanceUID))
    try:
        result = run_tool("storescu", *peer_args(node), *sent.values(), env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
        yield Retrieval(node, destination, tmp_path, study, other_study, sent, study_instances)
    finally:
        node.stop()
        destination.stop()


def dimse_statuses(output: str) -> list[int]:
    """Every 'DIMSE Status : 0x....' a dcmtk tool printed with -d."""
    return [int(code, 16) for code in re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", output)]


def test_cecho_succeeds(tmp_path: Path, dcmtk: dict[str, str]) -> None:
    node = start_node(tmp_path / "mosaic")
    try:
        result = run_tool("echoscu", "-d", *peer_args(node), env=dcmtk)
    finally:
        node.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_cmove_to_unknown_destination_is_refused_with_a801(retrieval: Retrieval,
                                                           dcmtk: dict[str, str]) -> None:
    result = run_tool("movescu", "-d", "-S", "-aem", "NOBODY", "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={retrieval.study}", *peer_args(retrieval.node), env=dcmtk)
    assert result.returncode != 0
    assert dimse_statuses(result.stdout + result.stderr)[-1] == 0xA801

    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    association = ae.associate(LOCALHOST, retrieval.node.dicom_port, ae_title=MOSAIC_AE)
    assert association.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = retrieval.study
    try:
        statuses = [int(status.Status) for status, _ in association.send_c_move(
            identifier, "NOBODY", StudyRootQueryRetrieveInformationModelMove)]
    finally:
        association.release()
    assert statuses == [0xA801]
    assert received_files(retrieval.destination.folder) == {}
    retrieval.node.audit.flush()
    refused = [row for row in retrieval.node.audit.search(action="read")[0] if "NOBODY" in row.detail]
    assert refused and all(row.outcome == "failure" for row in refused)


def test_a_cmove_whose_destination_is_down_is_audited_as_failed(retrieval: Retrieval,
                                                                dcmtk: dict[str, str]) -> None:
    """The audit says what went out, not what was meant to: no association with the destination, no "success"."""
    retrieval.destination.stop()
    result = run_tool("movescu", "-S", "-aem", retrieval.destination.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={retrieval.study}", *peer_args(retrieval.node), env=dcmtk)
    assert result.returncode != 0
    retrieval.node.audit.flush()
    reads = retrieval.node.audit.search(action="read", study=retrieval.study)[0]
    assert [(row.outcome, json.loads(row.detail)["sent"]) for row in reads] == [("failure", 0)]


def test_a_completed_cmove_is_audited_once_the_instances_went_out(retrieval: Retrieval,
                                                                  dcmtk: dict[str, str]) -> None:
    result = run_tool("movescu", "-S", "-aem", retrieval.destination.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={retrieval.study}", *peer_args(retrieval.node), env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    retrieval.node.audit.flush()
    reads = retrieval.node.audit.search(action="read", study=retrieval.study)[0]
    assert [(row.outcome, json.loads(row.detail)["sent"]) for row in reads] == [("success", 5)]


def test_cmove_to_configured_peer_delivers_every_instance_of_the_study(retrieval: Retrieval,
                                                                       dcmtk: dict[str, str]) -> None:
    result = run_tool("movescu", "-d", "-S", "-aem", retrieval.destination.ae_title,
                      "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={retrieval.study}",
                      *peer_args(retrieval.node), env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dimse_statuses(result.stdout + result.stderr)[-1] == 0x0000
    received = retrieval.destination.received()
    assert sorted(received) == sorted(retrieval.study_instances)  # the other study stays where it is
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(retrieval.sent[uid])


def test_cmove_at_series_and_image_level(retrieval: Retrieval, dcmtk: dict[str, str]) -> None:
    first = retrieval.study_instances[0]
    result = run_tool("movescu", "-S", "-aem", retrieval.destination.ae_title,
                      "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={retrieval.study}",
                      "-k", f"SOPInstanceUID={first}", *peer_args(retrieval.node), env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(retrieval.destination.received()) == [first]


def test_cget_delivers_the_study_to_getscu(retrieval: Retrieval, dcmtk: dict[str, str]) -> None:
    folder = retrieval.work / "got"
    folder.mkdir()
    result = run_tool("getscu", "-d", "-S", "+B", "-od", folder, "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={retrieval.study}", *peer_args(retrieval.node), env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dimse_statuses(result.stdout + result.stderr)[-1] == 0x0000
    received = received_files(folder)
    assert sorted(received) == sorted(retrieval.study_instances)
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(retrieval.sent[uid])


def test_cget_of_nothing_matching_delivers_nothing(retrieval: Retrieval, dcmtk: dict[str, str]) -> None:
    folder = retrieval.work / "got-nothing"
    folder.mkdir()
    result = run_tool("getscu", "-d", "-S", "-od", folder, "-k", "QueryRetrieveLevel=STUDY",
                      "-k", "StudyInstanceUID=1.2.3.4.5.6.7.8.9", *peer_args(retrieval.node), env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dimse_statuses(result.stdout + result.stderr)[-1] == 0x0000
    assert received_files(folder) == {}


def test_cget_without_the_unique_key_of_its_level_fails_with_a900(retrieval: Retrieval) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    association = ae.associate(LOCALHOST, retrieval.node.dicom_port, ae_title=MOSAIC_AE)
    assert association.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.AccessionNumber = "MOVE"  # not the unique key of the STUDY level
    try:
        statuses = [int(status.Status) for status, _ in association.send_c_get(
            query, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        association.release()
    assert statuses == [0xA900]


def test_cmove_without_the_unique_key_of_its_level_fails(retrieval: Retrieval,
                                                         dcmtk: dict[str, str]) -> None:
    result = run_tool("movescu", "-d", "-S", "-aem", retrieval.destination.ae_title,
                      "-k", "QueryRetrieveLevel=STUDY", "-k", "AccessionNumber=MOVE",
                      *peer_args(retrieval.node), env=dcmtk)
    assert result.returncode != 0
    status = dimse_statuses(result.stdout + result.stderr)[-1]
    assert status & 0xF000 == 0xC000, hex(status)  # a failure, not "success, nothing moved"
    assert received_files(retrieval.destination.folder) == {}


def test_cmove_of_a_patient_keeps_to_the_issuer_of_its_patient_id(tmp_path: Path,
                                                                  dcmtk: dict[str, str]) -> None:
    destination = StoreSCP(tmp_path / "moved", dcmtk, ae_title="DESTINATION").start()
    node = start_node(tmp_path / "mosaic", peers=[destination.peer()])
    try:
        files = {}
        for issuer in ("HOSP-A", "HOSP-B"):
            dataset = make_instance(patient_id="SAME", issuer=issuer, patient_name=f"Patient^{issuer}")
            files[issuer] = tmp_path / f"{issuer}.dcm"
            dataset.save_as(files[issuer], enforce_file_format=True)
        assert run_tool("storescu", *peer_args(node), *files.values(), env=dcmtk).returncode == 0
        result = run_tool("movescu", "-P", "-aem", destination.ae_title, "-k", "QueryRetrieveLevel=PATIENT",
                          "-k", "PatientID=SAME", "-k", "IssuerOfPatientID=HOSP-A", *peer_args(node),
                          env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
        [moved] = destination.received().values()
        assert dataset_bytes(moved) == dataset_bytes(files["HOSP-A"])
    finally:
        node.stop()
        destination.stop()
