"""A patient shared by two sites (one PatientID + issuer, studies at SITE-A and SITE-B): a caller scoped to
SITE-A learns of that patient only what SITE-A's own studies say, through every door, and may create studies only
inside its own scope.

The model (docs/architecture.md, "shared patients"): the identity (PatientID + IssuerOfPatientID) is shared, so the
record stays longitudinal; every other value in an answer (name, birth date, sex, a study's description, accession,
institution) comes from studies the caller may see. dcmtk's findscu/storescu for DIMSE, httpx for DICOMweb."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from sqlalchemy import select

from mosaic.app import Mosaic
from mosaic.config import DicomPeer
from mosaic.index.attributes import COMPUTED_KEYS, KEYS_OF_LEVEL
from mosaic.index.schema import Instance, Series, Study
from tests.dimse_support import LOCALHOST, MOSAIC_AE, run_tool, start_node
from tests.factory import make_instance, to_bytes

pytestmark = pytest.mark.dcmtk

ISSUER = "HOSPITAL-MPI"
SHARED = "SHARED-1"
STUDY_A = "1.2.826.0.1.3680043.10.1234.601"
STUDY_B = "1.2.826.0.1.3680043.10.1234.602"
B_VALUES = ("SITEB^NAME", "19500101", "PSYCH EVALUATION", "B-ACC-9", "SITE-B", STUDY_B)
"""What only SITE-B's study says: none of it may reach a SITE-A caller."""


def peer(ae_title: str, **values: object) -> DicomPeer:
    return DicomPeer(ae_title=ae_title, host=LOCALHOST, port=104, **values)  # type: ignore[arg-type]


@dataclass
class Archive:
    node: Mosaic
    work: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, dcmtk: dict[str, str]) -> Iterator[Archive]:
    """SITE-B stores first (so the patient record was made from its objects), then SITE-A; a SITE-A
    workstation may find and store within SITE-A only."""
    work = tmp_path_factory.mktemp("shared-patients")
    node = start_node(work / "mosaic", allow_unknown_calling_aes=False, peers=[
        peer("CAM_A", facility="SITE-A"), peer("CAM_B", facility="SITE-B"),
        peer("WS_A", scope_facilities=["SITE-A"]),
    ])
    node.identity.add_user("clin.a", roles=["clinician"], password="clin-a-password", facilities=["SITE-A"])
    node.identity.add_user("tech.a", roles=["technologist"], password="tech-a-password", facilities=["SITE-A"])
    instances = (
        ("CAM_B", make_instance(patient_id=SHARED, issuer=ISSUER, patient_name="SITEB^NAME", study_uid=STUDY_B,
                                accession="B-ACC-9", StudyDescription="PSYCH EVALUATION", InstitutionName="SITE-B",
                                PatientBirthDate="19500101")),
        ("CAM_A", make_instance(patient_id=SHARED, issuer=ISSUER, patient_name="SITEA^NAME", study_uid=STUDY_A,
                                accession="A-ACC-1", StudyDescription="DERM PHOTO", InstitutionName="SITE-A",
                                PatientBirthDate="19600202")),
    )
    for ae_title, instance in instances:
        path = work / f"{ae_title}.dcm"
        path.write_bytes(to_bytes(instance))
        result = run_tool("storescu", "-aet", ae_title, "-aec", MOSAIC_AE, LOCALHOST, str(node.dicom_port), path,
                          env=dcmtk)
        assert result.returncode == 0, result.stdout + result.stderr
    yield Archive(node, work, dcmtk)
    node.stop()


def find(archive: Archive, name: str, *keys: str, model: str = "-P") -> list[pydicom.Dataset]:
    folder = archive.work / name
    folder.mkdir()
    args: list[str | Path] = [model, "-X", "-od", folder]
    for key in keys:
        args += ["-k", key]
    result = run_tool("findscu", *args, "-aet", "WS_A", "-aec", MOSAIC_AE, LOCALHOST,
                      str(archive.node.dicom_port), env=archive.env)
    assert result.returncode == 0, result.stdout + result.stderr
    return [pydicom.dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


def assert_nothing_of_site_b(answers: object) -> None:
    text = str(answers)
    leaked = [value for value in B_VALUES if value in text]
    assert not leaked, f"SITE-B's values reached a SITE-A caller: {leaked}\n{text}"


def test_patient_level_find_carries_nothing_of_the_other_sites_study(archive: Archive) -> None:
    answers = find(archive, "patient-level", "QueryRetrieveLevel=PATIENT", f"PatientID={SHARED}", "PatientName",
                   "PatientBirthDate", "StudyDescription", "AccessionNumber", "InstitutionName", "StudyInstanceUID",
                   "NumberOfPatientRelatedStudies")
    assert len(answers) == 1
    answer = answers[0]
    assert (str(answer.PatientName), answer.PatientBirthDate) == ("SITEA^NAME", "19600202")
    assert answer.NumberOfPatientRelatedStudies == 1
    assert_nothing_of_site_b(answers)
    archive.node.audit.flush()
    details = [json.loads(record.detail) for record in
               archive.node.audit.search(limit=100, user="WS_A", action="query")[0]]
    patient_level = [detail for detail in details if detail.get("level") == "PATIENT"]
    assert patient_level and patient_level[-1]["studies"] == [STUDY_A]  # the audit names what the answer drew on
    assert patient_level[-1]["patients"] == [f"{SHARED}^^^{ISSUER}"]


def test_the_other_sites_demographics_match_nothing(archive: Archive) -> None:
    """Matching on SITE-B's name or birth date would confirm them: a scoped caller matches its own studies' values."""
    assert find(archive, "by-b-name", "QueryRetrieveLevel=PATIENT", "PatientName=SITEB*", "PatientID") == []
    assert find(archive, "by-b-birth", "QueryRetrieveLevel=STUDY", "PatientBirthDate=19500101",
                "StudyInstanceUID", model="-S") == []
    own = find(archive, "by-a-name", "QueryRetrieveLevel=STUDY", "PatientName=SITEA*", "StudyInstanceUID",
               model="-S")
    assert [answer.StudyInstanceUID for answer in own] == [STUDY_A]


def test_study_level_find_shows_the_patient_as_the_own_study_describes_it(archive: Archive) -> None:
    answers = find(archive, "study-level", "QueryRetrieveLevel=STUDY", f"PatientID={SHARED}", "PatientName",
                   "PatientBirthDate", "StudyInstanceUID", "StudyDescription", model="-S")
    assert [(answer.StudyInstanceUID, str(answer.PatientName), answer.PatientBirthDate) for answer in answers] == [
        (STUDY_A, "SITEA^NAME", "19600202")]
    assert_nothing_of_site_b(answers)


def test_qido_shows_a_scoped_clinician_only_the_own_sites_demographics(archive: Archive) -> None:
    base = f"http://{LOCALHOST}:{archive.node.http_port}/dicom-web"
    with httpx.Client(base_url=base, auth=("clin.a", "clin-a-password"), timeout=60) as client:
        studies = client.get("/studies", params={"PatientID": SHARED,
                                                 "includefield": "PatientName,PatientBirthDate,StudyDescription"})
        assert studies.status_code == 200, studies.text
        assert [item["0020000D"]["Value"][0] for item in studies.json()] == [STUDY_A]
        assert studies.json()[0]["00100010"]["Value"][0]["Alphabetic"] == "SITEA^NAME"
        assert_nothing_of_site_b(studies.text)
        guessed = client.get("/studies", params={"PatientName": "SITEB*"})
        assert guessed.status_code in (200, 204) and (guessed.status_code == 204 or guessed.json() == [])


def test_a_scoped_sender_cannot_label_a_study_for_another_site(archive: Archive) -> None:
    """InstitutionName=SITE-B from a SITE-A technologist must not put a study into SITE-B's lists; a study without
    an institution is labelled with the sender's only facility."""
    foreign = make_instance(patient_id="NEW-9", study_uid="1.2.826.0.1.3680043.10.1234.603",
                            InstitutionName="SITE-B")
    unlabelled = make_instance(patient_id="NEW-10", study_uid="1.2.826.0.1.3680043.10.1234.604")
    base = f"http://{LOCALHOST}:{archive.node.http_port}/dicom-web"
    with httpx.Client(base_url=base, auth=("tech.a", "tech-a-password"), timeout=60) as client:
        for instance in (foreign, unlabelled):
            body = (b"--b\r\nContent-Type: application/dicom\r\n\r\n" + to_bytes(instance) + b"\r\n--b--\r\n")
            answer = client.post("/studies", content=body,
                                 headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
            expected = 409 if instance is foreign else 200
            assert answer.status_code == expected, answer.text
    with archive.node.database.session() as session:
        labels = {row.StudyInstanceUID: row.facility for row in session.query(Study)}
    assert "1.2.826.0.1.3680043.10.1234.603" not in labels
    assert labels["1.2.826.0.1.3680043.10.1234.604"] == "SITE-A"


def test_a_scoped_peer_cannot_label_a_study_for_another_site(archive: Archive) -> None:
    path = archive.work / "foreign-by-peer.dcm"
    path.write_bytes(to_bytes(make_instance(patient_id="NEW-11", study_uid="1.2.826.0.1.3680043.10.1234.605",
                                            InstitutionName="SITE-B")))
    result = run_tool("storescu", "-v", "-aet", "WS_A", "-aec", MOSAIC_AE, LOCALHOST,
                      str(archive.node.dicom_port), path, env=archive.env)
    assert "Status: 0x124" in result.stdout + result.stderr, result.stdout + result.stderr
    with archive.node.database.session() as session:
        assert session.query(Study).filter_by(StudyInstanceUID="1.2.826.0.1.3680043.10.1234.605").count() == 0


def test_the_landing_page_shows_a_scoped_clinician_the_own_sites_name(archive: Archive) -> None:
    page = httpx.get(f"http://{LOCALHOST}:{archive.node.http_port}/", auth=("clin.a", "clin-a-password"), timeout=60)
    assert page.status_code == 200, page.text
    assert "SITEA NAME" in page.text
    assert "SITEB" not in page.text


LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def sweep_identifier(level: str, **matching: str) -> Dataset:
    """Every return key Mosaic knows, of this level and the ones above it (PS3.4 C.4.1.1.3.2 relational-like
    answers are not supported, but a peer may ask), with the given matching keys."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for upper in LEVELS[: LEVELS.index(level) + 1]:
        for keyword in (*KEYS_OF_LEVEL[upper], *COMPUTED_KEYS[upper]):
            setattr(identifier, keyword, None)
    for keyword, value in matching.items():
        setattr(identifier, keyword, value)
    return identifier


def test_a_sweep_of_every_level_model_and_key_reveals_nothing_of_the_other_site(archive: Archive) -> None:
    """Both query models, every level, every return key, universal matching and matching on the shared patient
    (and on SITE-B's own study): each answer comes from SITE-A's study only, and its counts count only it."""
    ae = AE(ae_title="WS_A")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    association = ae.associate(LOCALHOST, archive.node.dicom_port, ae_title=MOSAIC_AE)
    assert association.is_established
    answers: list[Dataset] = []
    try:
        for model in (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind):
            for level in LEVELS[model is StudyRootQueryRetrieveInformationModelFind:]:
                for matching in ({}, {"PatientID": SHARED}, {"PatientID": SHARED, "StudyInstanceUID": STUDY_B}):
                    for status, identifier in association.send_c_find(sweep_identifier(level, **matching), model):
                        assert status.Status in (0x0000, 0xFF00, 0xFF01), (level, matching, status)
                        if identifier is not None:
                            answers.append(identifier)
    finally:
        association.release()
    assert answers  # SITE-A's study is found
    assert_nothing_of_site_b(answers)
    visible = {answer.StudyInstanceUID for answer in answers
               if answer.QueryRetrieveLevel == "STUDY" and answer.PatientID == SHARED}
    assert STUDY_A in visible
    for answer in answers:
        if answer.QueryRetrieveLevel == "PATIENT" and answer.PatientID == SHARED:
            assert int(answer.NumberOfPatientRelatedStudies) == len(visible)  # SITE-B's study is not counted


def test_a_scoped_peer_cannot_get_the_other_sites_study_at_any_level(archive: Archive) -> None:
    with archive.node.database.session() as session:
        series_b, sop_b = session.execute(
            select(Series.SeriesInstanceUID, Instance.SOPInstanceUID).join_from(Series, Instance)
            .join_from(Series, Study).where(Study.StudyInstanceUID == STUDY_B)).one()
    received: list[str] = []

    def on_store(event: object) -> int:
        received.append(str(event.dataset.SOPInstanceUID))  # type: ignore[attr-defined]
        return 0x0000

    ae = AE(ae_title="WS_A")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    association = ae.associate(LOCALHOST, archive.node.dicom_port, ae_title=MOSAIC_AE,
                               ext_neg=[build_role(CTImageStorage, scp_role=True)],
                               evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert association.is_established
    try:
        for model in (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet):
            for level, keys in (("STUDY", {"StudyInstanceUID": STUDY_B}),
                                ("SERIES", {"StudyInstanceUID": STUDY_B, "SeriesInstanceUID": series_b}),
                                ("IMAGE", {"StudyInstanceUID": STUDY_B, "SeriesInstanceUID": series_b,
                                           "SOPInstanceUID": sop_b}),
                                ("PATIENT", {"PatientID": SHARED})):
                if level == "PATIENT" and model is StudyRootQueryRetrieveInformationModelGet:
                    continue
                identifier = Dataset()
                identifier.QueryRetrieveLevel = level
                if model is PatientRootQueryRetrieveInformationModelGet:
                    identifier.PatientID = SHARED
                for keyword, value in keys.items():
                    setattr(identifier, keyword, value)
                list(association.send_c_get(identifier, model))
    finally:
        association.release()
    sop_a = received and received[0]
    assert sop_b not in received, "SITE-B's instance went to a SITE-A peer"
    assert all(uid == sop_a for uid in received)  # at most SITE-A's own instance (the PATIENT-level C-GET)
