"""Several DICOM worker processes on one port: one archive, exact counts, metrics from every process."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from mosaic.app import Mosaic
from mosaic.config import Settings
from mosaic.index.query import Scope
from tests.auth_support import admin_token
from tests.factory import make_instance
from tests.helpers import free_port, is_listening, wait_until


def test_two_dicom_workers_share_the_port_and_the_archive(tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    first = Mosaic(Settings(data_dir=tmp_path / "data"))
    first.identity.ensure_administrator()  # what the first start does: the `admin` account
    token = admin_token(first)  # for /metrics
    first.stop()
    # the senders are not configured peers: this test is about the workers, not about who may store
    env = {**os.environ, "MOSAIC_DICOM__ALLOW_UNKNOWN_CALLING_AES": "true"}
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mosaic"), "serve", "--data-dir", str(tmp_path / "data"),
             "--dicom-port", str(dicom_port), "--http-port", str(http_port), "--dicom-workers", "2"],
            stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: is_listening("127.0.0.1", http_port), timeout=60, what="mosaic serve", process=server,
                   log=log)
        study_uid = "1.2.826.0.1.3680043.10.1234.700"

        def send(batch: int) -> list[int]:
            ae = AE(ae_title=f"SENDER{batch}")
            ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
            association = ae.associate("127.0.0.1", dicom_port, ae_title="MOSAIC")
            assert association.is_established
            statuses = [int(association.send_c_store(make_instance(
                study_uid=study_uid, series_uid=f"{study_uid}.{batch}", instance_number=number)).Status)
                for number in range(5)]
            association.release()
            return statuses

        # 16 associations: the kernel hashes each connection to a process, all on one would be a 1-in-32,768 fluke
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(send, range(16)))
        assert all(status == 0 for statuses in results for status in statuses)
        metrics = httpx.get(f"http://127.0.0.1:{http_port}/metrics", headers={"Authorization": f"Bearer {token}"}).text
        assert 'mosaic_ingest_total{door="dimse",outcome="stored"} 80.0' in metrics  # summed over processes
        writers = {path.name.rsplit("_", 1)[-1] for path in (tmp_path / "data" / ".metrics").glob("counter_*.db")}
        assert len(writers) >= 2, "connections were spread over more than one process"
    finally:
        server.terminate()
        server.wait(30)
    node = Mosaic(Settings(data_dir=tmp_path / "data"))
    try:
        from pydicom.dataset import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        query.NumberOfStudyRelatedInstances = ""
        query.NumberOfStudyRelatedSeries = ""
        [study] = list(node.query.c_find(query, root="STUDY", scope=Scope.everything()))
        assert (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances) == (16, 80)
    finally:
        node.stop()
