"""Who may associate and do what: ``dicom.allow_unknown_calling_aes`` and the ``may_*`` flags of peers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from mosaic.app import Mosaic
from mosaic.config import DicomPeer, DicomSettings, HttpSettings, Settings
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
from tests.factory import make_instance, to_bytes

pytestmark = pytest.mark.dcmtk

NOT_AUTHORISED = 0x0124


def peer(ae_title: str, **flags: bool) -> DicomPeer:
    return DicomPeer(ae_title=ae_title, host=LOCALHOST, port=104, **flags)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, dcmtk: dict[str, str]) -> Iterator[Mosaic]:
    """Only listed peers may associate; one may do everything, the others miss one permission each."""
    work = tmp_path_factory.mktemp("permissions")
    mosaic = start_node(work / "mosaic", allow_unknown_calling_aes=False, peers=[
        peer("TRUSTED"), peer("NOSTORE", may_store=False), peer("NOFIND", may_find=False),
        peer("NOGET", may_get=False)])
    stored = work / "stored.dcm"
    stored.write_bytes(to_bytes(make_instance(patient_id="PERMITTED", accession="PERM-1")))
    result = run_tool("storescu", *peer_args(mosaic, "TRUSTED"), stored, env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    yield mosaic
    mosaic.stop()


def output(result: object) -> str:
    return str(getattr(result, "stdout", "")) + str(getattr(result, "stderr", ""))


@pytest.mark.parametrize("tool", ["echoscu", "storescu", "findscu"])
def test_unknown_calling_ae_cannot_associate(node: Mosaic, tmp_path: Path, dcmtk: dict[str, str],
                                             tool: str) -> None:
    stranger = peer_args(node, "STRANGER")
    if tool == "echoscu":
        args: list[str | Path] = [*stranger]
    elif tool == "storescu":
        path = tmp_path / "intruder.dcm"
        path.write_bytes(to_bytes(make_instance(patient_id="INTRUDER")))
        args = [*stranger, path]
    else:
        args = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID", *stranger]
    before = counts(node)
    result = run_tool(tool, *args, env=dcmtk)
    assert result.returncode != 0
    assert re.search(r"Association Rejected", output(result)), output(result)
    assert re.search(r"Calling AE Title Not Recognized", output(result), re.IGNORECASE), output(result)
    assert counts(node) == before


def test_unknown_calling_ae_is_rejected_by_pynetdicom_too(node: Mosaic) -> None:
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
    assert association.is_rejected
    assert not association.is_established


def test_unknown_calling_aes_are_refused_by_default(tmp_path: Path, dcmtk: dict[str, str]) -> None:
    assert DicomSettings().allow_unknown_calling_aes is False  # type: ignore[call-arg]
    default = Mosaic(Settings(data_dir=tmp_path / "default", http=HttpSettings(port=0),  # type: ignore[call-arg]
                              dicom=DicomSettings(ae_title=MOSAIC_AE, port=0)))  # type: ignore[call-arg]
    default.start()
    try:
        result = run_tool("echoscu", *peer_args(default, "STRANGER"), env=dcmtk)
    finally:
        default.stop()
    assert result.returncode != 0
    assert re.search(r"Calling AE Title Not Recognized", output(result), re.IGNORECASE), output(result)


def test_known_peer_can_associate(node: Mosaic, dcmtk: dict[str, str]) -> None:
    result = run_tool("echoscu", *peer_args(node, "TRUSTED"), env=dcmtk)
    assert result.returncode == 0, output(result)


def test_peer_without_may_store_gets_refused_on_cstore(node: Mosaic, tmp_path: Path,
                                                       dcmtk: dict[str, str]) -> None:
    path = tmp_path / "refused.dcm"
    path.write_bytes(to_bytes(make_instance(patient_id="NOT-STORED")))
    before, blobs = counts(node), blob_files(node)
    result = run_tool("storescu", "-d", *peer_args(node, "NOSTORE"), path, env=dcmtk)
    assert re.search(r"DIMSE Status\s*:\s*0x0124", output(result)), output(result)
    assert result.returncode != 0
    assert counts(node) == before
    assert blob_files(node) == blobs
    query = identifier(QueryRetrieveLevel="STUDY", PatientID="NOT-STORED")
    statuses, responses = pynetdicom_find(node, query, calling_ae="TRUSTED")
    assert (statuses, responses) == ([0x0000], [])


def test_peer_without_may_find_gets_a_failure_on_cfind(node: Mosaic, dcmtk: dict[str, str]) -> None:
    query = identifier(QueryRetrieveLevel="STUDY", PatientID="PERMITTED", AccessionNumber="")
    statuses, responses = pynetdicom_find(node, query, calling_ae="NOFIND")
    assert (statuses, responses) == ([NOT_AUTHORISED], [])
    result = run_tool("findscu", "-d", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PERMITTED",
                      *peer_args(node, "NOFIND"), env=dcmtk)
    assert re.search(r"DIMSE Status\s*:\s*0x0124", output(result)), output(result)
    # the same query from a peer that may find
    statuses, responses = pynetdicom_find(node, query, calling_ae="TRUSTED")
    assert statuses == [0xFF00, 0x0000] and responses[0].AccessionNumber == "PERM-1"


def test_peer_without_may_get_gets_a_failure_on_cget(node: Mosaic) -> None:
    ae = AE(ae_title="NOGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
    assert association.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "PERMITTED"
    try:
        statuses = [int(status.Status) for status, _ in association.send_c_get(
            query, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        association.release()
    assert statuses == [NOT_AUTHORISED]


@pytest.mark.parametrize("configured", [False, True])
def test_pynetdicom_listener_rejects_callers_with_no_rights_before_any_service(tmp_path: Path,
                                                                               configured: bool) -> None:
    """Associations that go to pynetdicom (here: Verification with C-MOVE proposed) get the same association check
    as the streaming path, with or without peers configured: no C-ECHO answer for an unknown AE, one audit
    record of the refusal."""
    peers = [DicomPeer(ae_title="TRUSTED", host=LOCALHOST, port=1)] if configured else []  # type: ignore[call-arg]
    node = Mosaic(Settings(data_dir=tmp_path / "mosaic", http=HttpSettings(port=0),  # type: ignore[call-arg]
                           dicom=DicomSettings(ae_title=MOSAIC_AE, port=0, peers=peers)))  # type: ignore[call-arg]
    node.start(http=False)
    try:
        ae = AE(ae_title="STRANGER")
        ae.add_requested_context(Verification)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE)
        assert association.is_rejected and not association.is_established
        node.audit.flush()
        refusals = [row for row in node.audit.search(action="login")[0] if row.actor == "STRANGER"]
    finally:
        node.stop()
    assert [row.outcome for row in refusals] == ["denied"]
