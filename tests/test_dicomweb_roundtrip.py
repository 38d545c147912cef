"""Round trips through a running Mosaic node with real clients: dicomweb-client (STOW-RS, QIDO-RS, WADO-RS) on
every readable storage object bundled with pydicom, and DIMSE ↔ DICOMweb with dcmtk (storescu in, WADO out;
STOW in, findscu and movescu out). What comes back must be the bytes that went in.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.misc import is_dicom
from pydicom.uid import generate_uid

from mosaic.app import Mosaic
from tests.auth_support import auth_headers
from tests.dimse_support import (
    StoreSCP,
    dataset_bytes,
    findscu,
    peer_args,
    run_tool,
    start_node,
)
from tests.factory import PREFIX, make_instance
from tests.test_dicomweb_wado import ANY_DICOM, multipart_parts


def body_after_meta(data: bytes) -> bytes:
    """The data set bytes of a Part 10 file, after its preamble and File Meta Information."""
    stream = io.BytesIO(data)
    read_preamble(stream, True)  # dcmwrite without enforce_file_format writes no preamble
    _read_file_meta_info(stream)
    return stream.read()


def encoded_like_dicomweb_client(dataset: Dataset) -> bytes:
    """What ``DICOMwebClient.store_instances`` puts on the wire for ``dataset`` (it re-encodes with dcmwrite)."""
    with io.BytesIO() as buffer:
        pydicom.dcmwrite(buffer, dataset)
        return buffer.getvalue()


def client_for(node: Mosaic) -> DICOMwebClient:
    # dicomweb-client sends a Host header without the port: Mosaic's base_url() compensates
    return DICOMwebClient(url=f"http://127.0.0.1:{node.http_port}/dicom-web", permissive_uid=True,
                          headers=auth_headers(node))


def raw_instance(node: Mosaic, study: str, series: str, sop: str) -> bytes:
    """The one Part 10 file of a WADO-RS instance retrieval asking for the stored transfer syntax."""
    response = requests.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{study}/series/{series}"
                            f"/instances/{sop}", headers={"Accept": ANY_DICOM, **auth_headers(node)}, timeout=30)
    assert response.status_code == 200, response.text
    [(_, body)] = multipart_parts(response)  # type: ignore[arg-type]
    return body


# --- pydicom's bundled files through STOW-RS, QIDO-RS and WADO-RS ----------------------------------------


@dataclass
class Sent:
    name: str
    dataset: Dataset
    encoded: bytes

    @property
    def uids(self) -> tuple[str, str, str]:
        return (str(self.dataset.StudyInstanceUID), str(self.dataset.SeriesInstanceUID),
                str(self.dataset.SOPInstanceUID))


@dataclass
class StowedCorpus:
    node: Mosaic
    stored: list[Sent] = field(default_factory=list)
    refused: list[Sent] = field(default_factory=list)
    """Objects without a Study or Series Instance UID, which STOW-RS must refuse."""
    skipped: dict[str, str] = field(default_factory=dict)
    """File name → why it is not sent."""


@pytest.fixture(scope="module")
def stowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StowedCorpus]:
    node = start_node(tmp_path_factory.mktemp("roundtrip") / "mosaic")
    corpus = StowedCorpus(node)
    client = client_for(node)
    seen: dict[str, str] = {}
    try:
        for name in sorted(get_testdata_files()):
            path = Path(name)
            if not path.is_file():
                continue
            label = path.name
            if not is_dicom(path):
                corpus.skipped[label] = "not a Part 10 file (no DICM prefix)"
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    dataset = pydicom.dcmread(path)
                    encoded = encoded_like_dicomweb_client(dataset)
            except Exception as exc:
                corpus.skipped[label] = f"pydicom cannot read or encode it ({type(exc).__name__})"
                continue
            if "SOPClassUID" not in dataset or "SOPInstanceUID" not in dataset:
                corpus.skipped[label] = "no SOP Class UID / SOP Instance UID: not a storage object"
                continue
            item = Sent(label, dataset, encoded)
            uid = str(dataset.SOPInstanceUID)
            if not dataset.get("StudyInstanceUID") or not dataset.get("SeriesInstanceUID"):
                corpus.refused.append(item)
                continue
            if uid in seen:
                corpus.skipped[label] = f"same SOP Instance UID as {seen[uid]} (one object per UID)"
                continue
            seen[uid] = label
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                client.store_instances([dataset])
            corpus.stored.append(item)
        yield corpus
    finally:
        node.stop()


def test_stow_takes_every_storage_object_and_refuses_the_unfileable(stowed: StowedCorpus) -> None:
    assert len(stowed.stored) >= 100, f"only {len(stowed.stored)} bundled objects stored"
    assert all(stowed.skipped.values())
    client = client_for(stowed.node)
    for item in stowed.refused:
        with pytest.raises(requests.HTTPError) as raised, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client.store_instances([item.dataset])
        assert raised.value.response.status_code == 409, item.name


def test_qido_finds_every_stowed_instance(stowed: StowedCorpus) -> None:
    client = client_for(stowed.node)
    for item in stowed.stored:
        study, series, sop = item.uids
        found = client.search_for_instances(study_instance_uid=study, search_filters={"SOPInstanceUID": sop})
        assert [result["00080018"]["Value"][0] for result in found] == [sop], item.name
        assert found[0]["0020000E"]["Value"][0] == series


def test_wado_returns_the_stowed_bytes(stowed: StowedCorpus) -> None:
    client = client_for(stowed.node)
    for item in stowed.stored:
        study, series, sop = item.uids
        raw = raw_instance(stowed.node, study, series, sop)
        assert raw == item.encoded, f"{item.name}: the retrieved file differs from the one stored"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            retrieved = client.retrieve_instance(study, series, sop)  # asks for transfer-syntax=*
        assert retrieved.SOPInstanceUID == sop
        assert retrieved.file_meta.TransferSyntaxUID == item.dataset.file_meta.TransferSyntaxUID, item.name
        assert body_after_meta(encoded_like_dicomweb_client(retrieved)) == body_after_meta(item.encoded), item.name


# --- DIMSE and DICOMweb together (dcmtk) -----------------------------------------------------------------


@dataclass
class Bridge:
    node: Mosaic
    destination: StoreSCP
    work: Path


@pytest.fixture
def bridge(tmp_path: Path, dcmtk: dict[str, str]) -> Iterator[Bridge]:
    destination = StoreSCP(tmp_path / "moved", dcmtk, ae_title="DESTINATION").start()
    node = start_node(tmp_path / "mosaic", peers=[destination.peer()])
    try:
        yield Bridge(node, destination, tmp_path)
    finally:
        node.stop()
        destination.stop()


@pytest.mark.dcmtk
def test_cstore_in_qido_and_wado_out(bridge: Bridge, dcmtk: dict[str, str]) -> None:
    study, series = generate_uid(prefix=PREFIX), generate_uid(prefix=PREFIX)
    sent: dict[str, Path] = {}
    for number in range(1, 4):
        dataset = make_instance(study_uid=study, series_uid=series, instance_number=number, patient_id="BRIDGE-1")
        path = bridge.work / f"in{number}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        sent[str(dataset.SOPInstanceUID)] = path
    result = run_tool("storescu", *peer_args(bridge.node), *sent.values(), env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    found = client_for(bridge.node).search_for_instances(study_instance_uid=study)
    assert sorted(item["00080018"]["Value"][0] for item in found) == sorted(sent)
    for sop, path in sent.items():
        assert body_after_meta(raw_instance(bridge.node, study, series, sop)) == dataset_bytes(path)


@pytest.mark.dcmtk
def test_stow_in_findscu_and_movescu_out(bridge: Bridge, dcmtk: dict[str, str]) -> None:
    study, series = generate_uid(prefix=PREFIX), generate_uid(prefix=PREFIX)
    datasets = [make_instance(study_uid=study, series_uid=series, instance_number=number, patient_id="BRIDGE-2")
                for number in (1, 2)]
    client_for(bridge.node).store_instances(datasets)
    sent = {str(dataset.SOPInstanceUID): encoded_like_dicomweb_client(dataset) for dataset in datasets}
    responses = findscu(bridge.node, {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": study,
                                      "SeriesInstanceUID": series, "SOPInstanceUID": ""},
                        bridge.work / "find", env=dcmtk)
    assert sorted(str(response.SOPInstanceUID) for response in responses) == sorted(sent)
    result = run_tool("movescu", "-S", "-aem", bridge.destination.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={study}", *peer_args(bridge.node), env=dcmtk)
    assert result.returncode == 0, result.stdout + result.stderr
    received = bridge.destination.received()
    assert sorted(received) == sorted(sent)
    for sop, path in received.items():
        assert dataset_bytes(path) == body_after_meta(sent[sop])
