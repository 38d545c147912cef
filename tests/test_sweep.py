"""The start-up sweep: what a killed process left half-written is gone after the next start, nothing else."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import httpx
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings, StorageSettings
from mosaic.services.verify import VerifyService
from tests.auth_support import auth_headers
from tests.factory import make_bytes

BOUNDARY = "sweep-test-boundary"


def settings(data_dir: Path, **storage: int) -> Settings:
    return Settings(data_dir=data_dir, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                    storage=StorageSettings(**storage))  # type: ignore[arg-type]


def stow(node: Mosaic, *instances: bytes) -> httpx.Response:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                    for data in instances) + f"--{BOUNDARY}--\r\n".encode()
    return httpx.post(f"http://127.0.0.1:{node.http_port}/dicom-web/studies", content=body, timeout=120, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}', **auth_headers(node)})


def backdate(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def digests(node: Mosaic) -> dict[str, str]:
    return {key: hashlib.sha256((node.settings.blob_path / key).read_bytes()).hexdigest()
            for key in node.blobs.iter_keys()}


def test_the_next_start_removes_what_a_crash_left_and_keeps_everything_referenced_or_young(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Leftovers made as a kill -9 leaves them, two hours before the start: a STOW-RS part half-written into the
    blob path it was lent, a blob whose index commit never came, and pynetdicom spool files in `.incoming`; plus
    an unreferenced blob and a spool file written a minute ago (another node's write in flight, as far as this
    node can tell). The start removes the old ones (one log line with the count), keeps the young ones and every
    referenced blob byte for byte, and `mosaic verify` finds nothing missing or corrupt."""
    data_dir = tmp_path / "data"
    node = Mosaic(settings(data_dir))
    node.start()
    try:
        assert stow(node, make_bytes(patient_id="KEEP1"), make_bytes(patient_id="KEEP2")).status_code == 200
        referenced = digests(node)
        half = node.blobs.reserve()  # type: ignore[attr-defined]
        half.write_bytes(make_bytes(patient_id="HALF")[:700])
        uncommitted = node.blobs.write(make_bytes(patient_id="LOST"))  # phase one done, the transaction never came
        spool = [node.spool_folder / "tmpa1b2c3.dcm", node.spool_folder / "tmpd4e5f6"]
        for path in spool:
            path.write_bytes(b"\0" * 1000)
        old = [half, node.settings.blob_path / uncommitted.key, *spool]
        for path in old:
            backdate(path, 7200)
        in_flight = node.blobs.write(make_bytes(patient_id="INFLIGHT"))
        young_spool = node.spool_folder / "tmpyoung"
        young_spool.write_bytes(b"\0" * 10)
        for path in (node.settings.blob_path / in_flight.key, young_spool):
            backdate(path, 60)
    finally:
        node.stop()

    caplog.set_level(logging.INFO, logger="mosaic")
    caplog.clear()  # the first start's sweep (over before its stop returned) is not the one under test
    node = Mosaic(settings(data_dir))
    node.start()
    try:
        assert node.swept.wait(120), "the start-up sweep did not finish"
        assert not any(path.exists() for path in old), [str(path) for path in old if path.exists()]
        assert young_spool.exists() and node.blobs.exists(in_flight.key)
        assert {key: digest for key, digest in digests(node).items() if key in referenced} == referenced
        [line] = [record.getMessage() for record in caplog.records if "start-up sweep" in record.getMessage()]
        assert "removed 2 spool files and 2 blob files" in line and "2 younger ones left" in line, line
        report = VerifyService(node.database, node.blobs).run()
        assert report.healthy and report.checked == 2 and report.orphans == [in_flight.key]
        assert stow(node, make_bytes(patient_id="AFTER")).status_code == 200  # and the node stores as before
    finally:
        node.stop()


def test_a_sweep_age_of_zero_removes_every_unreferenced_file_older_than_the_start(tmp_path: Path) -> None:
    """A single node whose server is the only writer (storage.sweep_age_seconds = 0): a leftover written just
    before the start goes too."""
    data_dir = tmp_path / "data"
    node = Mosaic(settings(data_dir))
    leftover = node.blobs.write(make_bytes(patient_id="JUSTNOW"))
    node.stop()
    backdate(node.settings.blob_path / leftover.key, 1)
    node = Mosaic(settings(data_dir, sweep_age_seconds=0))
    node.start()
    try:
        assert node.swept.wait(120)
        assert not node.blobs.exists(leftover.key)
    finally:
        node.stop()
