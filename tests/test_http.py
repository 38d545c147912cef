"""Operations over HTTP: health, Prometheus metrics and the change feed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from mosaic.index.query import Scope
from tests.auth_support import auth_headers
from tests.factory import make_bytes


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0)))
    mosaic.start()
    yield mosaic
    mosaic.stop()


def url(node: Mosaic, path: str) -> str:
    return f"http://127.0.0.1:{node.http_port}{path}"


def test_healthz_reports_index_and_storage(node: Mosaic) -> None:
    response = httpx.get(url(node, "/healthz"))
    assert response.status_code == 200
    assert response.json()["checks"] == {"index": "ok", "storage": "ok"}


def test_metrics_expose_ingest_and_query_histograms(node: Mosaic) -> None:
    node.ingest.store(make_bytes(), door="test")
    from pydicom.dataset import Dataset

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    list(node.query.c_find(identifier, root="STUDY", scope=Scope.everything()))
    text = httpx.get(url(node, "/metrics"), headers=auth_headers(node)).text
    assert 'mosaic_ingest_seconds_bucket{door="test",le="0.1"}' in text
    assert 'mosaic_ingest_total{door="test",outcome="stored"}' in text
    assert 'mosaic_query_seconds_count{door="dimse",level="STUDY"}' in text


def test_change_feed_pages_through_events_in_order(node: Mosaic) -> None:
    for number in range(3):
        node.ingest.store(make_bytes(patient_id=f"FEED{number}"), door="test")
    seen: list[int] = []
    since = 0
    while True:
        page = httpx.get(url(node, "/api/changes"), params={"since": since, "limit": 5},
                         headers=auth_headers(node)).json()
        seen.extend(change["seq"] for change in page["changes"])
        since = page["last"]
        if page["done"]:
            break
    assert len(seen) == 12  # per new patient: PatientCreated, StudyCreated, SeriesCreated, InstanceStored
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    first = httpx.get(url(node, "/api/changes"), params={"limit": 4}, headers=auth_headers(node)).json()
    types = [change["type"] for change in first["changes"]]
    assert types == ["PatientCreated", "StudyCreated", "SeriesCreated", "InstanceStored"]


def test_change_feed_rejects_bad_parameters(node: Mosaic) -> None:
    headers = auth_headers(node)
    assert httpx.get(url(node, "/api/changes"), params={"since": -1}, headers=headers).status_code == 422
    assert httpx.get(url(node, "/api/changes"), params={"limit": "many"}, headers=headers).status_code == 422


def test_landing_page_lists_recent_studies_with_viewer_links(node: Mosaic) -> None:
    empty = httpx.get(url(node, "/"), headers=auth_headers(node))
    assert empty.status_code == 200 and "No studies yet" in empty.text
    node.ingest.store(make_bytes(patient_name="Doe^Jane<script>", study_uid="1.2.826.0.1.3680043.10.1234.404"),
                      door="test")
    page = httpx.get(url(node, "/"), headers=auth_headers(node)).text
    assert "/viewer/viewer?StudyInstanceUIDs=1.2.826.0.1.3680043.10.1234.404" in page
    assert "Doe Jane&lt;script&gt;" in page  # names are escaped


def test_cors_is_off_by_default_and_configurable(tmp_path: Path) -> None:
    http = HttpSettings(port=0, cors_origins=["https://viewer.example.org"])
    mosaic = Mosaic(Settings(data_dir=tmp_path / "cors", http=http, dicom=DicomSettings(port=0)))
    mosaic.start()
    try:
        preflight = httpx.options(url(mosaic, "/dicom-web/studies"), headers={
            "Origin": "https://viewer.example.org", "Access-Control-Request-Method": "GET"})
        assert preflight.headers["access-control-allow-origin"] == "https://viewer.example.org"
        answer = httpx.get(url(mosaic, "/dicom-web/studies"),
                           headers={"Origin": "https://viewer.example.org", **auth_headers(mosaic)})
        assert answer.status_code == 200
        assert "X-Total-Count" in answer.headers["access-control-expose-headers"]
        other = httpx.get(url(mosaic, "/dicom-web/studies"),
                          headers={"Origin": "https://evil.example.org", **auth_headers(mosaic)})
        assert "access-control-allow-origin" not in other.headers
    finally:
        mosaic.stop()


def test_no_cors_headers_without_configuration(node: Mosaic) -> None:
    answer = httpx.get(url(node, "/dicom-web/studies"),
                       headers={"Origin": "https://viewer.example.org", **auth_headers(node)})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_healthz_reports_storage_not_ok_below_the_free_space_floor(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0))
    settings.storage.min_free_bytes = 2**62
    mosaic = Mosaic(settings)
    mosaic.start()
    try:
        response = httpx.get(url(mosaic, "/healthz"))
        assert response.status_code == 503
        assert response.json()["checks"]["storage"].startswith("error: only ")
        assert response.json()["checks"]["index"] == "ok"
    finally:
        mosaic.stop()
