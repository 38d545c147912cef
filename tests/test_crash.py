"""Crash safety: kill -9 the server in the middle of ingest, restart, and check nothing is lost or half-stored."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from mosaic.app import Mosaic
from mosaic.config import Settings
from mosaic.index.query import Scope
from mosaic.services.verify import VerifyService
from tests.factory import make_instance, to_bytes
from tests.helpers import free_port, is_listening, wait_until


def nodelay(event: Any) -> None:
    """Like dcmtk with TCP_NODELAY=1: no delayed-ACK stall after each C-STORE (FIELD-NOTES)."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def start_server(data_dir: Path, dicom_port: int, log: Path, http_port: int | None = None,
                 **settings: str) -> subprocess.Popen[bytes]:
    """``mosaic serve`` in its own process (``settings``: more MOSAIC_* variables)."""
    command = [str(Path(sys.executable).parent / "mosaic"), "serve", "--data-dir", str(data_dir),
               "--dicom-port", str(dicom_port), "--http-port", str(http_port or free_port())]
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
        stored = node.retrieve.instances_by_uid([str(dataset.SOPInstanceUID) for dataset in datasets],
                                                scope=Scope.everything())
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


def test_kill_during_stow_leaves_partial_blobs_that_the_next_start_removes(tmp_path: Path) -> None:
    """A STOW-RS request whose body is still arriving when the server is killed -9 leaves its parts, written into
    the blob paths they were lent, with no index row. The next `mosaic serve` (storage.sweep_age_seconds = 0: this
    server is the only writer) removes them; the blobs stored before are untouched and `mosaic verify` passes."""
    data_dir, port, http_port = tmp_path / "data", free_port(), free_port()
    mode = {"MOSAIC_SECURITY__DEVELOPMENT_MODE": "true", "MOSAIC_STORAGE__SWEEP_AGE_SECONDS": "0"}
    server = start_server(data_dir, port, tmp_path / "serve.log", http_port, **mode)
    url = f"http://127.0.0.1:{http_port}/dicom-web/studies"
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=crash'}

    def part(patient_id: str) -> bytes:
        data = to_bytes(make_instance(patient_id=patient_id, rows=256, columns=256))
        return b"--crash\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"

    blob_root = data_dir / "blobs"

    def blob_files() -> set[Path]:
        return {path for path in blob_root.rglob("*.dcm") if ".incoming" not in path.parts}

    stop_sending = threading.Event()
    try:
        stored = httpx.post(url, content=part("KEPT1") + part("KEPT2") + b"--crash--\r\n", headers=headers,
                            timeout=120)
        assert stored.status_code == 200, stored.text
        kept = {path: path.read_bytes() for path in blob_files()}
        assert len(kept) == 2

        def body() -> Iterator[bytes]:
            for number in range(5):
                yield part(f"CUT{number}")
            stop_sending.wait(120)  # the request never ends: the server is killed while it waits for the rest

        def send() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(url, content=body(), headers=headers, timeout=120)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        wait_until(lambda: len(blob_files()) >= len(kept) + 5, timeout=120, what="five parts spooled")
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait(30)
        stop_sending.set()
    node = Mosaic(Settings(data_dir=data_dir))  # type: ignore[call-arg]
    try:
        assert len(VerifyService(node.database, node.blobs).run().orphans) == 5  # what the kill left
    finally:
        node.stop()

    server = start_server(data_dir, port, tmp_path / "serve2.log", http_port, **mode)
    try:
        wait_until(lambda: blob_files() == set(kept), timeout=120, what="the start-up sweep", process=server,
                   log=tmp_path / "serve2.log")
    finally:
        server.terminate()
        server.wait(30)
    assert {path: path.read_bytes() for path in blob_files()} == kept
    assert "start-up sweep: removed 0 spool files and 5 blob files" in (tmp_path / "serve2.log").read_text()
    verified = subprocess.run([str(Path(sys.executable).parent / "mosaic"), "verify", "--data-dir", str(data_dir)],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    assert verified.returncode == 0 and "2 ok, 0 missing, 0 corrupt, 0 orphan blobs" in verified.stdout, verified
