"""Durable jobs: an export outlives the process that ran it (killed with SIGKILL, it is resumed and completes),
any node shows and runs jobs of the shared index, users see their own jobs and cancel them, and a cancelled or
interrupted export leaves nothing under its name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, JobSettings, Settings
from mosaic.export.service import Destination
from mosaic.index.database import Database
from mosaic.index.schema import DeidManifestEntry, Job
from mosaic.jobs.runner import JobCancelled, JobContext, JobInterrupted, JobRunner
from mosaic.jobs.store import JobState, JobStore
from tests.factory import make_instance, to_bytes
from tests.helpers import LOCALHOST, wait_until

STUDY = "1.2.826.0.1.3680043.10.1234.801"
INSTANCES = 500


def settings(data_dir: Path, workers: int = 1) -> Settings:
    return Settings(data_dir=data_dir, http=HttpSettings(port=0), dicom=DicomSettings(port=0),  # type: ignore[call-arg]
                    jobs=JobSettings(workers=workers, poll_seconds=0.2))  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with one study of many small instances (an export of it takes a while)."""
    data_dir = tmp_path_factory.mktemp("jobs")
    node = Mosaic(settings(data_dir))
    for number in range(1, INSTANCES + 1):
        node.ingest.store(to_bytes(make_instance(patient_id="MRN-7", patient_name="Secret^Carol", study_uid=STUDY,
                                                 series_uid=f"{STUDY}.1", instance_number=number, rows=16,
                                                 columns=16)), door="import")
    node.identity.add_user("scientist", roles=["researcher"])
    node.identity.add_user("other", roles=["researcher"])
    node.identity.add_user("boss", roles=["administrator"])
    node.stop()
    return data_dir


def api(node: Mosaic, user: str) -> httpx.Client:
    return httpx.Client(base_url=f"http://{LOCALHOST}:{node.http_port}",
                        headers={"Authorization": f"Bearer {node.identity.issue_token(user)}"})


def job_row(data_dir: Path, job_id: str | None = None) -> Job | None:
    database = Database(settings(data_dir).index_url)
    try:
        with database.session() as session:
            query = session.query(Job).filter(Job.kind == "export")
            row = query.filter(Job.id == job_id).first() if job_id else query.order_by(Job.created_at.desc()).first()
            if row is not None:
                session.expunge(row)
            return row
    finally:
        database.dispose()


def test_an_export_killed_mid_run_is_resumed_by_the_next_node_and_completes(archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "cohort.zip"
    command = [str(Path(sys.executable).parent / "mosaic"), "export", "--data-dir", str(archive), "--study", STUDY,
               "--project", "crash", "--to", str(target), "--zip"]
    log = tmp_path / "export.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        # kill -9 once the job is under way (its first progress report), long before 500 instances are done
        wait_until(lambda: (row := job_row(archive)) is not None and row.phase == "de-identifying"
                   and row.done < INSTANCES, interval=0.01, timeout=60, what="export running", process=process,
                   log=log)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    interrupted = job_row(archive)
    assert interrupted is not None and interrupted.state == "running" and interrupted.attempts == 1
    assert not target.exists(), "an unfinished export must not appear under its name"

    node = Mosaic(settings(archive))
    node.start(dicom=False)
    try:  # this node sees the killed process is gone, queues the job again and runs it from the start
        wait_until(lambda: (row := job_row(archive, interrupted.id)) is not None and row.state in ("done", "failed"),
                   timeout=120, what="resumed export")
        with api(node, "boss") as client:
            shown = client.get(f"/api/exports/{interrupted.id}").json()
        node.audit.flush()
        exports = [record for record in node.audit.search(action="export", study=STUDY, limit=10)[0]
                   if record.outcome == "success"]
    finally:
        node.stop()
    assert shown["state"] == "done", shown
    assert shown["attempts"] == 2 and shown["exported"] == INSTANCES
    with zipfile.ZipFile(target) as archive_file:
        names = archive_file.namelist()
        assert len(names) == INSTANCES
        patients = {str(pydicom.dcmread(archive_file.open(name)).PatientID) for name in names[:20]}
    assert len(patients) == 1 and not patients.pop().startswith("MRN")
    assert not list(tmp_path.glob(".cohort.zip*partial"))
    database = Database(settings(archive).index_url)
    with database.session() as session:  # the resumed run replaced the manifest, it did not add a second one
        kinds = [row.kind for row in session.query(DeidManifestEntry).filter(
            DeidManifestEntry.export_id == interrupted.id)]
    database.dispose()
    assert sorted(kinds) == ["patient", "study"]
    assert exports and exports[0].actor.startswith("os:")


@pytest.fixture
def two_nodes(archive: Path) -> Iterator[tuple[Mosaic, Mosaic]]:
    """Two nodes on one index: ``front`` runs no jobs (jobs.workers = 0), ``back`` runs them."""
    front = Mosaic(settings(archive, workers=0))
    front.start(dicom=False)
    back = Mosaic(settings(archive, workers=1))
    try:
        yield front, back
    finally:
        back.stop()
        front.stop()


def test_a_job_submitted_on_one_node_is_shown_cancelled_or_run_by_another(two_nodes: tuple[Mosaic, Mosaic]) -> None:
    front, back = two_nodes
    body: dict[str, Any] = {"studies": [STUDY], "project": "nodes", "destination": {"kind": "zip",
                                                                                      "target": "queued.zip"}}
    with api(front, "scientist") as scientist, api(front, "other") as other, api(front, "boss") as admin:
        first = scientist.post("/api/exports", json=body)
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]
        listed = scientist.get("/api/jobs").json()["jobs"]
        assert [(job["id"], job["state"], job["kind"]) for job in listed][:1] == [(job_id, "queued", "export")]
        assert "params" not in listed[0]  # parameters may name patients: never shown
        # another user does not see it at all; the administrator does
        assert other.get(f"/api/jobs/{job_id}").status_code == 404
        assert other.post(f"/api/jobs/{job_id}/cancel").status_code == 404
        assert job_id not in [job["id"] for job in other.get("/api/jobs").json()["jobs"]]
        assert admin.get(f"/api/jobs/{job_id}").json()["state"] == "queued"
        # the requester cancels it while it waits: it never runs
        cancelled = scientist.post(f"/api/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert scientist.post(f"/api/jobs/{job_id}/cancel").status_code == 409

        second = scientist.post("/api/exports", json={**body, "destination": {"kind": "zip", "target": "run.zip"}})
        second_id = second.json()["id"]
        back.start(dicom=False)  # the node that runs jobs comes up and takes the queued one
        wait_until(lambda: scientist.get(f"/api/exports/{second_id}").json()["state"] in ("done", "failed"),
                   timeout=120, what="export run by the other node")
        finished = scientist.get(f"/api/exports/{second_id}").json()
        assert scientist.get(f"/api/exports/{job_id}").json()["state"] == "cancelled"
    assert finished["state"] == "done" and finished["exported"] == INSTANCES, finished
    assert (front.settings.export_path / "run.zip").exists()
    assert not (front.settings.export_path / "queued.zip").exists()
    front.audit.flush()
    cancels = [record for record in front.audit.search(user="scientist", limit=50)[0]
               if json.loads(record.detail or "{}").get("cancel")]
    assert cancels and cancels[0].outcome == "success"


def job_store(folder: Path, **settings: Any) -> JobStore:
    """Job rows in a fresh SQLite index of their own (the caller disposes of ``store.database``)."""
    database = Database(f"sqlite:///{folder / 'index.sqlite'}")
    database.migrate()
    return JobStore(database, JobSettings(**settings))


def test_a_running_export_cancelled_stops_and_leaves_nothing(archive: Path) -> None:
    node = Mosaic(settings(archive, workers=0))
    try:
        principal = node.identity.check_token(node.identity.issue_token("scientist"))
        target = node.settings.export_path / "stopped"
        job = node.exports.prepare(principal, [STUDY], Destination("folder", str(target)), "cancel")
        claimed = node.jobs.claim(["export"], job_id=job.id)  # running on this node, as a worker would have it
        assert claimed is not None
        node.jobs.cancel(job.id)  # asked to stop while it runs: it stops at its next progress report
        ended = node.job_runner._execute(claimed)
    finally:
        node.stop()
    assert ended.state == JobState.CANCELLED
    assert not target.exists() and not list(target.parent.glob(".stopped*partial"))


def test_a_running_job_stops_at_its_next_step_once_cancelled(tmp_path: Path) -> None:
    store = job_store(tmp_path, poll_seconds=0.05)
    database = store.database
    runner = JobRunner(store, store.settings)
    started, steps = threading.Event(), []

    def count_forever(context: JobContext) -> dict[str, Any]:
        while True:
            steps.append(1)
            started.set()
            context.progress("counting", len(steps), 0)

    runner.register("count", count_forever)
    job = store.submit("count", "tester", {})
    runner.start()
    try:
        assert started.wait(30)
        store.cancel(job.id)
        wait_until(lambda: (current := store.get(job.id)) is not None and current.finished, timeout=30,
                   what="cancelled job")
    finally:
        runner.stop()
        database.dispose()
    ended = store.get(job.id)
    assert ended is not None and ended.state == JobState.CANCELLED
    with pytest.raises(JobCancelled):  # its context still refuses to go on
        JobContext(store, ended).progress("counting", 1, 0)


def test_a_job_whose_node_went_silent_is_queued_again_then_failed_after_its_attempts(tmp_path: Path) -> None:
    store = job_store(tmp_path, stale_seconds=60, max_attempts=2)
    database = store.database
    now = datetime.now(UTC)
    with database.session(write=True) as session:
        for job_id, attempts, beat in (("silent", 1, now - timedelta(minutes=5)), ("alive", 1, now),
                                       ("worn", 2, now - timedelta(minutes=5))):
            session.add(Job(id=job_id, kind="export", state="running", requested_by="x", params_json="{}",
                            result_json="{}", error="", phase="de-identifying", done=1, total=9, attempts=attempts,
                            cancel_requested=False, node="another-host:4242", created_at=now, heartbeat_at=beat))
    assert sorted(store.recover(now)) == ["silent", "worn"]
    silent, alive, worn = (store.get(job_id) for job_id in ("silent", "alive", "worn"))
    database.dispose()
    assert silent is not None and silent.state == JobState.QUEUED and "interrupted on another-host:4242" in silent.error
    assert alive is not None and alive.state == JobState.RUNNING
    assert worn is not None and worn.state == JobState.FAILED and "max_attempts" in worn.error


def test_one_retention_run_at_a_time_across_the_nodes_of_an_index(two_nodes: tuple[Mosaic, Mosaic]) -> None:
    front, back = two_nodes
    with api(front, "boss") as boss:
        queued = boss.post("/api/retention/run", params={"background": "true"})
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["job"]["id"]
        assert boss.get("/api/retention/status").json()["running"]  # queued: no node here runs jobs
        again = boss.post("/api/retention/run", params={"background": "true"})
        assert again.status_code == 409 and "already queued" in again.json()["error"]
        back.start(dicom=False)
        wait_until(lambda: not boss.get("/api/retention/status").json()["running"], timeout=60,
                   what="retention run on the other node")
        status = boss.get("/api/retention/status").json()
    assert status["job"]["id"] == job_id and status["job"]["state"] == "done"
    assert status["last"]["studies"] == 1 and status["last"]["purged"] == 0  # no rules: everything is kept


def test_a_job_running_when_its_node_stops_is_queued_again_without_using_an_attempt(tmp_path: Path) -> None:
    store = job_store(tmp_path, poll_seconds=0.05)
    database = store.database
    started = threading.Event()

    def count_forever(context: JobContext) -> dict[str, Any]:
        steps = 0
        while True:
            steps += 1
            started.set()
            context.progress("counting", steps, 0)

    first = JobRunner(store, store.settings)
    first.register("count", count_forever)
    job = store.submit("count", "tester", {})
    first.start()
    assert started.wait(30)
    first.stop()  # the node shuts down in the middle of the job
    stopped = store.get(job.id)
    assert stopped is not None and (stopped.state, stopped.attempts) == (JobState.QUEUED, 0), stopped
    assert "node was stopped" in stopped.error

    second = JobRunner(store, store.settings)  # the next node takes it up
    second.register("count", lambda context: {"resumed": context.job.attempts})
    second.start()
    try:
        wait_until(lambda: (current := store.get(job.id)) is not None and current.finished, timeout=30,
                   what="resumed job")
    finally:
        second.stop()
        database.dispose()
    ended = store.get(job.id)
    assert ended is not None and ended.state == JobState.DONE and ended.result == {"resumed": 1}


def test_ctrl_c_on_a_foreground_run_cancels_the_job_for_good(tmp_path: Path) -> None:
    """A command's foreground run stopped by the user must not be resumed by a server later."""
    store = job_store(tmp_path)
    database = store.database
    runner = JobRunner(store, store.settings)

    def interrupted(context: JobContext) -> dict[str, Any]:
        raise KeyboardInterrupt  # what Python raises in the main thread on Ctrl+C

    runner.register("export", interrupted)
    job = store.submit("export", "os:tester", {}, here=True)
    with pytest.raises(KeyboardInterrupt):
        runner.run_now(job)
    ended = store.get(job.id)
    database.dispose()
    assert ended is not None and ended.state == JobState.CANCELLED and "Ctrl+C" in ended.error


def test_a_node_that_lost_its_job_stops_and_cannot_overwrite_the_new_run(tmp_path: Path) -> None:
    """Taken for stopped (no heartbeat for stale_seconds) and given to another node, a slow node must neither go
    on nor write its outcome over the new run's."""
    store = job_store(tmp_path)
    job = store.submit("export", "tester", {}, here=True)
    with store.database.session(write=True) as session:  # what recover() and another node's claim leave behind
        row = session.get(Job, job.id)
        assert row is not None
        row.node, row.attempts = "another-host:4242", 2
    with pytest.raises(JobInterrupted):
        JobContext(store, job).progress("de-identifying", 1, 10)
    assert not store.finish(job.id, JobState.DONE, {"exported": 1})
    current = store.get(job.id)
    store.database.dispose()
    assert current is not None and (current.state, current.node, current.result) == (
        JobState.RUNNING, "another-host:4242", {})
