"""WADO-RS metadata: straight from the index, cached by ETag, never stale after a new instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from tests.auth_support import auth_headers
from tests.factory import make_bytes

STUDY = "1.2.826.0.1.3680043.10.1234.31"
SERIES = f"{STUDY}.1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0)))
    for number in (1, 2, 3):
        mosaic.ingest.store(make_bytes(study_uid=STUDY, series_uid=SERIES, sop_uid=f"{SERIES}.{number}",
                                       instance_number=number), door="test")
    mosaic.start()
    yield mosaic
    mosaic.stop()


def test_series_metadata_is_cached_by_etag_and_follows_new_instances(node: Mosaic) -> None:
    url = f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{STUDY}/series/{SERIES}/metadata"
    client = httpx.Client(headers=auth_headers(node))
    first = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert first.status_code == 200 and first.headers["content-encoding"] == "gzip"
    instances = first.json()
    assert [item["00080018"]["Value"][0] for item in instances] == [f"{SERIES}.{n}" for n in (1, 2, 3)]
    pixel_uri = instances[0]["7FE00010"]["BulkDataURI"]
    assert pixel_uri == (f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{STUDY}/series/{SERIES}"
                         f"/instances/{SERIES}.1/bulkdata/7FE00010")
    etag = first.headers["etag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    again = client.get(url, headers={"Accept-Encoding": "identity"})  # the same content, uncompressed
    assert again.headers.get("content-encoding") is None and again.json() == instances

    node.ingest.store(make_bytes(study_uid=STUDY, series_uid=SERIES, sop_uid=f"{SERIES}.4", instance_number=4),
                      door="test")
    after = client.get(url, headers={"If-None-Match": etag, "Accept-Encoding": "gzip"})
    assert after.status_code == 200 and after.headers["etag"] != etag
    assert len(after.json()) == 4


def test_metadata_of_unknown_uids_is_404_naming_them(node: Mosaic) -> None:
    url = f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{STUDY}/series/1.2.3.4/metadata"
    answer = httpx.get(url, headers=auth_headers(node))
    assert answer.status_code == 404 and "1.2.3.4" in answer.json()["error"]
