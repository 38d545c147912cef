"""The whole loop of a radiology department through Mosaic's doors, in one test, each with the real thing:

the RIS sends an order (HL7 ORM^O01 over MLLP) → the modality finds it on the worklist (pynetdicom C-FIND,
Modality Worklist model) → starts it (MPPS N-CREATE) → stores its images (C-STORE) → completes it (N-SET) → the
study becomes stable and Mosaic tells the EHR (ORU^R01 "images available" to an MLLP receiver) → the RIS sends the
report (ORU^R01) → the EHR reads order, study and report through FHIR (parsed by fhir.resources R4B models)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hl7
import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.servicerequest import ServiceRequest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)

from mosaic.app import Mosaic
from mosaic.config import (
    DicomPeer,
    DicomSettings,
    Hl7Receiver,
    Hl7Sender,
    Hl7Settings,
    HttpSettings,
    Settings,
    WorkflowSettings,
)
from tests.auth_support import auth_headers
from tests.factory import make_instance
from tests.helpers import wait_until
from tests.test_study_available import FakeReceiver

LOCALHOST = "127.0.0.1"
ACCESSION = "LOOP0001"


@pytest.fixture
def ehr() -> Iterator[FakeReceiver]:
    receiver = FakeReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def node(tmp_path: Path, ehr: FakeReceiver) -> Iterator[Mosaic]:
    settings = Settings(
        data_dir=tmp_path, http=HttpSettings(port=0),
        dicom=DicomSettings(port=0, peers=[DicomPeer(ae_title="CT01", host=LOCALHOST, port=11112)]),
        workflow=WorkflowSettings(study_stable_seconds=0.5, sweep_seconds=0.1),
        hl7=Hl7Settings(port=0, senders=[Hl7Sender(application="RIS", may_send=["ADT", "ORM", "ORU"],
                                                   issuer="GENHOSP")],
                        receivers=[Hl7Receiver(name="ehr", host=LOCALHOST, port=ehr.port, application="EHR",
                                               facility="GENHOSP", timeout=5, retry_seconds=0.1,
                                               max_retry_seconds=0.2)]))
    mosaic = Mosaic(settings)
    mosaic.start()
    yield mosaic
    mosaic.stop()


def send(node: Mosaic, *segments: str) -> str:
    message = "\r".join(segments) + "\r"
    with MLLPClient(LOCALHOST, node.hl7_port, encoding="latin-1") as client:
        return str(hl7.parse(client.send_message(message).decode("latin-1"))["MSA.F1"])


def fhir(node: Mosaic, path: str, **params: str) -> Bundle:
    answer = httpx.get(f"http://{LOCALHOST}:{node.http_port}/fhir{path}", params=params, headers=auth_headers(node),
                       timeout=30)
    assert answer.status_code == 200, answer.text
    return Bundle.model_validate(answer.json())


def test_order_worklist_mpps_images_availability_report_and_fhir(node: Mosaic, ehr: FakeReceiver) -> None:
    # 1. the order
    assert send(node, "MSH|^~\\&|RIS|GENHOSP|MOSAIC|RAD|20261208080000||ORM^O01^ORM_O01|LOOP-O1|P|2.5.1",
                "PID|1||MRN77^^^GENHOSP||Lindqvist^Åsa||19581103|F", "PV1|1|O||||||1234^Referring^Rita",
                f"ORC|NW|P{ACCESSION}|F{ACCESSION}||SC||^^^202612080900^^R",
                f"OBR|1|P{ACCESSION}|F{ACCESSION}|CTCHEST^CT chest^L||||||||||||||{ACCESSION}|RP1|SPS1|CT01|||CT"
                ) == "AA"

    # 2. the modality's worklist
    ae = AE(ae_title="CT01")
    for context in (ModalityWorklistInformationFind, ModalityPerformedProcedureStep, CTImageStorage):
        ae.add_requested_context(context)
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=node.settings.dicom.ae_title)
    assert association.is_established
    try:
        query = Dataset()
        query.PatientName = query.PatientID = query.AccessionNumber = query.StudyInstanceUID = ""
        item = Dataset()
        item.ScheduledStationAETitle, item.Modality, item.ScheduledProcedureStepID = "CT01", "", ""
        query.ScheduledProcedureStepSequence = [item]
        [entry] = [found for status, found in association.send_c_find(query, ModalityWorklistInformationFind)
                   if status and status.Status in (0xFF00, 0xFF01)]
        assert entry.AccessionNumber == ACCESSION and str(entry.PatientName) == "Lindqvist^Åsa"
        study_uid = entry.StudyInstanceUID

        # 3. started, 4. images, 5. completed
        performed = Dataset()
        performed.PerformedProcedureStepStatus = "IN PROGRESS"
        performed.PatientID = "MRN77"
        performed.PerformedProcedureStepID = "PPS1"
        scheduled = Dataset()
        scheduled.AccessionNumber, scheduled.ScheduledProcedureStepID = ACCESSION, "SPS1"
        scheduled.StudyInstanceUID = study_uid
        performed.ScheduledStepAttributesSequence = [scheduled]
        mpps_uid = generate_uid()
        assert association.send_n_create(performed, ModalityPerformedProcedureStep, mpps_uid)[0].Status == 0
        series_uid = generate_uid()
        for number in range(1, 4):
            image = make_instance(patient_id="MRN77", issuer="GENHOSP", patient_name="Lindqvist^Asa",
                                  study_uid=study_uid, series_uid=series_uid, sop_uid=generate_uid(),
                                  instance_number=number, accession=ACCESSION)
            assert association.send_c_store(image).Status == 0
        completed = Dataset()
        completed.PerformedProcedureStepStatus = "COMPLETED"
        assert association.send_n_set(completed, ModalityPerformedProcedureStep, mpps_uid)[0].Status == 0
    finally:
        association.release()

    # 6. the study is stable: the EHR is told its images are available, once
    wait_until(lambda: len(ehr.received()) == 1, timeout=20)
    [available] = ehr.received()
    assert (str(available["MSH.F9.R1.C1"]), str(available["MSH.F9.R1.C2"])) == ("ORU", "R01")
    assert str(available["OBX.F5"]) == study_uid and str(available["ORC.F1"]) == "SC"
    assert str(available["PID.F3.R1.C1"]) == "MRN77"
    assert [str(available[f"OBR.F4.R1.C{n}"]) for n in (1, 2, 3)] == ["CTCHEST", "CT chest", "L"]  # the order's
    assert str(available["OBR.F18"]) == ACCESSION and str(available["ORC.F2"]) == f"P{ACCESSION}"

    # 7. the report
    assert send(node, "MSH|^~\\&|RIS|GENHOSP|MOSAIC|RAD|20261208110000||ORU^R01^ORU_R01|LOOP-R1|P|2.5.1",
                "PID|1||MRN77^^^GENHOSP||Lindqvist^Åsa||19581103|F",
                f"OBR|1|P{ACCESSION}|F{ACCESSION}|CTCHEST^CT chest^L|||20261208090000|||||||||||{ACCESSION}||||"
                "20261208105000|||F|||||||1234&Radiologist&Rita",
                "OBX|1|TX|&GDT^Findings^L||No pulmonary nodules.||||||F",
                "OBX|2|TX|&IMP^Impression^L||Normal CT of the chest.||||||F") == "AA"

    # 8. the EHR reads it all through FHIR
    [order] = [ServiceRequest.model_validate(item.resource.model_dump())
               for item in fhir(node, "/ServiceRequest", identifier=ACCESSION).entry or []]
    patient = order.subject.reference
    [study] = [ImagingStudy.model_validate(item.resource.model_dump())
               for item in fhir(node, "/ImagingStudy", patient=patient).entry or []]
    assert study.id == study_uid and study.numberOfInstances == 4  # three images and the report
    assert {coding.code for coding in study.modality} == {"CT", "SR"}
    [report] = [DiagnosticReport.model_validate(item.resource.model_dump())
                for item in fhir(node, "/DiagnosticReport", patient=patient).entry or []]
    assert report.status == "final" and report.conclusion and "Normal CT of the chest." in report.conclusion
    assert [reference.reference for reference in report.imagingStudy] == [f"ImagingStudy/{study_uid}"]
    assert [reference.reference for reference in report.basedOn] == [f"ServiceRequest/{order.id}"]
    assert order.status == "completed"  # MPPS COMPLETED
