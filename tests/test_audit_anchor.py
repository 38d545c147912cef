"""The audit chain is anchored outside the index: signed checkpoints catch what the chain alone cannot.

The intruder here has the index (SQL straight on the SQLite file, recomputing hashes with Mosaic's own hash
function) but not the signing key nor the append-only anchor file: cutting records off the end with the head
moved back, or rewriting a record and every later hash, must both fail `mosaic audit verify` and
GET /api/audit/verify; a checkpoint line the intruder forges must fail too.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from mosaic.app import Mosaic
from mosaic.cli import app as cli
from mosaic.config import DicomSettings, HttpSettings, SecuritySettings, Settings, SyslogSettings
from mosaic.governance.audit import AuditEntry, record_hash, row_values
from mosaic.governance.audit_anchor import read_anchor_file, sign
from mosaic.index.schema import AuditRecord
from tests.auth_support import auth_headers
from tests.helpers import LOCALHOST, free_port, wait_until
from tests.test_audit_trail import Collector

QUIET = 3600.0
"""A checkpoint interval no test reaches: checkpoints are made only where the test asks (``audit.checkpoint``)."""


def settings_of(data_dir: Path, **security: object) -> Settings:
    security.setdefault("audit_checkpoint_seconds", QUIET)
    return Settings(data_dir=data_dir, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                    security=SecuritySettings(**security))  # type: ignore[arg-type]


def new_node(data_dir: Path, *, http: bool = False, **security: object) -> Mosaic:
    node = Mosaic(settings_of(data_dir, **security))
    node.start(dicom=False, http=http)
    return node


def write_records(node: Mosaic, count: int, first: int = 0) -> None:
    for number in range(first, first + count):
        node.audit.record(AuditEntry(action="read", outcome="success", actor=f"user{number}", interface="http",
                                     PatientID=f"P{number}", detail={"n": number}))
    assert node.audit.flush()


@pytest.fixture
def anchored(tmp_path: Path) -> Iterator[tuple[Mosaic, Path]]:
    """Ten records, checkpointed after the fifth and after the tenth."""
    node = new_node(tmp_path)
    write_records(node, 5)
    assert node.audit.checkpoint()
    write_records(node, 5, first=5)
    assert node.audit.checkpoint()
    yield node, tmp_path
    node.stop()


def sql(data_dir: Path, *statements: str, parameters: list[tuple[object, ...]] | None = None) -> None:
    with sqlite3.connect(data_dir / "index.sqlite") as connection:
        for number, statement in enumerate(statements):
            connection.execute(statement, parameters[number] if parameters else ())


def verify_cli(data_dir: Path, *arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["audit", "verify", "--data-dir", str(data_dir), *arguments])
    return result.exit_code, " ".join(result.output.split())


def rehash_from(node: Mosaic, data_dir: Path, seq: int, actor: str) -> None:
    """Edit record ``seq``'s actor and recompute its hash and every later one, and the head: the chain alone
    is consistent again."""
    with node.database.session() as session:
        rows = list(session.query(AuditRecord).filter(AuditRecord.seq >= seq).order_by(AuditRecord.seq))
        previous = rows[0].previous_hash
        updates = []
        for row in rows:
            values = row_values(row)
            if row.seq == seq:
                values["actor"] = actor
            digest = record_hash(row.seq, row.recorded_at, values, previous)
            updates.append((values["actor"], previous, digest, row.seq))
            previous = digest
    statements = ["UPDATE audit_record SET actor = ?, previous_hash = ?, hash = ? WHERE seq = ?"] * len(updates)
    sql(data_dir, *statements, "UPDATE audit_cursor SET hash = ? WHERE name = 'chain'",
        parameters=[*updates, (previous,)])


def test_an_untouched_anchored_trail_verifies(anchored: tuple[Mosaic, Path]) -> None:
    node, data_dir = anchored
    report = node.audit.verify()
    assert report.intact, report
    assert report.checked == 10 and report.checkpoints == 2 and report.anchored_seq == 10
    code, output = verify_cli(data_dir)
    assert code == 0 and "10 records, every hash matches; 2 signed checkpoints match" in output, output


def test_records_cut_off_the_end_with_the_head_moved_back_are_found(anchored: tuple[Mosaic, Path]) -> None:
    node, data_dir = anchored
    with node.database.session() as session:
        eighth = session.get(AuditRecord, 8)
        assert eighth is not None
        head_hash = eighth.hash
    sql(data_dir, "DELETE FROM audit_record WHERE seq > 8", "UPDATE audit_cursor SET seq = 8, hash = ? "
        "WHERE name = 'chain'", parameters=[(), (head_hash,)])
    report = node.audit.verify()
    assert not report.intact and report.first_bad_seq == 9, report
    assert "records 9…10 were removed from the end" in report.reason and "line 2" in report.reason
    code, output = verify_cli(data_dir)
    assert code == 1 and "broken at record 9" in output and "removed from the end" in output, output


def test_everything_after_a_checkpoint_deleted_is_found(anchored: tuple[Mosaic, Path]) -> None:
    node, data_dir = anchored
    sql(data_dir, "DELETE FROM audit_record", "DELETE FROM audit_cursor WHERE name = 'chain'")
    report = node.audit.verify()
    assert report.first_bad_seq == 1 and "records 1…10 were removed" in report.reason, report


@pytest.mark.parametrize(("edited", "first_bad", "words"), [
    (7, 6, "records 6…10 were rewritten"),  # after the first checkpoint: it still matches, the second does not
    (4, 1, "records 1…5 were rewritten"),
])
def test_an_edit_with_every_later_hash_recomputed_is_found(anchored: tuple[Mosaic, Path], edited: int,
                                                           first_bad: int, words: str) -> None:
    node, data_dir = anchored
    rehash_from(node, data_dir, edited, "nobody")
    report = node.audit.verify()
    assert not report.intact and report.first_bad_seq == first_bad, report
    assert words in report.reason
    code, output = verify_cli(data_dir)
    assert code == 1 and f"broken at record {first_bad}" in output and "rewritten" in output, output


def test_verify_over_http_names_the_rewrite(tmp_path: Path) -> None:
    node = new_node(tmp_path, http=True)
    try:
        write_records(node, 4)
        assert node.audit.checkpoint()
        rehash_from(node, tmp_path, 2, "nobody")
        answer = httpx.get(f"http://{LOCALHOST}:{node.http_port}/api/audit/verify", headers=auth_headers(node),
                           timeout=60).json()
        assert answer["intact"] is False and answer["first_bad_seq"] == 1, answer
        assert "rewritten" in answer["reason"]
    finally:
        node.stop()


def forged_lines(anchor_file: Path) -> dict[str, bytes]:
    last = json.loads(anchor_file.read_bytes().splitlines()[-1])
    altered = dict(last, seq=last["seq"] - 2)  # the intruder moves the checkpoint back to match a truncation
    stranger = Ed25519PrivateKey.generate()
    return {
        "altered": (json.dumps(altered) + "\n").encode(),
        "bad signature": (json.dumps(dict(last, sig=base64.b64encode(b"\0" * 64).decode())) + "\n").encode(),
        "own key": sign(stranger, last["seq"], "f" * 64, last["node"]),
    }


@pytest.mark.parametrize(("kind", "words"), [("altered", "does not match"), ("bad signature", "does not match"),
                                             ("own key", "not a verify key")])
def test_a_forged_checkpoint_is_found(anchored: tuple[Mosaic, Path], kind: str, words: str) -> None:
    node, data_dir = anchored
    anchor_file = data_dir / "audit-anchors.jsonl"
    with anchor_file.open("ab") as anchors:
        anchors.write(forged_lines(anchor_file)[kind])
    report = node.audit.verify()
    assert not report.intact and report.bad_checkpoint_line == 3, report
    assert words in report.reason
    code, output = verify_cli(data_dir)
    assert code == 1 and "checkpoint line 3" in output, output


def test_the_public_key_alone_verifies_and_the_key_lives_outside_the_data_directory(tmp_path: Path) -> None:
    """The production layout: the signing key on another volume, the verifier holding only public keys."""
    vault = tmp_path / "vault"
    data_dir = tmp_path / "data"
    node = new_node(data_dir, audit_signing_key_file=vault / "mosaic.pem",
                    audit_anchor_file=tmp_path / "anchors" / "mosaic.jsonl")
    try:
        write_records(node, 3)
        assert node.audit.checkpoint()
    finally:
        node.stop()
    assert (vault / "mosaic.pem").stat().st_mode & 0o777 == 0o600
    assert not (data_dir / "audit-signing-key.pem").exists()
    public = tmp_path / "verify.pem"
    public.write_bytes((vault / "mosaic.pub.pem").read_bytes())
    (vault / "mosaic.pem").unlink()  # the verifier never has the private key
    verifier = Mosaic(settings_of(data_dir, audit_verify_key_file=public,
                                  audit_anchor_file=tmp_path / "anchors" / "mosaic.jsonl"))
    try:
        report = verifier.audit.verify()
        assert report.intact and report.checkpoints == 1 and report.anchored_seq == 3, report
    finally:
        verifier.stop()


def test_writers_sharing_one_anchor_file_keep_every_line_valid(tmp_path: Path) -> None:
    """Several writers (here two nodes on one data directory, as DICOM worker processes are) append their own
    checkpoints to one file; each line stands alone."""
    nodes = [new_node(tmp_path, audit_checkpoint_seconds=0) for _ in range(2)]
    try:
        threads = [threading.Thread(target=write_records, args=(node, 40)) for node in nodes for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for node in nodes:
            node.audit.checkpoint()
        report = nodes[0].audit.verify()
        assert report.intact and report.checked == 160 and report.anchored_seq == 160, report
        assert report.checkpoints >= 2
    finally:
        for node in nodes:
            node.stop()


def test_checkpoints_reach_the_syslog_collector_signed(tmp_path: Path) -> None:
    port = free_port()
    collector = Collector(port)
    node = new_node(tmp_path, http=True, audit_syslog=SyslogSettings(host=LOCALHOST, port=port, retry_seconds=0.2))
    try:
        write_records(node, 3)
        assert node.audit.checkpoint()
        wait_until(lambda: collector.checkpoints, timeout=60, what="a checkpoint at the collector")
        copy = tmp_path / "collected.jsonl"
        copy.write_bytes(b"".join(message.partition(b"\xef\xbb\xbf")[2] + b"\n" for message in collector.checkpoints))
        reading = read_anchor_file(copy, node.audit.anchor.verify_keys() if node.audit.anchor else None)
        assert reading.bad_line is None and reading.checkpoints[-1].seq == node.audit.total(), reading
    finally:
        node.stop()
        collector.stop()
