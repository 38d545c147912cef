"""Reads of patient data take the caller's scope, and every door sends instances out through one egress path.

The access policy lives inside the services, not in how a route happens to name its path parameters: a query
without a scope is refused, a study outside the scope reads exactly like one that is not there, and what goes
out over WADO-RS, WADO-URI and C-GET passes :meth:`RetrieveService.egress` (where header coercion will apply:
current demographics, per-destination tag morphing) while the stored file stays byte for byte as it came.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from mosaic.app import Mosaic
from mosaic.config import DicomPeer, DicomSettings, HttpSettings, Settings
from mosaic.index.query import Query, Scope
from mosaic.services.egress import EgressContext, HeaderChange
from mosaic.services.ingest import IngestOrigin
from mosaic.services.metadata import MetadataService
from mosaic.services.retrieve import StoredInstance
from tests.auth_support import auth_headers
from tests.dimse_support import c_get_study
from tests.factory import make_bytes

NORTH = "1.2.826.0.1.3680043.10.1234.71"
SOUTH = "1.2.826.0.1.3680043.10.1234.72"
LOCALHOST = "127.0.0.1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    settings = Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(
        port=0, peers=[DicomPeer(ae_title="GETTER", host=LOCALHOST, port=11112)]))
    mosaic = Mosaic(settings)
    for study, facility in ((NORTH, "north"), (SOUTH, "south")):
        mosaic.ingest.store(make_bytes(study_uid=study, series_uid=f"{study}.1", sop_uid=f"{study}.1.1",
                                       patient_id=f"P-{facility}", patient_name="Doe^Jane"),
                            IngestOrigin(door="test", facility=facility))
    yield mosaic
    mosaic.stop()


NORTH_ONLY = Scope(facilities=frozenset({"north"}))


def test_a_query_without_a_scope_is_refused_not_answered_with_everything(node: Mosaic) -> None:
    query = Query("STUDY", [])
    with pytest.raises(ValueError, match="scope"):
        from mosaic.index.query import QueryEngine

        with node.database.session() as session:
            QueryEngine(session).find(query)
    everything = node.query.find(Query("STUDY", []), door="test", scope=Scope.everything())
    north = node.query.find(Query("STUDY", []), door="test", scope=NORTH_ONLY)
    assert {match.rows["STUDY"].StudyInstanceUID for match in everything} == {NORTH, SOUTH}
    assert [match.rows["STUDY"].StudyInstanceUID for match in north] == [NORTH]
    assert node.query.count(Query("STUDY", []), scope=NORTH_ONLY) == 1


def test_a_study_outside_the_scope_reads_like_one_that_is_not_there(node: Mosaic) -> None:
    retrieve = node.retrieve
    assert [item.SOPInstanceUID for item in retrieve.instances_in(NORTH, scope=NORTH_ONLY)] == [f"{NORTH}.1.1"]
    assert retrieve.instances_in(SOUTH, scope=NORTH_ONLY) == []
    assert retrieve.representative(SOUTH, scope=NORTH_ONLY) is None
    assert retrieve.instances_by_uid([f"{SOUTH}.1.1"], scope=NORTH_ONLY) == {}
    unknown = "1.2.826.0.1.3680043.10.1234.79"
    assert retrieve.missing_uid(SOUTH, scope=NORTH_ONLY) == retrieve.missing_uid(unknown, scope=NORTH_ONLY) \
        .replace(unknown, SOUTH)
    metadata = MetadataService(node.database)
    assert metadata.versions(SOUTH, scope=NORTH_ONLY) == [] and metadata.metadata(SOUTH, scope=NORTH_ONLY) == []
    assert [row.SOPInstanceUID for row in metadata.metadata(SOUTH, scope=Scope.everything())] == [f"{SOUTH}.1.1"]


def _stored(node: Mosaic, study: str) -> StoredInstance:
    [instance] = node.retrieve.instances_in(study, scope=Scope.everything())
    return instance


def _blob_sha256(node: Mosaic, instance: StoredInstance) -> str:
    with node.blobs.open(instance.blob_key) as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def test_egress_sends_the_stored_file_unless_a_coercion_applies(node: Mosaic) -> None:
    instance = _stored(node, NORTH)
    context = EgressContext("test", "somewhere", "tester")
    local = node.blobs.local_files()
    assert local is not None
    with node.retrieve.egress(instance, context) as path:
        assert path == local.local_path(instance.blob_key)  # as stored: the blob itself, no copy
    assert node.retrieve.sends_as_stored(instance, context)

    seen: list[EgressContext] = []

    def rename(instance: StoredInstance, context: EgressContext) -> HeaderChange | None:
        seen.append(context)

        def change(dataset: Dataset) -> None:
            dataset.PatientName = "Current^Name"
        return change

    node.retrieve.coercion = rename
    with node.retrieve.egress(instance, context) as path:
        coerced = pydicom.dcmread(path)
        temporary = path
    assert str(coerced.PatientName) == "Current^Name" and coerced.SOPInstanceUID == f"{NORTH}.1.1"
    assert not temporary.exists()  # the coerced copy lives only as long as the answer
    assert seen == [context] and not node.retrieve.sends_as_stored(instance, context)
    assert _blob_sha256(node, instance) == instance.sha256  # the original is untouched


def test_wado_and_c_get_go_out_through_egress_and_the_original_stays(node: Mosaic) -> None:
    """Both doors call the one hook, with who receives it; neither reads the blob on its own."""
    receivers: list[tuple[str, str]] = []

    def rename(instance: StoredInstance, context: EgressContext) -> HeaderChange | None:
        receivers.append((context.door, context.destination))

        def change(dataset: Dataset) -> None:
            dataset.PatientName = "Current^Name"
        return change

    node.retrieve.coercion = rename
    node.start()
    instance = _stored(node, NORTH)
    base = f"http://{LOCALHOST}:{node.http_port}/dicom-web"
    url = f"{base}/studies/{NORTH}/series/{NORTH}.1/instances/{NORTH}.1.1"
    answer = httpx.get(url, headers={**auth_headers(node), "Accept": "application/dicom; transfer-syntax=*"},
                       timeout=30)
    assert answer.status_code == 200, answer.text
    assert str(pydicom.dcmread(io.BytesIO(answer.content)).PatientName) == "Current^Name"
    uri = httpx.get(f"http://{LOCALHOST}:{node.http_port}/wado", timeout=30, headers=auth_headers(node), params={
        "requestType": "WADO", "studyUID": NORTH, "seriesUID": f"{NORTH}.1", "objectUID": f"{NORTH}.1.1",
        "contentType": "application/dicom"})
    assert uri.status_code == 200, uri.text
    assert str(pydicom.dcmread(io.BytesIO(uri.content)).PatientName) == "Current^Name"

    received, statuses = c_get_study(node, NORTH, calling_ae="GETTER")
    assert statuses[-1] == 0x0000 and [str(item.PatientName) for item in received] == ["Current^Name"]
    # asked when the answer is planned and when it is sent: each door, with who receives what it sends
    assert list(dict.fromkeys(receivers)) == [("dicomweb", LOCALHOST), ("dimse", "GETTER")]
    assert _blob_sha256(node, instance) == instance.sha256
