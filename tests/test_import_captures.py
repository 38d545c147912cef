"""`mosaic import` of a folder of photos, a video and a PDF with sidecars (capture.json, capture.csv,
<file>.json): each is captured into the patient's record as a standard DICOM object of one study per folder, the
sidecars themselves are not stored, and a file no sidecar names is refused by name."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from mosaic.app import Mosaic
from mosaic.cli import app
from mosaic.config import Settings
from mosaic.index.query import Scope
from mosaic.index.schema import Instance
from mosaic.services.origin import IngestOrigin
from tests.factory import make_bytes
from tests.test_reports import tiny_pdf

runner = CliRunner()


def summary(output: str) -> dict[str, str]:
    return {line.split("│")[1].strip(): line.split("│")[2].strip() for line in output.splitlines()
            if line.count("│") >= 3}


def photo(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg (Debian) makes the test's video clip")
def test_a_folder_with_sidecars_is_captured_into_the_patient_s_record(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert runner.invoke(app, ["init", "--data-dir", str(data_dir)]).exit_code == 0
    node = Mosaic(Settings(data_dir=data_dir))
    node.ingest.store(make_bytes(patient_id="D55", issuer="HOSP", patient_name="Ngata^Aroha",
                                 study_uid="1.2.826.0.1.3680043.10.1234.59.1"), IngestOrigin(door="test"))
    node.stop()
    visit = tmp_path / "derm-visit"
    visit.mkdir()
    (visit / "mole-1.jpg").write_bytes(photo((120, 80, 60)))
    (visit / "mole-2.jpg").write_bytes(photo((125, 85, 65)))
    (visit / "capture.json").write_text(json.dumps({
        "PatientID": "D55", "IssuerOfPatientID": "HOSP", "encounter": "ENC-42", "specialty": "dermatology",
        "files": {"mole-2.jpg": {"body_site": "Left shoulder", "laterality": "L"}}}))
    (visit / "mole-1.jpg.json").write_text(json.dumps({"description": "Naevus, back", "body_site": "Back"}))
    clinic = tmp_path / "endoscopy"
    clinic.mkdir()
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=duration=1:size=160x120:rate=10",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-profile:v", "high", str(clinic / "scope.mp4")],
                   check=True)
    (clinic / "letter.pdf").write_bytes(tiny_pdf())
    (clinic / "unnamed.pdf").write_bytes(tiny_pdf() + b"\n")
    (clinic / "capture.csv").write_text("file,PatientID,IssuerOfPatientID,specialty,video_kind,description\n"
                                        "scope.mp4,D55,HOSP,endoscopy,endoscopic,Colonoscopy\n"
                                        "letter.pdf,D55,HOSP,endoscopy,,Referral letter\n")

    first = runner.invoke(app, ["import", str(visit), str(clinic), "--data-dir", str(data_dir)],
                          env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    lines = summary(first.output)
    assert lines["stored"] == "4" and lines["rejected"] == "1", first.output
    assert "unnamed.pdf" in first.output and "names its patient" in first.output

    node = Mosaic(Settings(data_dir=data_dir))
    try:
        with node.database.session() as session:
            uids = list(session.scalars(select(Instance.SOPInstanceUID)))
        objects = [pydicom.dcmread(node.retrieve.open(found)) for found in
                   node.retrieve.instances_by_uid(uids, scope=Scope.everything()).values()]
    finally:
        node.stop()
    captured = [ds for ds in objects if ds.PatientID == "D55" and ds.Modality != "CT"]
    assert len(captured) == 4
    photos = [ds for ds in captured if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.4"]
    assert len({str(ds.StudyInstanceUID) for ds in photos}) == 1  # one encounter, one study
    assert {str(ds.AdmissionID) for ds in photos} == {"ENC-42"}
    video = next(ds for ds in captured if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.1.1")  # Video Endoscopic
    assert video.file_meta.TransferSyntaxUID.startswith("1.2.840.10008.1.2.4.10")
    document = next(ds for ds in captured if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1")
    assert document.StudyInstanceUID == video.StudyInstanceUID != photos[0].StudyInstanceUID  # one study per folder
    assert all(str(ds.PatientName) == "Ngata^Aroha" for ds in captured)

    again = runner.invoke(app, ["import", str(visit), str(clinic), "--data-dir", str(data_dir)],
                          env={"COLUMNS": "200"})
    assert summary(again.output)["stored"] == "0", again.output  # the encounter's photos: already stored
