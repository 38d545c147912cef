"""Crash safety: kill -9 the server in the middle of ingest, restart, and check nothing is lost or half-stored."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from mosaic.app import Mosaic
from mosaic.config import Settings
from mosaic.services.verify import VerifyService
from tests.factory import make_instance
from tests.helpers import free_port, is_listening, wait_until


def nodelay(event: Any) -> None:
    """Like dcmtk with TCP_NODELAY=1: no delayed-ACK stall after each C-STORE (FIELD-NOTES)."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def start_server(data_dir: Path, dicom_port: int, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    """``mosaic serve`` in its own process (``settings``: more MOSAIC_* variables)."""
    command = [str(Path(sys.executable).parent / "mosaic"), "serve", "--data-dir", str(data_dir),
               "--dicom-port", str(dicom_port), "--http-port", str(free_port())]
    # CRASHTEST is not a configured peer: this test is about crash safety, not about who may store
    env = {**os.environ, "MOSAIC_DICOM__ALLOW_UNKNOWN_CALLING_AES": "true", **settings}
    with open(log, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    wait_until(lambda: is_listening("127.0.0.1", dicom_port), timeout=60, what="mosaic serve", process=process,
               log=log)
    return process


def test_kill_during_ingest_loses_no_acknowledged_object_and_leaves_none_half_stored(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    server = start_server(data_dir, port, tmp_path / "serve.log")
    study_uid = "1.2.826.0.1.3680043.10.1234.900"
    datasets = [make_instance(study_uid=study_uid, series_uid=f"{study_uid}.1", instance_number=number,
                              rows=256, columns=256) for number in range(1, 401)]
    acknowledged: list[str] = []
    finished = threading.Event()

    def send() -> None:
        ae = AE(ae_title="CRASHTEST")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120  # deadlines for hangs on a loaded machine
        ae.dimse_timeout = ae.network_timeout = 5  # the killed server never answers the C-STORE in flight
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        association = ae.associate("127.0.0.1", port, ae_title="MOSAIC", evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        try:
            for dataset in datasets:
                if not association.is_established:
                    break
                status = association.send_c_store(dataset)
                if status and status.get("Status") == 0x0000:
                    acknowledged.append(str(dataset.SOPInstanceUID))
        finally:
            if association.is_established:
                association.release()
            finished.set()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    wait_until(lambda: len(acknowledged) >= 50 or finished.is_set(), timeout=120, what="first 50 C-STOREs")
    os.kill(server.pid, signal.SIGKILL)
    server.wait(30)
    sender.join(60)
    assert 50 <= len(acknowledged) < len(datasets), (
        f"the kill must land in the middle of the ingest: {len(acknowledged)} of {len(datasets)} acknowledged")

    # restart on the same data: every acknowledged object is there, every indexed object has its bytes
    node = Mosaic(Settings(data_dir=data_dir))
    try:
        report = VerifyService(node.database, node.blobs).run()
        assert report.missing == [] and report.corrupt == [], f"missing {report.missing}, corrupt {report.corrupt}"
        stored = node.retrieve.instances_by_uid([str(dataset.SOPInstanceUID) for dataset in datasets])
        assert set(acknowledged) <= set(stored), f"lost: {sorted(set(acknowledged) - set(stored))}"
        assert len(report.orphans) <= 1, f"orphans: {report.orphans}"  # at most the one being written at the kill
    finally:
        node.stop()

    # and the restarted server accepts the rest
    server = start_server(data_dir, port, tmp_path / "serve2.log")
    try:
        ae = AE(ae_title="CRASHTEST")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120  # deadlines for hangs on a loaded machine
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        association = ae.associate("127.0.0.1", port, ae_title="MOSAIC", evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        statuses = {association.send_c_store(dataset).Status for dataset in datasets}
        association.release()
        assert statuses == {0x0000}, f"statuses after restart: {statuses}"
    finally:
        server.terminate()
        server.wait(30)
    time.sleep(0)


def test_kill_before_the_audit_writer_runs_loses_no_audit_record(tmp_path: Path) -> None:
    """Stores acknowledged, their audit records still gathered in memory (a 30 s batch here), then kill -9: the
    next start writes them into the chain from the journal."""
    data_dir = tmp_path / "data"
    port = free_port()
    server = start_server(data_dir, port, tmp_path / "serve.log", MOSAIC_SECURITY__AUDIT_BATCH_SECONDS="30")
    study_uid = "1.2.826.0.1.3680043.10.1234.950"
    datasets = [make_instance(study_uid=study_uid, series_uid=f"{study_uid}.1", instance_number=number)
                for number in range(1, 4)]
    try:
        ae = AE(ae_title="CRASHTEST")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120  # deadlines for hangs on a loaded machine
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        association = ae.associate("127.0.0.1", port, ae_title="MOSAIC", evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        statuses = [association.send_c_store(dataset).Status for dataset in datasets]
        association.release()
        assert statuses == [0x0000] * 3
        journal = data_dir / "audit-journal"
        wait_until(lambda: any(path.stat().st_size for path in journal.glob("*.jsonl")), timeout=30,
                   what="journaled audit entries")
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait(30)
    node = Mosaic(Settings(data_dir=data_dir))  # type: ignore[call-arg]
    try:
        assert node.audit.search(action="store")[1] == 0, "written before the kill: this test proves nothing"
        node.audit.start()  # recovers the journal of the killed process
        node.audit.flush()
        records, _total = node.audit.search(action="store", study=study_uid)
        assert node.audit.verify().intact
    finally:
        node.stop()
    assert len(records) == 1 and records[0].actor == "CRASHTEST"
    detail = json.loads(records[0].detail)
    assert sorted(item["SOPInstanceUID"] for item in detail["instances"]) == sorted(
        str(dataset.SOPInstanceUID) for dataset in datasets)
    assert "stopped before writing" in detail["recovered"]
    assert not list((data_dir / "audit-journal").glob("*.jsonl"))
