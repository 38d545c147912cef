"""Orders in, worklist out: HL7 ORM^O01 over MLLP schedules procedure steps that modalities find with a Modality
Worklist C-FIND — dcmtk's `findscu -W` and pynetdicom — matched as PS3.4 K.6.1.2 says (station AE, modality, date
and time ranges on the step's start, patient names without regard to case, accession), within the peer's scope."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import hl7
import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from mosaic.app import Mosaic
from mosaic.config import DicomPeer, DicomSettings, Hl7Sender, Hl7Settings, HttpSettings, Settings

LOCALHOST = "127.0.0.1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    peers = [DicomPeer(ae_title="CT01", host=LOCALHOST, port=11112, scope_facilities=["north"]),
             DicomPeer(ae_title="SOUTHMR", host=LOCALHOST, port=11112, scope_facilities=["south"])]
    settings = Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0, peers=peers),
                        hl7=Hl7Settings(port=0, senders=[Hl7Sender(application="RIS", may_send=["ORM", "OMI", "ADT"],
                                                                   issuer="GENHOSP", patient_facility="north")]))
    mosaic = Mosaic(settings)
    mosaic.start(http=False)
    yield mosaic
    mosaic.stop()


def orm(control: str, accession: str, *, patient: str = "MRN1^^^GENHOSP", name: str = "Doe^John",
        modality: str = "CT", station: str = "CT01", start: str = "202612080900", procedure: str = "CTHEAD",
        study_uid: str = "", application: str = "RIS", visit: str = "") -> str:
    segments = [
        f"MSH|^~\\&|{application}|GENHOSP|MOSAIC|RAD|20261207||ORM^O01^ORM_O01|{accession}{control}|P|2.3.1",
        f"PID|1||{patient}||{name}||19600101|M",
        "PV1|1|O||||||1234^Referring^Rita" + (f"|||||||||||{visit}" if visit else ""),
        f"ORC|{control}|P{accession}|F{accession}||SC||^^^{start}^^R",
        f"OBR|1|P{accession}|F{accession}|{procedure}^CT head without contrast^L||||||||||||||{accession}|"
        f"RP{accession}|SPS{accession}|{station}|||{modality}",
    ]
    if study_uid:
        segments.append(f"ZDS|{study_uid}^100^Application^DICOM")
    return "\r".join(segments) + "\r"


def send(node: Mosaic, *messages: str) -> list[str]:
    with MLLPClient(LOCALHOST, node.hl7_port, encoding="latin-1") as client:  # no MSH-18: the 8859/1 default
        return [str(hl7.parse(client.send_message(message).decode())["MSA.F1"]) for message in messages]


def worklist(node: Mosaic, calling: str = "CT01", **step: str) -> tuple[list[Dataset], int]:
    identifier = Dataset()
    identifier.PatientName = step.pop("PatientName", "")
    identifier.PatientID = ""
    identifier.AccessionNumber = step.pop("AccessionNumber", "")
    identifier.StudyInstanceUID = ""
    identifier.RequestedProcedureDescription = ""
    identifier.ReferringPhysicianName = ""
    identifier.RequestedProcedureID = ""
    identifier.RequestedProcedurePriority = ""
    item = Dataset()
    for keyword in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                    "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID", "ScheduledStationName",
                    "ScheduledProcedureStepLocation"):
        setattr(item, keyword, step.get(keyword, ""))
    identifier.ScheduledProcedureStepSequence = [item]
    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityWorklistInformationFind)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=node.settings.dicom.ae_title)
    assert association.is_established
    try:
        found, final = [], 0
        for status, response in association.send_c_find(identifier, ModalityWorklistInformationFind):
            if status and status.Status in (0xFF00, 0xFF01):
                found.append(response)
            elif status:
                final = int(status.Status)
        return found, final
    finally:
        association.release()


def test_orders_appear_on_the_worklist_and_a_cancel_removes_them(node: Mosaic) -> None:
    assert send(node, orm("NW", "A1001", study_uid="1.2.826.0.1.3680043.10.1234.98"),
                orm("NW", "A1002", patient="MRN2^^^GENHOSP", name="Roe^Jane", modality="MR", station="MR01",
                    start="202612091430", procedure="MRKNEE")) == ["AA", "AA"]
    found, status = worklist(node)
    assert status == 0 and [str(item.AccessionNumber) for item in found] == ["A1001", "A1002"]
    first = found[0]
    assert str(first.PatientName) == "Doe^John" and first.StudyInstanceUID == "1.2.826.0.1.3680043.10.1234.98"
    assert str(first.ReferringPhysicianName) == "Referring^Rita"
    step = first.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate,
            step.ScheduledProcedureStepStartTime, step.ScheduledProcedureStepID) == (
        "CT", "CT01", "20261208", "0900", "SPSA1001")
    assert found[1].StudyInstanceUID and found[1].StudyInstanceUID != first.StudyInstanceUID  # generated

    assert [str(item.AccessionNumber) for item in worklist(node, Modality="MR")[0]] == ["A1002"]
    assert [str(item.AccessionNumber) for item in worklist(node, ScheduledStationAETitle="CT01")[0]] == ["A1001"]
    assert [str(item.AccessionNumber) for item in worklist(node, PatientName="roe*")[0]] == ["A1002"]
    assert [str(item.AccessionNumber) for item in
            worklist(node, ScheduledProcedureStepStartDate="20261209-20261231")[0]] == ["A1002"]
    assert [str(item.AccessionNumber) for item in worklist(node, ScheduledProcedureStepStartDate="20261208",
                                                           ScheduledProcedureStepStartTime="0800-1000")[0]] == ["A1001"]

    assert send(node, orm("XO", "A1001", start="202612081100")) == ["AA"]  # rescheduled
    [moved] = worklist(node, AccessionNumber="A1001")[0]
    assert moved.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "1100"
    assert send(node, orm("CA", "A1001")) == ["AA"]
    assert [str(item.AccessionNumber) for item in worklist(node)[0]] == ["A1002"]
    assert send(node, orm("CA", "A9999")) == ["AE"]  # cancelling what is not there changes nothing


def test_findscu_reads_the_worklist(node: Mosaic, dcmtk: dict[str, str], tmp_path: Path) -> None:
    assert send(node, orm("NW", "B2001", name="Müller^Jürgen")) == ["AA"]
    out = tmp_path / "responses"
    out.mkdir()
    result = subprocess.run(
        ["findscu", "-W", "-aet", "CT01", "-aec", node.settings.dicom.ae_title, "-X", "-od", str(out),
         "-k", "0010,0010", "-k", "0010,0020", "-k", "0008,0050", "-k", "0020,000D",
         "-k", "(0040,0100)[0].0008,0060=CT", "-k", "(0040,0100)[0].0040,0002=20261201-20261231",
         "-k", "(0040,0100)[0].0040,0001", LOCALHOST, str(node.dicom_port)],
        capture_output=True, text=True, env=dcmtk, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    [response] = [pydicom.dcmread(path) for path in sorted(out.iterdir())]
    assert response.AccessionNumber == "B2001" and str(response.PatientName) == "Müller^Jürgen"
    assert response.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CT01"


def test_a_peer_sees_only_its_facilities_and_a_bad_date_is_refused(node: Mosaic) -> None:
    assert send(node, orm("NW", "C3001")) == ["AA"]
    assert worklist(node, calling="SOUTHMR") == ([], 0)
    found, status = worklist(node, ScheduledProcedureStepStartDate="2026-12-08")
    assert found == [] and status == 0xA900


def test_mpps_moves_the_step_and_refuses_changes_once_it_ended(node: Mosaic) -> None:
    from pydicom.uid import generate_uid
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    assert send(node, orm("NW", "D4001"), orm("NW", "D4002")) == ["AA", "AA"]
    ae = AE(ae_title="CT01")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=node.settings.dicom.ae_title)
    assert association.is_established
    try:
        created = Dataset()
        created.PerformedProcedureStepStatus = "IN PROGRESS"
        created.PatientID = "MRN1"
        created.PerformedProcedureStepID = "PPS1"
        scheduled = Dataset()
        scheduled.AccessionNumber = "D4001"
        scheduled.ScheduledProcedureStepID = "SPSD4001"
        scheduled.StudyInstanceUID = generate_uid()
        created.ScheduledStepAttributesSequence = [scheduled]
        uid = generate_uid()
        status, _ = association.send_n_create(created, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        # the started step leaves the worklist; the other one stays
        assert [str(item.AccessionNumber) for item in worklist(node)[0]] == ["D4002"]
        again, _ = association.send_n_create(created, ModalityPerformedProcedureStep, uid)
        assert again.Status == 0x0111  # the same MPPS twice

        completed = Dataset()
        completed.PerformedProcedureStepStatus = "COMPLETED"
        status, _ = association.send_n_set(completed, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0000
        late = Dataset()
        late.PerformedProcedureStepStatus = "DISCONTINUED"
        status, _ = association.send_n_set(late, ModalityPerformedProcedureStep, uid)
        assert status.Status == 0x0110 and "COMPLETED" in str(status.get("ErrorComment", ""))
        unknown, _ = association.send_n_set(late, ModalityPerformedProcedureStep, generate_uid())
        assert unknown.Status == 0x0112
        bad = Dataset()
        bad.PerformedProcedureStepStatus = "COMPLETED"  # an MPPS is created IN PROGRESS
        refused, _ = association.send_n_create(bad, ModalityPerformedProcedureStep, generate_uid())
        assert refused.Status == 0x0106
    finally:
        association.release()
    with node.database.session() as session:
        from sqlalchemy import select

        from mosaic.index.schema import ScheduledStep
        states = dict(session.execute(select(ScheduledStep.AccessionNumber,
                                             ScheduledStep.ScheduledProcedureStepStatus)).all())
    assert states == {"D4001": "COMPLETED", "D4002": "SCHEDULED"}


def test_images_and_their_order_find_each_other(node: Mosaic) -> None:
    from mosaic.index.query import Scope
    from tests.factory import make_bytes

    ordered, orderless = "1.2.826.0.1.3680043.10.1234.99.1", "1.2.826.0.1.3680043.10.1234.99.2"
    assert send(node, orm("NW", "E5001", study_uid=ordered)) == ["AA"]
    node.ingest.store(make_bytes(patient_id="MRN1", issuer="GENHOSP", study_uid=ordered, accession=""), door="test")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ordered
    identifier.AccessionNumber = ""
    identifier.StudyDescription = ""
    [study] = node.query.c_find(identifier, root="STUDY", scope=Scope.everything())
    # the accession the images lacked comes from the order; the description they carry stays theirs
    assert study.AccessionNumber == "E5001" and study.StudyDescription == "Synthetic study"

    # images that came first (orderless, with the accession) become the study of the order that follows
    node.ingest.store(make_bytes(patient_id="MRN1", issuer="GENHOSP", study_uid=orderless, accession="E5002"),
                      door="test", facility="north")  # the RIS speaks for north: only north's studies are its own
    assert send(node, orm("NW", "E5002")) == ["AA"]
    [step] = worklist(node, AccessionNumber="E5002")[0]
    assert step.StudyInstanceUID == orderless


def omi(control: str, *, ipcs: int = 2, control_id: str = "OMI1") -> str:
    """An OMI^O23 (IHE RAD-4 imaging order, HL7 v2.5.1) in UTF-8: one order, a step per IPC segment."""
    segments = [
        f"MSH|^~\\&|RIS|GENHOSP|MOSAIC|RAD|20261207120000||OMI^O23^OMI_O23|{control_id}|P|2.5.1|||||"
        "|UNICODE UTF-8",
        "PID|1||MRN7^^^GENHOSP^MR||Østergård^Åse||19551231|F",
        "PV1|1|I|WARD3^101^1|||||5678^Physician^Paula",
        f"ORC|{control}|PO777|FO777||SC||||20261207120000",
        "TQ1|1||||||202612101015||S",
        "OBR|1|PO777|FO777|CTCAP^CT chest abdomen pelvis^L",
    ]
    segments += [f"IPC|ACC777^GENHOSP|RP777|1.2.826.0.1.3680043.10.1234.777|SPS777{'AB'[number]}|CT^Computed "
                 f"Tomography^DCM||CT scanner {number + 1}|ROOM{number + 1}|CT0{number + 1}" for number in range(ipcs)]
    return "\r".join(segments) + "\r"


def send_utf8(node: Mosaic, message: str) -> hl7.Message:
    with MLLPClient(LOCALHOST, node.hl7_port, encoding="utf-8") as client:
        return hl7.parse(client.send_message(message).decode("utf-8"))


def test_an_imaging_order_omi_schedules_a_step_per_ipc_and_a_cancel_ends_them_all(node: Mosaic) -> None:
    assert str(send_utf8(node, omi("NW"))["MSA.F1"]) == "AA"
    found, status = worklist(node, AccessionNumber="ACC777")
    assert status == 0 and len(found) == 2
    assert {str(item.PatientName) for item in found} == {"Østergård^Åse"}
    assert {item.StudyInstanceUID for item in found} == {"1.2.826.0.1.3680043.10.1234.777"}  # IPC-3
    assert {item.RequestedProcedureID for item in found} == {"RP777"}
    assert {item.RequestedProcedurePriority for item in found} == {"STAT"}  # TQ1-9
    assert str(found[0].ReferringPhysicianName) == "Physician^Paula"
    steps = sorted((item.ScheduledProcedureStepSequence[0] for item in found),
                   key=lambda step: step.ScheduledProcedureStepID)
    assert [(step.ScheduledProcedureStepID, step.Modality, step.ScheduledStationAETitle,
             step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) for step in steps] == [
        ("SPS777A", "CT", "CT01", "20261210", "1015"), ("SPS777B", "CT", "CT02", "20261210", "1015")]
    assert [(step.ScheduledStationName, step.ScheduledProcedureStepLocation) for step in steps] == [
        ("CT scanner 1", "ROOM1"), ("CT scanner 2", "ROOM2")]  # IPC-7, IPC-8
    assert [item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID
            for item in worklist(node, ScheduledStationAETitle="CT02")[0]] == ["SPS777B"]

    assert str(send_utf8(node, omi("CA", control_id="OMI2"))["MSA.F1"]) == "AA"
    assert worklist(node, AccessionNumber="ACC777") == ([], 0)


def test_an_order_message_is_applied_whole_or_not_at_all(node: Mosaic) -> None:
    # an OMI without IPC names no step: refused, nothing scheduled
    answer = send_utf8(node, omi("NW", ipcs=0))
    assert str(answer["MSA.F1"]) == "AE" and str(answer["ERR.F3.R1.C1"]) == "100"
    assert worklist(node) == ([], 0)
    # an ORM with two orders whose second has an accession longer than SH allows: neither is scheduled
    first = orm("NW", "D4001")
    second = first.split("\r")[3:5]
    second[1] = second[1].replace("|D4001|", "|D4002-WAY-TOO-LONG|")
    assert send(node, first + "\r".join(second) + "\r") == ["AE"]
    assert worklist(node) == ([], 0)
    # both with valid accessions: both are
    second[1] = second[1].replace("D4002-WAY-TOO-LONG", "D4002").replace("SPSD4001", "SPSD4002")
    assert send(node, first + "\r".join(second) + "\r") == ["AA"]
    assert sorted(str(item.AccessionNumber) for item in worklist(node)[0]) == ["D4001", "D4002"]


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Mosaic]:
    """Two facilities, each with its RIS and a modality; and a cardiology modality scoped by department only."""
    peers = [DicomPeer(ae_title="CT01", host=LOCALHOST, port=11112, scope_facilities=["north"]),
             DicomPeer(ae_title="SOUTHMR", host=LOCALHOST, port=11112, scope_facilities=["south"]),
             DicomPeer(ae_title="ECHO1", host=LOCALHOST, port=11112, scope_departments=["cardiology"])]
    senders = [Hl7Sender(application="RIS", may_send=["ORM"], issuer="GENHOSP", patient_facility="north"),
               Hl7Sender(application="SRIS", may_send=["ORM"], issuer="GENHOSP", patient_facility="south")]
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0, peers=peers),
                             hl7=Hl7Settings(port=0, senders=senders)))
    mosaic.start(http=False)
    yield mosaic
    mosaic.stop()


def steps_by_accession(node: Mosaic) -> dict[str, tuple[str, str, str]]:
    from sqlalchemy import select

    from mosaic.index.schema import ScheduledStep
    with node.database.session() as session:
        return {row[0]: tuple(row[1:]) for row in session.execute(select(
            ScheduledStep.AccessionNumber, ScheduledStep.ScheduledProcedureStepStatus, ScheduledStep.facility,
            ScheduledStep.ScheduledProcedureStepStartDate))}


def test_a_sender_changes_and_ends_only_its_own_facility_s_orders(sites: Mosaic) -> None:
    assert send(sites, orm("NW", "F6001")) == ["AA"]  # north's
    # south's RIS names north's accession and step: cancelling it finds nothing, changing it is refused
    assert send(sites, orm("CA", "F6001", application="SRIS")) == ["AE"]
    assert send(sites, orm("DC", "F6001", application="SRIS")) == ["AE"]
    assert send(sites, orm("XO", "F6001", application="SRIS", start="202701010900")) == ["AE"]
    assert send(sites, orm("NW", "F6001", application="SRIS", start="202701010900")) == ["AE"]
    assert steps_by_accession(sites) == {"F6001": ("SCHEDULED", "north", "20261208")}
    # its own sender still can
    assert send(sites, orm("XO", "F6001", start="202612091000")) == ["AA"]
    assert send(sites, orm("CA", "F6001")) == ["AA"]
    assert steps_by_accession(sites) == {"F6001": ("CANCELED", "north", "20261209")}


def test_a_peer_scoped_by_department_only_finds_no_steps(sites: Mosaic) -> None:
    """A step has a facility but no department: a department-scoped peer must not see every facility's worklist."""
    assert send(sites, orm("NW", "G7001"), orm("NW", "G7002", application="SRIS")) == ["AA", "AA"]
    assert [str(item.AccessionNumber) for item in worklist(sites, calling="CT01")[0]] == ["G7001"]
    assert [str(item.AccessionNumber) for item in worklist(sites, calling="SOUTHMR")[0]] == ["G7002"]
    assert worklist(sites, calling="ECHO1") == ([], 0)


def test_the_worklist_query_audit_names_whose_steps_were_returned(sites: Mosaic) -> None:
    assert send(sites, orm("NW", "H8001"), orm("NW", "H8002", patient="MRN8^^^GENHOSP")) == ["AA", "AA"]
    assert len(worklist(sites, calling="CT01")[0]) == 2
    sites.audit.flush()
    import json

    [detail] = [json.loads(record.detail) for record in sites.audit.search(action="query", limit=50)[0]
                if json.loads(record.detail).get("worklist")]
    assert detail["matches"] == 2 and detail["accessions"] == ["H8001", "H8002"]
    assert detail["patients"] == ["MRN1^^^GENHOSP", "MRN8^^^GENHOSP"]


def mpps(node: Mosaic, calling: str, *requests: tuple[str, Dataset, str]) -> list[int]:
    """Send N-CREATE / N-SET requests ((kind, dataset, uid), ...) from ``calling``: their statuses."""
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=node.settings.dicom.ae_title)
    assert association.is_established
    try:
        statuses = []
        for kind, dataset, uid in requests:
            send_request = association.send_n_create if kind == "create" else association.send_n_set
            status, _ = send_request(dataset, ModalityPerformedProcedureStep, uid)
            statuses.append(int(status.Status))
        return statuses
    finally:
        association.release()


def performed(status: str, accession: str = "") -> Dataset:
    dataset = Dataset()
    dataset.PerformedProcedureStepStatus = status
    if accession:
        scheduled = Dataset()
        scheduled.AccessionNumber = accession
        scheduled.ScheduledProcedureStepID = f"SPS{accession}"
        dataset.ScheduledStepAttributesSequence = [scheduled]
    return dataset


def test_an_mpps_moves_only_steps_in_its_peer_s_scope_and_only_its_creator_changes_it(sites: Mosaic) -> None:
    from pydicom.uid import generate_uid

    assert send(sites, orm("NW", "J9001")) == ["AA"]  # north's
    foreign, own = generate_uid(), generate_uid()
    # south's modality names north's step: the MPPS is kept, unscheduled; the step stays on north's worklist
    assert mpps(sites, "SOUTHMR", ("create", performed("IN PROGRESS", "J9001"), foreign)) == [0x0000]
    assert steps_by_accession(sites)["J9001"][0] == "SCHEDULED"
    assert mpps(sites, "SOUTHMR", ("set", performed("DISCONTINUED"), foreign)) == [0x0000]
    assert steps_by_accession(sites)["J9001"][0] == "SCHEDULED"
    # north's modality starts it; south's cannot end it (to south that MPPS is not known), north's can
    assert mpps(sites, "CT01", ("create", performed("IN PROGRESS", "J9001"), own)) == [0x0000]
    assert steps_by_accession(sites)["J9001"][0] == "STARTED"
    assert mpps(sites, "SOUTHMR", ("set", performed("DISCONTINUED"), own)) == [0x0112]
    assert steps_by_accession(sites)["J9001"][0] == "STARTED"
    assert mpps(sites, "CT01", ("set", performed("COMPLETED"), own)) == [0x0000]
    assert steps_by_accession(sites)["J9001"][0] == "COMPLETED"


def test_an_mpps_cannot_grow_without_end(sites: Mosaic) -> None:
    """N-SET after N-SET, each adding 600 kB: the second would take the step past 1 MiB and is refused."""
    from pydicom.uid import generate_uid

    uid = generate_uid()
    additions = []
    for element in (0x1010, 0x1011):
        addition = Dataset()
        addition.add_new((0x0009, 0x0010), "LO", "MOSAIC TEST")
        addition.add_new((0x0009, element), "UT", "x" * 600_000)
        additions.append(("set", addition, uid))
    assert mpps(sites, "CT01", ("create", performed("IN PROGRESS"), uid), *additions,
                ("set", performed("COMPLETED"), uid)) == [0x0000, 0x0000, 0x0110, 0x0000]


def adt(event: str, *segments: str, control: str = "ADT1") -> str:
    msh = f"MSH|^~\\&|RIS|GENHOSP|MOSAIC|RAD|20261207||ADT^{event}^ADT_A01|{control}|P|2.5.1"
    return "\r".join([msh, f"EVN|{event}|20261207", *segments]) + "\r"


def test_the_worklist_shows_the_patient_as_adt_last_left_them(node: Mosaic) -> None:
    """A modality copies the worklist's patient into its images: a corrected name, a merge and a changed
    identifier must reach the scheduled step, and an order under a merged-away identity is the survivor's."""
    assert send(node, orm("NW", "K1001", patient="TEMP9^^^GENHOSP", name="Unknown^Patient")) == ["AA"]
    assert send(node, adt("A08", "PID|1||TEMP9^^^GENHOSP||Dupont^Émile||19710203|M")) == ["AA"]
    [step] = worklist(node, AccessionNumber="K1001")[0]
    assert (str(step.PatientName), step.PatientID) == ("Dupont^Émile", "TEMP9")
    assert [str(item.AccessionNumber) for item in worklist(node, PatientName="dupont*")[0]] == ["K1001"]

    assert send(node, adt("A40", "PID|1||MRN77^^^GENHOSP||Dupont^Emile^Jean||19710203|M", "MRG|TEMP9^^^GENHOSP",
                          control="ADT2")) == ["AA"]
    [step] = worklist(node, AccessionNumber="K1001")[0]
    assert (str(step.PatientName), step.PatientID) == ("Dupont^Emile^Jean", "MRN77")
    # an order still sent under the old identity is scheduled for the survivor
    assert send(node, orm("NW", "K1002", patient="TEMP9^^^GENHOSP", name="Dupont^Emile^Jean")) == ["AA"]
    [later] = worklist(node, AccessionNumber="K1002")[0]
    assert later.PatientID == "MRN77"

    assert send(node, adt("A47", "PID|1||MRN78^^^GENHOSP||Dupont^Emile^Jean", "MRG|MRN77^^^GENHOSP",
                          control="ADT3")) == ["AA"]
    assert {item.PatientID for item in worklist(node)[0]} == {"MRN78"}


def test_an_order_for_an_encounter_takes_the_study_of_its_orderless_captures(node: Mosaic, tmp_path: Path) -> None:
    """IHE Encounter-Based Imaging Workflow: photos taken during visit V77 before anything was ordered made a
    study; the order that arrives for that visit (PV1-19) schedules its step in that study."""
    import io

    from PIL import Image

    from mosaic.index.query import Scope
    from mosaic.services.capturing import CaptureFile, CaptureRequest
    from mosaic.services.origin import IngestOrigin

    assert send(node, adt("A04", "PID|1||MRN5^^^GENHOSP||Tane^Mahuta")) == ["AA"]
    photo = tmp_path / "wound.jpg"
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (90, 60, 40)).save(out, "JPEG")
    photo.write_bytes(out.getvalue())
    [captured] = node.captures.capture(CaptureRequest(PatientID="MRN5", IssuerOfPatientID="GENHOSP", encounter="V77"),
                                       [CaptureFile(photo, "wound.jpg", "image/jpeg")],
                                       IngestOrigin(door="test", facility="north"), scope=Scope.everything())
    assert captured.outcome == "stored"
    assert send(node, orm("NW", "L2001", patient="MRN5^^^GENHOSP", name="Tane^Mahuta", visit="V77"),
                orm("NW", "L2002", patient="MRN5^^^GENHOSP", name="Tane^Mahuta", visit="V78")) == ["AA", "AA"]
    steps = {str(item.AccessionNumber): item.StudyInstanceUID for item in worklist(node)[0]}
    assert steps["L2001"] == captured.StudyInstanceUID
    assert steps["L2002"] != captured.StudyInstanceUID  # another visit: a study of its own


def test_an_order_takes_only_its_own_facility_s_stored_study(sites: Mosaic) -> None:
    """South's RIS orders accession G9001 for a patient whose north study already has that accession: the south
    step gets a study of its own, never north's Study Instance UID on south's worklist."""
    from tests.factory import make_bytes

    north_study = "1.2.826.0.1.3680043.10.1234.99.7"
    sites.ingest.store(make_bytes(patient_id="MRN1", issuer="GENHOSP", study_uid=north_study, accession="G9001"),
                       door="test", facility="north")
    assert send(sites, orm("NW", "G9001", application="SRIS")) == ["AA"]
    [step] = worklist(sites, calling="SOUTHMR", AccessionNumber="G9001")[0]
    assert step.StudyInstanceUID != north_study
