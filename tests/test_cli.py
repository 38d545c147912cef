"""The `mosaic` command line: config show, import, verify, echo."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mosaic.app import Mosaic
from mosaic.cli import app
from mosaic.config import DicomPeer, DicomSettings, HttpSettings, Settings
from mosaic.index.schema import Instance
from tests.factory import make_bytes

runner = CliRunner()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    (folder / "nested" / "deeper").mkdir(parents=True)
    for number in range(3):
        (folder / f"ct{number}.dcm").write_bytes(make_bytes(patient_id="IMP1", instance_number=number))
    (folder / "nested" / "deeper" / "mr.dcm").write_bytes(make_bytes(patient_id="IMP2", modality="MR"))
    (folder / "nested" / "notes.txt").write_text("not an image")
    (folder / "nested" / "cut.dcm").write_bytes(make_bytes()[:-50])
    return folder


def test_config_show_prints_every_option_with_environment_overrides(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    config = tmp_path / "mosaic.toml"
    config.write_text('[dicom]\nae_title = "FROMFILE"\nport = 4242\n')
    monkeypatch.setenv("MOSAIC_DICOM__PORT", "11999")
    result = runner.invoke(app, ["config", "show", "--config", str(config)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "MOSAIC_CONFIG" not in os.environ  # the file applied to that command only
    assert "'FROMFILE'" in result.output  # from the TOML file
    assert "11999" in result.output  # the environment wins over the file
    for option in ("http.port", "storage.backend", "ingest.duplicate_policy", "index.url"):
        assert option in result.output


def initialised(data_dir: Path) -> Path:
    """A new archive, set up as an operator does: `mosaic init` (import refuses a folder that is not one)."""
    result = runner.invoke(app, ["init", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return data_dir


def test_import_stores_recursively_reports_rejects_and_is_safe_to_rerun(corpus: Path, tmp_path: Path) -> None:
    data_dir = initialised(tmp_path / "data")
    first = runner.invoke(app, ["import", str(corpus), "--data-dir", str(data_dir)], env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    assert "stored" in first.output
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in first.output.splitlines()
             if line.count("│") >= 3}
    assert lines["stored"] == "4" and lines["rejected"] == "2"
    assert "notes.txt" in first.output and "not a DICOM file" in first.output
    assert "cut.dcm" in first.output and "truncated" in first.output

    again = runner.invoke(app, ["import", str(corpus), "--data-dir", str(data_dir)], env={"COLUMNS": "200"})
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in again.output.splitlines()
             if line.count("│") >= 3}
    assert lines["stored"] == "0" and lines["already-stored"] == "4"

    node = Mosaic(Settings(data_dir=data_dir))
    stores, _total = node.audit.search(action="store")
    node.stop()
    # every instance each time it was offered, by the OS user who ran the import (one record per series)
    audited: list[str] = []
    for row in stores:
        detail = json.loads(row.detail)
        audited += [row.SOPInstanceUID] if row.SOPInstanceUID else [item["SOPInstanceUID"]
                                                                    for item in detail["instances"]]
    assert len(audited) == 8 and len(set(audited)) == 4
    assert all(row.interface == "cli" and row.actor.startswith("os:") and row.PatientID for row in stores)


def test_verify_reports_missing_and_corrupt_objects_by_uid(corpus: Path, tmp_path: Path) -> None:
    data_dir = initialised(tmp_path / "data")
    runner.invoke(app, ["import", str(corpus), "--data-dir", str(data_dir)])
    clean = runner.invoke(app, ["verify", "--data-dir", str(data_dir)])
    assert clean.exit_code == 0, clean.output
    assert "4 ok, 0 missing, 0 corrupt" in clean.output

    node = Mosaic(Settings(data_dir=data_dir))
    with node.database.session() as session:
        first, second = session.query(Instance).order_by(Instance.pk).limit(2).all()
    node.stop()
    (data_dir / "blobs" / first.blob_key).unlink()
    corrupted = data_dir / "blobs" / second.blob_key
    payload = bytearray(corrupted.read_bytes())
    payload[-1] ^= 0xFF
    corrupted.write_bytes(bytes(payload))

    broken = runner.invoke(app, ["verify", "--data-dir", str(data_dir)], env={"COLUMNS": "250"})
    assert broken.exit_code == 1
    assert "1 missing, 1 corrupt" in broken.output
    assert first.SOPInstanceUID in broken.output and second.SOPInstanceUID in broken.output


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Mosaic]:
    # `mosaic echo` calls as the configured dicom.ae_title (MOSAIC by default): a peer of the live node
    caller = DicomPeer(ae_title="MOSAIC", host="127.0.0.1", port=104)  # type: ignore[call-arg]
    node = Mosaic(Settings(data_dir=tmp_path / "node", http=HttpSettings(port=0),
                           dicom=DicomSettings(port=0, peers=[caller])))
    node.start()
    yield node
    node.stop()


def test_echo_reports_success_against_a_live_peer(running: Mosaic) -> None:
    result = runner.invoke(app, ["echo", f"MOSAIC@127.0.0.1:{running.dicom_port}"])
    assert result.exit_code == 0, result.output
    assert "success" in result.output


def test_echo_to_nothing_fails_clearly() -> None:
    from tests.helpers import free_port

    result = runner.invoke(app, ["echo", f"NOBODY@127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "failed" in result.output


def test_echo_rejects_a_malformed_peer() -> None:
    result = runner.invoke(app, ["echo", "not-a-peer"])
    assert result.exit_code == 2


def test_verify_repair_indexes_an_orphan_blob_and_removes_partial_ones(tmp_path: Path) -> None:
    """An orphan (bytes made durable, then the index commit lost: a crash between the two phases) is indexed; a
    partial file a killed receiver left (truncated, or not DICOM at all) is removed once older than
    storage.sweep_age_seconds, and kept while it may still be being written."""
    data_dir = tmp_path / "data"
    node = Mosaic(Settings(data_dir=data_dir))
    orphan = node.blobs.write(make_bytes(patient_id="ORPHAN"))
    garbage = node.blobs.write(b"not dicom")
    truncated = node.blobs.write(make_bytes(patient_id="CUT")[:-300])
    recent = node.blobs.write(make_bytes(patient_id="RECENT")[:-300])
    two_hours_ago = time.time() - 7200
    for blob in (garbage, truncated):
        os.utime(node.settings.blob_path / blob.key, (two_hours_ago, two_hours_ago))
    node.stop()
    report = runner.invoke(app, ["verify", "--data-dir", str(data_dir)], env={"COLUMNS": "250"})
    assert report.exit_code == 0 and "4 orphan blobs" in report.output
    repaired = runner.invoke(app, ["verify", "--repair", "--data-dir", str(data_dir)], env={"COLUMNS": "250"})
    assert repaired.exit_code == 0
    assert "stored:" in repaired.output and repaired.output.count("removed, not a complete object") == 2
    assert f"{recent.key}: kept:" in repaired.output
    node = Mosaic(Settings(data_dir=data_dir))
    try:
        from mosaic.services.verify import VerifyService

        after = VerifyService(node.database, node.blobs).run()
        assert after.checked == 1 and after.orphans == [recent.key]
        assert not any(node.blobs.exists(blob.key) for blob in (orphan, garbage, truncated))
    finally:
        node.stop()
