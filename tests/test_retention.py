"""Retention and legal hold: which studies the rules let go (dry run), marking, purging after the grace period,
holds that save studies, manual deletion refused under a hold (CLI and HTTP), the index counters, the outbox, the
blob files, and the audit trail of every deletion and hold change."""

from __future__ import annotations

import getpass
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from typer.testing import CliRunner

from mosaic.app import Mosaic
from mosaic.cli import app as cli_app
from mosaic.config import (
    DicomSettings,
    DuplicatePolicy,
    HttpSettings,
    IndexSettings,
    IngestSettings,
    RetentionRule,
    RetentionSettings,
    SecuritySettings,
    Settings,
)
from mosaic.core.errors import NotFound
from mosaic.governance.holds import ActiveHolds, HoldError, UnderLegalHold
from mosaic.governance.policy import Principal
from mosaic.governance.retention import StudyFacts, Verdict, add_years, evaluate, parse_da
from mosaic.index.query import MatchKey, Query, Scope
from mosaic.index.schema import Event, Instance, InstanceVersion, Patient, Series, Study
from mosaic.services.verify import VerifyService
from tests.auth_support import auth_headers
from tests.factory import PREFIX, make_instance, to_bytes
from tests.helpers import LOCALHOST, wait_until

runner = CliRunner()
WIDE = {"COLUMNS": "300"}
LEGAL = Principal(name="legal-team", kind="user", interface="http")

RULES = [
    RetentionRule(name="minors", max_age_at_study=18, keep_years_after_study=7, keep_until_patient_age=25),
    RetentionRule(name="adults 7 years", min_age_at_study=18, keep_years_after_study=7),
]


def years_ago(years: int, today: date | None = None) -> date:
    today = today or datetime.now(UTC).date()
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28)


def da(value: date) -> str:
    return value.strftime("%Y%m%d")


@dataclass
class Case:
    study: str
    patient: str
    birth: date | None
    study_date: date


def uid() -> str:
    return generate_uid(prefix=PREFIX)


def store_study(node: Mosaic, case: Case, *, series: int = 2, per_series: int = 2) -> None:
    """A study of ``series`` series (CT, then MR, …) with ``per_series`` instances each."""
    modalities = ["CT", "MR", "SR"]
    for number in range(series):
        series_uid = uid()
        for index in range(per_series):
            dataset = make_instance(patient_id=case.patient, study_uid=case.study, series_uid=series_uid,
                                    study_date=da(case.study_date), modality=modalities[number % 3],
                                    instance_number=index + 1,
                                    PatientBirthDate=da(case.birth) if case.birth else "")
            node.ingest.store(to_bytes(dataset), door="import", facility="GENERAL", department="RADIOLOGY")


def dataset(node: Mosaic) -> dict[str, Case]:
    """The six cases of the brief plus one whose birth date is missing; holds on the two held ones."""
    today = datetime.now(UTC).date()
    cases = {
        "adult_old": Case(uid(), "ADULT-OLD", years_ago(60, today), years_ago(8, today)),
        "adult_recent": Case(uid(), "ADULT-NEW", years_ago(50, today), years_ago(3, today)),
        "minor_kept": Case(uid(), "CHILD", years_ago(18, today), years_ago(8, today)),  # 10 at the study
        "minor_grown": Case(uid(), "GROWN", years_ago(30, today), years_ago(20, today)),  # 10 then, 30 now
        "held_patient": Case(uid(), "HELD-PAT", years_ago(70, today), years_ago(9, today)),
        "held_study": Case(uid(), "HELD-STUDY", years_ago(65, today), years_ago(10, today)),
        "no_birth_date": Case(uid(), "NO-DOB", None, years_ago(12, today)),
    }
    for case in cases.values():
        store_study(node, case)
    node.holds.place(LEGAL, reason="litigation 2024-17", patient_id="HELD-PAT")
    node.holds.place(LEGAL, reason="complaint under review", study_instance_uid=cases["held_study"].study)
    return cases


DUE = {"adult_old", "minor_grown"}
SURVIVORS = {"adult_recent", "minor_kept", "held_patient", "held_study", "no_birth_date"}


def make_node(data_dir: Path, *, grace_days: float = 30, index_url: str | None = None,
              rules: list[RetentionRule] | None = None) -> Mosaic:
    return Mosaic(Settings(
        data_dir=data_dir, http=HttpSettings(port=0), dicom=DicomSettings(port=0),  # type: ignore[call-arg]
        index=IndexSettings(url=index_url),  # type: ignore[call-arg]
        ingest=IngestSettings(duplicate_policy=DuplicatePolicy.KEEP_NEW_VERSION),  # type: ignore[call-arg]
        security=SecuritySettings(credential_cache_seconds=0),  # type: ignore[call-arg]
        retention=RetentionSettings(rules=rules if rules is not None else RULES,  # type: ignore[call-arg]
                                    grace_days=grace_days)))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    mosaic = make_node(tmp_path / "data")
    yield mosaic
    mosaic.stop()


def blob_keys(node: Mosaic, study: str) -> list[str]:
    with node.database.session() as session:
        current = session.scalars(select(Instance.blob_key).join(Series, Instance.series_pk == Series.pk)
                                  .join(Study, Series.study_pk == Study.pk)
                                  .where(Study.StudyInstanceUID == study)).all()
        history = session.scalars(select(InstanceVersion.blob_key).join(Instance)
                                  .join(Series, Instance.series_pk == Series.pk)
                                  .join(Study, Series.study_pk == Study.pk)
                                  .where(Study.StudyInstanceUID == study)).all()
    return [*current, *history]


def blob_file(node: Mosaic, key: str) -> Path:
    return node.settings.blob_path / key


def found_studies(node: Mosaic) -> set[str]:
    """Every study C-FIND / QIDO-RS can find (the query service both doors use)."""
    query = Query(level="STUDY", keys=[MatchKey("StudyInstanceUID", "", "UI")])
    return {match.rows["STUDY"].StudyInstanceUID
            for match in node.query.find(query, door="test", scope=Scope.everything())}


def study_row(node: Mosaic, study: str) -> Study | None:
    with node.database.session() as session:
        return session.scalar(select(Study).where(Study.StudyInstanceUID == study))


def audit(node: Mosaic, **filters: Any) -> list[Any]:
    node.audit.flush()
    rows, _total = node.audit.search(limit=1000, **filters)
    return rows


def new_version(node: Mosaic, case: Case) -> None:
    """Replace one instance of the study with changed bytes: its old version stays as history with its blob."""
    with node.database.session() as session:
        sop, series = session.execute(select(Instance.SOPInstanceUID, Series.SeriesInstanceUID)
                                      .join(Series, Instance.series_pk == Series.pk)
                                      .join(Study, Series.study_pk == Study.pk)
                                      .where(Study.StudyInstanceUID == case.study).limit(1)).one()
    changed = make_instance(patient_id=case.patient, study_uid=case.study, series_uid=series, sop_uid=sop,
                            study_date=da(case.study_date), StudyDescription="corrected",
                            PatientBirthDate=da(case.birth) if case.birth else "")
    assert node.ingest.store(to_bytes(changed), door="import").outcome.value == "replaced"


# --- the rules ----------------------------------------------------------------------------


def test_dates_and_rule_matching() -> None:
    assert parse_da("20240229") == date(2024, 2, 29)
    assert parse_da("2024.02.29") == date(2024, 2, 29)
    assert parse_da("2024") is None and parse_da("") is None and parse_da("20241340") is None
    assert add_years(date(2004, 2, 29), 25) == date(2029, 3, 1)  # a leap-day birthday: not a day early
    assert add_years(date(2020, 1, 1), 0.5) == date(2020, 7, 2)
    rules = [RetentionRule(name="cardio", departments=["CARDIO*"], modalities=["us"], keep_years_after_study=10),
             RetentionRule(name="mammo", modalities=["MG"], keep_years_after_study=10, action="tier"),
             RetentionRule(name="rest", facilities=["SITE-A"], keep_years_after_study=5)]
    today = date(2030, 1, 1)

    def facts(department: str, modalities: tuple[str, ...], study_date: str = "20100101",
              facility: str = "SITE-A") -> StudyFacts:
        return StudyFacts(1, "1.2", "P", "", study_date, "19600101", facility, department, modalities)

    echo = evaluate(rules, facts("CARDIOLOGY", ("US", "SR")), today)
    assert (echo.rule, echo.verdict) == ("cardio", Verdict.DUE)
    assert echo.reason == "10 years after the study of 2010-01-01 ended 2020-01-01"
    assert evaluate(rules, facts("CARDIOLOGY", ("CT",)), today).rule == "rest"
    tier = evaluate(rules, facts("RADIOLOGY", ("MG",)), today)
    assert tier.verdict == Verdict.TIER and tier.reason.startswith("tier: not available yet")
    recent = evaluate(rules, facts("RADIOLOGY", ("CT",), "20280101"), today)
    assert recent.verdict == Verdict.KEPT
    assert recent.reason == "until 2033-01-01 (5 years after the study of 2028-01-01)"
    nothing = evaluate(rules, facts("RADIOLOGY", ("CT",), facility="SITE-B"), today)
    assert (nothing.rule, nothing.verdict, nothing.reason) == ("", Verdict.KEPT, "no retention rule matches")
    bad = evaluate(rules, facts("RADIOLOGY", ("CT",), "2010"), today)
    assert bad.verdict == Verdict.KEPT and bad.reason == "StudyDate '2010' is not a date"
    # an age-dependent rule never lets an unknown age fall through to a less careful rule
    unknown = evaluate(RULES, StudyFacts(1, "1.2", "P", "", "20000101", "", "X", "Y", ("CT",)), today)
    assert unknown.verdict == Verdict.KEPT and unknown.rule == "minors"
    assert unknown.reason == "age at the study unknown: PatientBirthDate is missing"


# --- dry run, marking, purging --------------------------------------------------------------


def test_dry_run_lists_exactly_the_due_studies_with_reasons_and_changes_nothing(node: Mosaic) -> None:
    cases = dataset(node)
    by_study = {item.StudyInstanceUID: item for item in node.retention.dry_run()}
    assert set(by_study) == {case.study for case in cases.values()}
    due = {name for name, case in cases.items() if by_study[case.study].verdict == Verdict.DUE}
    assert due == DUE

    adult = by_study[cases["adult_old"].study]
    assert adult.rule == "adults 7 years" and adult.PatientID == "ADULT-OLD"
    assert adult.reason == (f"7 years after the study of {cases['adult_old'].study_date.isoformat()} ended "
                            f"{add_years(cases['adult_old'].study_date, 7).isoformat()}")
    assert not adult.purge_now and adult.purge_after is not None  # 30 days of grace from the mark
    grown = by_study[cases["minor_grown"].study]
    grown_birth, child_birth = cases["minor_grown"].birth, cases["minor_kept"].birth
    assert grown_birth is not None and child_birth is not None
    assert grown.rule == "minors" and f"patient turned 25 on {add_years(grown_birth, 25)}" in grown.reason
    child = by_study[cases["minor_kept"].study]
    assert (child.rule, child.verdict) == ("minors", Verdict.KEPT)
    assert child.reason == f"minor until {add_years(child_birth, 25).isoformat()} (turns 25)"
    recent = by_study[cases["adult_recent"].study]
    assert recent.verdict == Verdict.KEPT and recent.reason.startswith(
        f"until {add_years(cases['adult_recent'].study_date, 7).isoformat()}")
    held = by_study[cases["held_patient"].study]
    assert held.verdict == Verdict.HELD and "on patient HELD-PAT" in held.reason and "litigation 2024-17" in held.reason
    one = by_study[cases["held_study"].study]
    assert one.verdict == Verdict.HELD and "complaint under review" in one.reason
    assert by_study[cases["no_birth_date"].study].reason == "age at the study unknown: PatientBirthDate is missing"

    # nothing changed: no marks, every study and blob still there, nothing deleted
    assert found_studies(node) == {case.study for case in cases.values()}
    assert all(getattr(study_row(node, case.study), "deletion_marked_at", 0) is None for case in cases.values())
    assert not audit(node, action="delete")


def test_run_marks_then_purges_after_the_grace_period(node: Mosaic) -> None:
    cases = dataset(node)
    new_version(node, cases["adult_old"])  # its history must go too
    keys = {name: blob_keys(node, case.study) for name, case in cases.items()}
    assert len(keys["adult_old"]) == 5 and all(blob_file(node, key).is_file() for key in keys["adult_old"])

    first = node.retention.run()
    assert (first.marked, first.purged, first.held, first.kept, first.waiting) == (2, 0, 2, 3, 2)
    for name, case in cases.items():
        row = study_row(node, case.study)
        assert row is not None
        assert (row.deletion_marked_at is not None) == (name in DUE), name
    assert getattr(study_row(node, cases["adult_old"].study), "deletion_reason", "").startswith("adults 7 years: ")
    again = node.retention.run()  # marks once; purges nothing within the grace period
    assert (again.marked, again.purged, again.waiting) == (0, 0, 2)

    later = datetime.now(UTC) + timedelta(days=31)
    dry = {item.StudyInstanceUID: item for item in node.retention.dry_run(later)}
    assert {name for name, case in cases.items() if dry[case.study].purge_now} == DUE

    progress: list[tuple[str, int, int]] = []
    report = node.retention.run(later, progress=lambda *step: progress.append(step))
    assert (report.purged, report.marked, report.waiting, report.failed) == (2, 0, 0, 0)
    assert report.instances == 8
    assert progress[-1] == ("Purging marked studies", 2, 2)
    assert found_studies(node) == {cases[name].study for name in SURVIVORS}
    for name in DUE:
        assert study_row(node, cases[name].study) is None
        assert not any(blob_file(node, key).exists() for key in keys[name]), name
    for name in SURVIVORS:
        assert all(blob_file(node, key).is_file() for key in keys[name]), name
    with node.database.session() as session:
        patients = set(session.scalars(select(Patient.PatientID)).all())
        events = session.execute(select(Event.type, Event.PatientID, Event.StudyInstanceUID)
                                 .where(Event.type.like("%Deleted"))).all()
    assert patients == {"ADULT-NEW", "CHILD", "HELD-PAT", "HELD-STUDY", "NO-DOB"}
    assert sorted(tuple(event) for event in events) == sorted([
        ("StudyDeleted", "ADULT-OLD", cases["adult_old"].study), ("PatientDeleted", "ADULT-OLD", ""),
        ("StudyDeleted", "GROWN", cases["minor_grown"].study), ("PatientDeleted", "GROWN", "")])
    assert VerifyService(node.database, node.blobs).run().orphans == []

    deletions = audit(node, action="delete")
    assert {row.StudyInstanceUID for row in deletions} == {cases[name].study for name in DUE}
    assert all(row.actor == "retention" and row.outcome == "success" for row in deletions)
    rules = {row.StudyInstanceUID: json.loads(row.detail)["rule"] for row in deletions}
    assert rules == {cases["adult_old"].study: "adults 7 years", cases["minor_grown"].study: "minors"}
    assert json.loads(next(row.detail for row in deletions if row.PatientID == "ADULT-OLD"))["versions"] == 1


def test_a_hold_placed_during_the_grace_period_saves_the_study(node: Mosaic) -> None:
    cases = dataset(node)
    node.retention.run()
    node.holds.place(LEGAL, reason="late subpoena", patient_id="GROWN")
    report = node.retention.run(datetime.now(UTC) + timedelta(days=31))
    assert report.purged == 1 and report.purged_studies == [cases["adult_old"].study]
    saved = study_row(node, cases["minor_grown"].study)
    assert saved is not None and saved.deletion_marked_at is None and saved.deletion_reason == ""
    assert all(blob_file(node, key).is_file() for key in blob_keys(node, cases["minor_grown"].study))
    item = next(item for item in node.retention.dry_run() if item.StudyInstanceUID == cases["minor_grown"].study)
    assert item.verdict == Verdict.HELD and "late subpoena" in item.reason


def test_the_delete_service_checks_holds_itself(node: Mosaic, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hold retention did not see (placed after it read the holds) still stops the purge."""
    cases = dataset(node)
    node.retention.run()
    node.holds.place(LEGAL, reason="placed mid-run", study_instance_uid=cases["adult_old"].study)
    monkeypatch.setattr(node.holds, "active", lambda: ActiveHolds({}, {}))
    report = node.retention.run(datetime.now(UTC) + timedelta(days=31))
    assert report.purged_studies == [cases["minor_grown"].study]
    assert report.unmarked == 1 and cases["adult_old"].study in found_studies(node)
    with pytest.raises(UnderLegalHold, match=r"legal hold #1 on patient HELD-PAT.*litigation 2024-17"):
        node.deleter.delete_study(cases["held_patient"].study, reason="test")


def test_with_no_grace_one_run_marks_and_purges_and_qido_no_longer_finds_them(tmp_path: Path) -> None:
    node = make_node(tmp_path / "data", grace_days=0)
    node.start(dicom=False)
    try:
        cases = dataset(node)
        dry = {item.StudyInstanceUID: item for item in node.retention.dry_run()}
        assert {name for name, case in cases.items() if dry[case.study].purge_now} == DUE
        report = node.retention.run()
        assert (report.marked, report.purged, report.held) == (2, 2, 2)
        response = httpx.get(f"http://{LOCALHOST}:{node.http_port}/dicom-web/studies", headers=auth_headers(node))
        assert response.status_code == 200
        assert {study["0020000D"]["Value"][0] for study in response.json()} == {cases[n].study for n in SURVIVORS}
    finally:
        node.stop()


# --- holds and deleting by hand ------------------------------------------------------------


def test_holds_are_validated_listed_and_released(node: Mosaic) -> None:
    cases = dataset(node)
    with pytest.raises(HoldError, match="needs a reason"):
        node.holds.place(LEGAL, reason=" ", patient_id="X")
    with pytest.raises(HoldError, match="either a patient"):
        node.holds.place(LEGAL, reason="r", patient_id="X", study_instance_uid="1.2")
    active = node.holds.holds()
    assert [hold.covers for hold in active] == ["patient HELD-PAT", f"study {cases['held_study'].study}"]
    assert active[1].PatientID == "HELD-STUDY"  # the held study's patient is recorded
    assert node.holds.is_held(cases["held_patient"].study) and not node.holds.is_held(cases["adult_old"].study)
    released = node.holds.release(LEGAL, active[0].id)
    assert released.released_by == "legal-team" and released.released_at is not None
    with pytest.raises(HoldError, match="already released"):
        node.holds.release(LEGAL, active[0].id)
    with pytest.raises(NotFound):
        node.holds.release(LEGAL, 999)
    assert [hold.id for hold in node.holds.holds()] == [active[1].id]
    assert len(node.holds.holds(include_released=True)) == 2
    assert not node.holds.is_held(cases["held_patient"].study)
    # a hold without an issuer covers the Patient ID under every issuer
    store_study(node, Case(uid(), "SHARED", years_ago(40), years_ago(1)), series=1, per_series=1)
    node.holds.place(LEGAL, reason="any issuer", patient_id="SHARED")
    issued = Case(uid(), "SHARED", years_ago(40), years_ago(1))
    node.ingest.store(to_bytes(make_instance(patient_id="SHARED", issuer="HOSP-B", study_uid=issued.study)),
                      door="import")
    assert node.holds.is_held(issued.study)


def test_manual_delete_is_refused_under_a_hold_by_cli_and_http_and_works_after_release(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = make_node(data_dir)
    node.start(dicom=False)
    try:
        cases = dataset(node)
        target = cases["adult_recent"]
        keys = blob_keys(node, target.study)
        base = ["--data-dir", str(data_dir)]

        placed = runner.invoke(cli_app, ["hold", "place", "--study", target.study, "--reason", "records request",
                                         *base], env=WIDE)
        assert placed.exit_code == 0, placed.output
        hold_id = int(placed.output.split("#")[1].split()[0])
        listed = runner.invoke(cli_app, ["hold", "list", *base], env=WIDE)
        assert "records request" in listed.output and "HELD-PAT" in listed.output

        refused = runner.invoke(cli_app, ["delete", "--study", target.study, "--reason", "duplicate", *base],
                                env=WIDE)
        assert refused.exit_code == 1
        assert f"legal hold #{hold_id}" in refused.output and "records request" in refused.output

        client = httpx.Client(base_url=f"http://{LOCALHOST}:{node.http_port}", headers=auth_headers(node))
        conflict = client.delete(f"/api/studies/{target.study}", params={"reason": "duplicate"})
        assert conflict.status_code == 409 and "records request" in conflict.json()["error"]
        assert target.study in found_studies(node)
        assert client.delete(f"/api/studies/{target.study}").status_code == 400  # a reason is required

        released = runner.invoke(cli_app, ["hold", "release", str(hold_id), *base], env=WIDE)
        assert released.exit_code == 0, released.output
        gone = client.request("DELETE", f"/api/studies/{target.study}", json={"reason": "duplicate"})
        assert gone.status_code == 200, gone.text
        assert gone.json()["instances"] == 4 and gone.json()["patient_deleted"] is True
        assert target.study not in found_studies(node)
        assert not any(blob_file(node, key).exists() for key in keys)
        assert client.delete(f"/api/studies/{target.study}", params={"reason": "again"}).status_code == 404

        other = cases["no_birth_date"]
        deleted = runner.invoke(cli_app, ["delete", "--study", other.study, "--reason", "wrong patient", *base],
                                env=WIDE)
        assert deleted.exit_code == 0, deleted.output
        assert "4 instances" in deleted.output and other.study not in found_studies(node)
        missing = runner.invoke(cli_app, ["delete", "--study", other.study, "--reason", "again", *base], env=WIDE)
        assert missing.exit_code == 1 and "not in the index" in missing.output

        holds = audit(node, action="legal-hold")
        changes = sorted((json.loads(row.detail)["change"], row.actor) for row in holds
                         if row.StudyInstanceUID == target.study)
        assert [change for change, _ in changes] == ["placed", "released"]
        assert all(actor.startswith("os:") for _, actor in changes)
        operator = f"os:{getpass.getuser()}"
        deletions = [(row.actor, row.outcome, row.interface) for row in audit(node, action="delete",
                                                                              study=target.study)]
        assert sorted(deletions) == sorted([
            (operator, "denied", "cli"),  # refused by the CLI under the hold
            ("admin", "denied", "http"),  # 409 under the hold
            ("admin", "failure", "http"),  # 400 without a reason
            ("admin", "success", "http"),
            ("admin", "failure", "http"),  # 404: already gone
        ])
        cli_deletion = audit(node, action="delete", study=other.study)
        assert [(row.outcome, json.loads(row.detail)["reason"]) for row in cli_deletion] == [
            ("success", "wrong patient")]
    finally:
        node.stop()


def test_http_retention_and_holds_need_administer(tmp_path: Path) -> None:
    node = make_node(tmp_path / "data", grace_days=0)
    node.start(dicom=False)
    try:
        cases = dataset(node)
        client = httpx.Client(base_url=f"http://{LOCALHOST}:{node.http_port}", headers=auth_headers(node))
        node.identity.add_user("doc", roles=["radiologist"], password="doc-password-123")
        doc = httpx.Client(base_url=client.base_url, headers={
            "Authorization": f"Bearer {node.identity.issue_token('doc')}"})
        for method, path in (("GET", "/api/retention/dry-run"), ("POST", "/api/retention/run"),
                             ("GET", "/api/holds"), ("POST", "/api/holds"), ("DELETE", "/api/holds/1"),
                             ("DELETE", f"/api/studies/{cases['adult_old'].study}?reason=x")):
            refused = doc.request(method, path)
            assert refused.status_code == 403, (method, path, refused.text)

        dry = client.get("/api/retention/dry-run").json()
        assert dry["counts"] == {"due": 2, "held": 2, "kept": 3} and dry["purge_now"] == 2
        assert {item["StudyInstanceUID"] for item in dry["studies"] if item["verdict"] == "due"} == {
            cases[name].study for name in DUE}

        placed = client.post("/api/holds", json={"PatientID": "GROWN", "reason": "audit by regulator"})
        assert placed.status_code == 201, placed.text
        assert client.post("/api/holds", json={"PatientID": "GROWN"}).status_code == 400
        assert [hold["PatientID"] for hold in client.get("/api/holds").json()["holds"]] == [
            "HELD-PAT", "HELD-STUDY", "GROWN"]

        run = client.post("/api/retention/run").json()
        assert (run["purged"], run["held"], run["purged_studies"]) == (1, 3, [cases["adult_old"].study])
        assert client.delete(f"/api/holds/{placed.json()['id']}").json()["released_by"] == "admin"
        assert client.delete(f"/api/holds/{placed.json()['id']}").status_code == 409
        assert client.delete("/api/holds/999").status_code == 404
        started = client.post("/api/retention/run", params={"background": "true"})
        assert started.status_code == 202 and started.headers["location"] == "/api/retention/status"
        wait_until(lambda: not client.get("/api/retention/status").json()["running"], timeout=60,
                   what="background retention run")
        status = client.get("/api/retention/status").json()
        assert status["last"]["purged_studies"] == [cases["minor_grown"].study]
        assert status["total"] >= status["done"] > 0 and status["phase"]
        # each run is a durable job, listed with its report (the synchronous one above too)
        runs = client.get("/api/jobs", params={"kind": "retention"}).json()["jobs"]
        assert [job["state"] for job in runs] == ["done", "done"]
        assert runs[0]["id"] == status["job"]["id"] == started.json()["job"]["id"]
        assert runs[0]["result"]["purged_studies"] == [cases["minor_grown"].study]

        changes = [(json.loads(row.detail)["change"], row.outcome)
                   for row in audit(node, action="legal-hold", user="admin")]
        assert sorted(changes) == [("place", "failure"), ("placed", "success"), ("release", "failure"),
                                   ("release", "failure"), ("released", "success")]
        denied = [row for row in audit(node, user="doc") if row.outcome == "denied"]
        assert len(denied) == 6
    finally:
        node.stop()


def test_cli_retention_dry_run_and_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = make_node(data_dir, grace_days=0)
    cases = dataset(node)
    node.stop()
    config = tmp_path / "mosaic.toml"
    config.write_text('[retention]\ngrace_days = 0\n[[retention.rules]]\nname = "minors"\nmax_age_at_study = 18\n'
                      'keep_years_after_study = 7\nkeep_until_patient_age = 25\n'
                      '[[retention.rules]]\nname = "adults 7 years"\nmin_age_at_study = 18\n'
                      'keep_years_after_study = 7\n')
    base = ["--config", str(config), "--data-dir", str(data_dir)]
    dry = runner.invoke(cli_app, ["retention", "dry-run", *base], env=WIDE)
    assert dry.exit_code == 0, dry.output
    assert cases["adult_old"].study in dry.output and "due (purge now)" in dry.output
    assert "minor until" in dry.output and "litigation 2024-17" in dry.output
    assert "7 studies: 2 due (2 would be purged now), 2 held, 0 tier, 3 kept" in dry.output

    run = runner.invoke(cli_app, ["retention", "run", *base], env=WIDE)
    assert run.exit_code == 0, run.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in run.output.splitlines()
            if line.count("│") >= 3}
    assert (rows["marked"], rows["purged"], rows["held"], rows["kept"]) == ("2", "2", "2", "3")
    assert "8 instances deleted" in run.output
    node = make_node(data_dir)
    try:
        assert found_studies(node) == {cases[name].study for name in SURVIVORS}
        assert {row.actor for row in audit(node, action="delete")} == {"retention"}
    finally:
        node.stop()


# --- the delete service ---------------------------------------------------------------------


def test_deleting_an_instance_or_a_series_fixes_counters_and_keeps_the_rest(node: Mosaic) -> None:
    case = Case(uid(), "PARTS", years_ago(40), years_ago(1))
    store_study(node, case, series=3, per_series=2)  # CT, MR, SR
    new_version(node, case)
    with node.database.session() as session:
        rows = session.execute(select(Series.SeriesInstanceUID, Series.Modality, Instance.SOPInstanceUID)
                               .join(Instance, Instance.series_pk == Series.pk)
                               .join(Study, Series.study_pk == Study.pk)
                               .where(Study.StudyInstanceUID == case.study).order_by(Instance.pk)).all()
    by_modality: dict[str, list[tuple[str, str]]] = {}
    for series_uid, modality, sop in rows:
        by_modality.setdefault(modality, []).append((series_uid, sop))
    before = blob_keys(node, case.study)

    def counters() -> tuple[Any, ...]:
        with node.database.session() as session:
            study = session.scalars(select(Study).where(Study.StudyInstanceUID == case.study)).one()
            patient = session.get(Patient, study.patient_pk)
            assert patient is not None
            return (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances, study.ModalitiesInStudy,
                    patient.NumberOfPatientRelatedStudies, patient.NumberOfPatientRelatedSeries,
                    patient.NumberOfPatientRelatedInstances)

    assert counters() == (3, 6, "\\CT\\MR\\SR\\", 1, 3, 6)
    first_ct = by_modality["CT"][0][1]  # the one with an older version
    result = node.deleter.delete_instance(first_ct, reason="wrong side", actor="test")
    assert (result.instances, result.versions, result.series, result.study_deleted) == (1, 1, 0, False)
    assert counters() == (3, 5, "\\CT\\MR\\SR\\", 1, 3, 5)
    node.deleter.delete_series(by_modality["MR"][0][0], reason="test series", actor="test")
    assert counters() == (2, 3, "\\CT\\SR\\", 1, 2, 3)
    # the last instance of a series takes the series with it
    last_ct = node.deleter.delete_instance(by_modality["CT"][1][1], reason="test", actor="test")
    assert (last_ct.series, last_ct.study_deleted) == (1, False)
    assert counters() == (1, 2, "\\SR\\", 1, 1, 2)
    with node.database.session() as session:
        sop_classes = session.scalar(select(Study.SOPClassesInStudy).where(Study.StudyInstanceUID == case.study))
        types = session.scalars(select(Event.type).where(Event.StudyInstanceUID == case.study,
                                                         Event.type.like("%Deleted"))).all()
    assert sop_classes == "\\1.2.840.10008.5.1.4.1.1.2\\"
    assert sorted(types) == ["InstanceDeleted", "InstanceDeleted", "SeriesDeleted", "SeriesDeleted"]
    remaining = set(blob_keys(node, case.study))
    assert len(remaining) == 2
    for key in before:
        assert blob_file(node, key).exists() == (key in remaining)
    # the last series: the study and its patient go too
    final = node.deleter.delete_series(by_modality["SR"][0][0], reason="test", actor="test")
    assert (final.study_deleted, final.patient_deleted, final.instances) == (True, True, 2)
    assert study_row(node, case.study) is None
    with pytest.raises(NotFound):
        node.deleter.delete_study(case.study, reason="again")


def test_a_blob_that_cannot_be_deleted_is_left_as_an_orphan(node: Mosaic, monkeypatch: pytest.MonkeyPatch) -> None:
    case = Case(uid(), "STUCK", years_ago(40), years_ago(1))
    store_study(node, case, series=1, per_series=2)
    keys = blob_keys(node, case.study)
    original = node.blobs.delete

    def stubborn(key: str) -> None:
        if key == keys[0]:
            raise PermissionError("read-only volume")
        original(key)

    monkeypatch.setattr(node.blobs, "delete", stubborn)
    result = node.deleter.delete_study(case.study, reason="test")
    assert result.blobs_failed == [keys[0]] and result.blobs_deleted == 1
    assert study_row(node, case.study) is None  # never a row without bytes: the row is gone, the bytes stay
    report = VerifyService(node.database, node.blobs).run()
    assert report.orphans == [keys[0]] and report.healthy


# --- PostgreSQL -----------------------------------------------------------------------------


def test_retention_on_postgresql(tmp_path: Path, fresh_postgres_url: str) -> None:
    node = make_node(tmp_path / "data", grace_days=0, index_url=fresh_postgres_url)
    try:
        cases = dataset(node)
        new_version(node, cases["minor_grown"])
        keys = {name: blob_keys(node, cases[name].study) for name in DUE}
        report = node.retention.run()
        assert (report.marked, report.purged, report.held, report.kept) == (2, 2, 2, 3)
        assert found_studies(node) == {cases[name].study for name in SURVIVORS}
        assert not any(blob_file(node, key).exists() for name in DUE for key in keys[name])
        with pytest.raises(UnderLegalHold, match="litigation 2024-17"):
            node.deleter.delete_study(cases["held_patient"].study, reason="test")
        assert {row.StudyInstanceUID for row in audit(node, action="delete")} == {cases[name].study for name in DUE}
    finally:
        node.stop()


# --- the schedule ---------------------------------------------------------------------------


def test_serve_runs_retention_on_its_schedule_and_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = Mosaic(Settings(
        data_dir=tmp_path / "data", http=HttpSettings(port=0), dicom=DicomSettings(port=0),  # type: ignore[call-arg]
        retention=RetentionSettings(rules=RULES, schedule_hours=0.000001)))  # type: ignore[call-arg]
    calls: list[str] = []
    ran = threading.Event()

    def run(now: datetime | None = None, *, progress: Any = None, triggered_by: str = "") -> Any:
        calls.append(triggered_by)
        if len(calls) >= 2:
            ran.set()
        return None

    monkeypatch.setattr(node.retention, "run", run)
    node.start(dicom=False)
    try:
        assert ran.wait(60), "the scheduled run never came"
        schedule = node._retention_schedule
        assert schedule is not None and schedule._thread is not None
        thread = schedule._thread
    finally:
        node.stop()
    assert set(calls) == {"schedule"}
    assert not thread.is_alive() and node._retention_schedule is None
