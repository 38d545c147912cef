"""De-identified export through Mosaic's doors: who may export what, where it goes (zip, folder, a dcmtk
storescp, another Mosaic's STOW-RS), and that the manifest stays inside while the originals stay untouched."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import UltrasoundImageStorage
from typer.testing import CliRunner

from mosaic.app import Mosaic
from mosaic.cli import app as cli
from mosaic.config import DicomSettings, ExportSettings, HttpSettings, SecuritySettings, Settings
from tests.dimse_support import StoreSCP, received_files
from tests.factory import make_instance, to_bytes
from tests.helpers import LOCALHOST, wait_until

STUDY_A = "1.2.826.0.1.3680043.10.1234.701"
STUDY_B = "1.2.826.0.1.3680043.10.1234.702"
STUDY_C = "1.2.826.0.1.3680043.10.1234.703"


@pytest.fixture(scope="module")
def research_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    """A second Mosaic standing in for the research PACS (open: development mode, its own loopback port)."""
    node = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("research"), http=HttpSettings(port=0),
                           dicom=DicomSettings(port=0),
                           security=SecuritySettings(development_mode=True)))  # type: ignore[call-arg]
    node.start(dicom=False)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def destination(tmp_path_factory: pytest.TempPathFactory, dcmtk: dict[str, str]) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path_factory.mktemp("peer") / "received", dcmtk, ae_title="RESEARCH").start()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, research_archive: Mosaic, destination: StoreSCP) -> Iterator[Mosaic]:
    research_url = f"http://{LOCALHOST}:{research_archive.http_port}/dicom-web"
    mosaic = Mosaic(Settings(
        data_dir=tmp_path_factory.mktemp("export"), http=HttpSettings(port=0),
        dicom=DicomSettings(port=0, peers=[destination.peer()]),
        export=ExportSettings(dicomweb_destinations={"research": research_url})))  # type: ignore[call-arg]
    mosaic.start(dicom=False)
    for number in range(2):
        mosaic.ingest.store(to_bytes(make_instance(patient_id="MRN-1", patient_name="Secret^Alice", study_uid=STUDY_A,
                                                   instance_number=number + 1, InstitutionName="General Hospital")),
                            door="import", facility="SITE-A", department="DERMATOLOGY")
    # an ultrasound without BurnedInAnnotation: may show the name in its pixels, so it is left out
    mosaic.ingest.store(to_bytes(make_instance(patient_id="MRN-1", study_uid=STUDY_A, modality="US",
                                               sop_class_uid=UltrasoundImageStorage)),
                        door="import", facility="SITE-A", department="DERMATOLOGY")
    mosaic.ingest.store(to_bytes(make_instance(patient_id="MRN-2", patient_name="Secret^Bob", study_uid=STUDY_B)),
                        door="import", facility="SITE-B", department="PSYCHIATRY")
    mosaic.identity.add_user("scientist", roles=["researcher"], facilities=["SITE-A"])
    mosaic.identity.add_user("doctor", roles=["clinician"])
    yield mosaic
    mosaic.stop()


def api(node: Mosaic, user: str) -> httpx.Client:
    token = node.identity.issue_token(user)
    return httpx.Client(base_url=f"http://{LOCALHOST}:{node.http_port}",
                        headers={"Authorization": f"Bearer {token}"})


def run_export(node: Mosaic, user: str, **body: Any) -> dict[str, Any]:
    with api(node, user) as client:
        started = client.post("/api/exports", json=body)
        assert started.status_code == 202, started.text
        export_id = started.json()["id"]
        wait_until(lambda: client.get(f"/api/exports/{export_id}").json()["state"] in ("done", "failed"),
                   timeout=60, what="export")
        return client.get(f"/api/exports/{export_id}").json()


def blob_hashes(node: Mosaic) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in node.settings.blob_path.rglob("*.dcm")}


def test_a_researcher_exports_a_de_identified_zip(node: Mosaic) -> None:
    before = blob_hashes(node)
    result = run_export(node, "scientist", studies=[STUDY_A], project="skin-ai",
                        destination={"kind": "zip", "target": "cohort.zip"})
    assert result["state"] == "done", result
    assert (result["exported"], len(result["excluded"])) == (2, 1)
    assert "burned-in" in result["excluded"][0]["reason"] or "US" in result["excluded"][0]["reason"]
    archive = zipfile.ZipFile(node.settings.export_path / "cohort.zip")
    names = archive.namelist()
    assert len(names) == 2 and all(name.endswith(".dcm") for name in names)  # no manifest inside
    for name in names:
        data = archive.read(name)
        assert b"Secret" not in data and b"MRN-1" not in data and b"General Hospital" not in data
        dataset = pydicom.dcmread(io.BytesIO(data))
        assert dataset.PatientIdentityRemoved == "YES"
        assert dataset.PatientID.startswith("ANON-") and dataset.StudyInstanceUID != STUDY_A
    assert blob_hashes(node) == before  # originals untouched
    node.audit.flush()
    exports = [row for row in node.audit.search(action="export", limit=100)[0] if row.actor == "scientist"]
    assert exports and exports[0].StudyInstanceUID == STUDY_A and exports[0].PatientID == "MRN-1"
    # the manifest stays inside Mosaic: only an administrator reads it (re-identification)
    with api(node, "scientist") as client:
        assert client.get(f"/api/exports/{result['id']}/manifest").status_code == 403
    with api(node, "admin") as client:
        manifest = client.get(f"/api/exports/{result['id']}/manifest").json()["entries"]
    pseudonym = pydicom.dcmread(io.BytesIO(archive.read(names[0]))).PatientID
    assert {"kind": "patient", "original": "MRN-1", "pseudonym": pseudonym} in manifest


def test_the_same_patient_keeps_one_pseudonym_across_exports_of_a_project(node: Mosaic) -> None:
    first = run_export(node, "admin", studies=[STUDY_A], project="longitudinal",
                       destination={"kind": "folder", "target": "first"})
    second = run_export(node, "admin", studies=[STUDY_A], project="longitudinal",
                        destination={"kind": "folder", "target": "second"})
    other = run_export(node, "admin", studies=[STUDY_A], project="another-project",
                       destination={"kind": "folder", "target": "other"})
    ids = {}
    for name, result in (("first", first), ("second", second), ("other", other)):
        assert result["state"] == "done", result
        files = sorted((node.settings.export_path / name).rglob("*.dcm"))
        ids[name] = {str(pydicom.dcmread(path).PatientID) for path in files}
    assert ids["first"] == ids["second"] and len(ids["first"]) == 1
    assert ids["other"] != ids["first"]


@pytest.mark.parametrize(("user", "body", "status", "words"), [
    ("doctor", {"studies": [STUDY_A], "project": "p", "destination": {"kind": "zip", "target": "x.zip"}}, 403,
     "may not export"),
    ("scientist", {"studies": [STUDY_B], "project": "p", "destination": {"kind": "zip", "target": "x.zip"}}, 404,
     "not in the archive"),
    ("scientist", {"studies": [STUDY_A], "project": "p", "destination": {"kind": "zip", "target": "../../etc/x"}},
     400, "plain file or folder name"),
    ("scientist", {"studies": [STUDY_A], "project": "p", "destination": {"kind": "peer", "target": "NOBODY"}}, 400,
     "not a configured DICOM peer"),
    ("scientist", {"studies": [STUDY_A], "project": "p", "destination": {"kind": "zip", "target": "y.zip"},
                   "options": {"keep_names": True}}, 400, "unknown de-identification option"),
])
def test_exports_that_must_not_happen(node: Mosaic, user: str, body: dict[str, Any], status: int,
                                      words: str) -> None:
    with api(node, user) as client:
        response = client.post("/api/exports", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert not (node.settings.export_path / "x.zip").exists()


def test_export_to_a_dicom_peer(node: Mosaic, destination: StoreSCP) -> None:
    result = run_export(node, "admin", studies=[STUDY_A], project="peer",
                        destination={"kind": "peer", "target": "RESEARCH"})
    assert result["state"] == "done" and result["exported"] == 2, result
    received = received_files(destination.folder)
    assert len(received) == 2 and all(not uid.startswith("1.2.826.0.1.3680043.10.1234") for uid in received)
    for path in received.values():
        assert pydicom.dcmread(path).PatientName != "Secret^Alice"


def test_export_to_a_dicomweb_destination(node: Mosaic, research_archive: Mosaic) -> None:
    result = run_export(node, "admin", studies=[STUDY_A], project="stow",
                        destination={"kind": "dicomweb", "target": "research"})
    assert result["state"] == "done" and result["exported"] == 2, result
    studies = httpx.get(f"http://{LOCALHOST}:{research_archive.http_port}/dicom-web/studies").json()
    assert len(studies) == 1
    assert studies[0]["00100020"]["Value"][0].startswith("ANON-")
    assert studies[0]["0020000D"]["Value"][0] != STUDY_A


def test_cli_export_with_options(node: Mosaic, tmp_path: Path) -> None:
    # the command line works on the same data folder as the running node
    target = tmp_path / "cli-export"
    result = CliRunner().invoke(cli, ["export", "--study", STUDY_A, "--project", "cli", "--to", str(target),
                                      "--retain-patient-characteristics", "--data-dir",
                                      str(node.settings.data_dir)])
    assert result.exit_code == 0, result.output
    assert "2 instances exported, 1 excluded" in " ".join(result.output.split())
    files = list(target.rglob("*.dcm"))
    assert len(files) == 2 and pydicom.dcmread(files[0]).PatientSex == "F"
    missing = CliRunner().invoke(cli, ["export", "--study", "1.2.3.4", "--project", "cli", "--to",
                                       str(tmp_path / "none"), "--data-dir", str(node.settings.data_dir)])
    assert missing.exit_code == 1 and "not in the archive" in missing.output


def test_a_study_without_images_is_exported_too(node: Mosaic) -> None:
    """A study of structured reports only (no Rows) is a study like any other for export."""
    report = make_instance(patient_id="MRN-3", study_uid=STUDY_C, modality="SR", rows=0, columns=0,
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11")
    node.ingest.store(to_bytes(report), door="import", facility="SITE-A", department="DERMATOLOGY")
    result = run_export(node, "admin", studies=[STUDY_C], project="reports",
                        destination={"kind": "folder", "target": "reports"})
    assert result["state"] == "done" and result["exported"] == 1, result


def test_two_exports_to_one_name_never_mix(node: Mosaic) -> None:
    """Each export writes under a partial name of its own, so the second finds the first's output and fails
    instead of publishing a mixture."""
    with api(node, "admin") as client:
        body = {"studies": [STUDY_A], "project": "twice", "destination": {"kind": "zip", "target": "twice.zip"}}
        first, second = client.post("/api/exports", json=body), client.post("/api/exports", json=body)
        assert first.status_code == second.status_code == 202, (first.text, second.text)
        ids = [started.json()["id"] for started in (first, second)]
        wait_until(lambda: all(client.get(f"/api/exports/{export_id}").json()["state"] in ("done", "failed")
                               for export_id in ids), timeout=60, what="both exports")
        states = sorted(client.get(f"/api/exports/{export_id}").json()["state"] for export_id in ids)
    assert states == ["done", "failed"]
    with zipfile.ZipFile(node.settings.export_path / "twice.zip") as archive:
        assert len(archive.namelist()) == 2
    assert not list(node.settings.export_path.glob(".twice.zip*"))


def test_the_institution_and_full_dates_options_keep_what_they_name(node: Mosaic, tmp_path: Path) -> None:
    """PS3.15 E.3.10 and E.3.6 (Retain Institution Identity, Retain Longitudinal Temporal Information with Full
    Dates) from the API and the command line; without them the institution is removed and the dates shifted."""
    kept = run_export(node, "admin", studies=[STUDY_A], project="options",
                      destination={"kind": "folder", "target": "options-kept"},
                      options={"retain_institution_identity": True, "retain_longitudinal_full_dates": True})
    assert kept["state"] == "done" and kept["exported"] == 2, kept
    dataset = pydicom.dcmread(next((node.settings.export_path / "options-kept").rglob("*.dcm")))
    assert (dataset.InstitutionName, dataset.StudyDate) == ("General Hospital", "20240101")
    assert dataset.PatientName != "Secret^Alice"
    codes = {item.CodeValue for item in dataset.DeidentificationMethodCodeSequence}
    assert {"113112", "113106"} <= codes and "113107" not in codes
    with api(node, "admin") as client:
        both = client.post("/api/exports", json={"studies": [STUDY_A], "project": "options", "destination": {
            "kind": "folder", "target": "options-both"}, "options": {"retain_longitudinal_full_dates": True,
                                                                     "retain_longitudinal_modified_dates": True}})
    assert both.status_code == 400 and "one of the two" in both.json()["error"]
    target = tmp_path / "cli-options"
    result = CliRunner().invoke(cli, ["export", "--study", STUDY_A, "--project", "options", "--to", str(target),
                                      "--retain-institution-identity", "--keep-dates", "--data-dir",
                                      str(node.settings.data_dir)])
    assert result.exit_code == 0, result.output
    dataset = pydicom.dcmread(next(target.rglob("*.dcm")))
    assert (dataset.InstitutionName, dataset.StudyDate) == ("General Hospital", "20240101")
    default = CliRunner().invoke(cli, ["export", "--study", STUDY_A, "--project", "options", "--to",
                                       str(tmp_path / "cli-default"), "--data-dir", str(node.settings.data_dir)])
    assert default.exit_code == 0, default.output
    dataset = pydicom.dcmread(next((tmp_path / "cli-default").rglob("*.dcm")))
    assert dataset.get("InstitutionName") in (None, "", "ANONYMIZED")  # PS3.15: X or dummy value
    assert dataset.StudyDate != "20240101"  # shifted by the project's per-patient offset
