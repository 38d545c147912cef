"""Reports in: HL7 ORU^R01 and MDM^T02 over MLLP become DICOM objects of their study (a Basic Text SR, an
Encapsulated PDF), which QIDO-RS lists, WADO-RS returns and FHIR answers as DiagnosticReport / DocumentReference.

Real sockets: python-hl7's MLLP client sends messages shaped like the HL7 v2.5.1 chapter 7 examples (8859/1 names);
httpx reads DICOMweb and FHIR from the running node; pydicom parses what WADO-RS sent, fhir.resources' R4B models
what FHIR answered.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import httpx
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from hl7.client import MLLPClient
from sqlalchemy import func, select

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, Hl7Sender, Hl7Settings, HttpSettings, Settings
from mosaic.index.query import Query, Scope
from mosaic.index.schema import Report
from mosaic.services.origin import IngestOrigin
from tests.auth_support import auth_headers
from tests.factory import make_bytes
from tests.helpers import wait_until
from tests.test_dicomweb_wado import ANY_DICOM, multipart_parts

LOCALHOST = "127.0.0.1"
PREFIX = "1.2.826.0.1.3680043.10.1234.96"
STUDY = f"{PREFIX}.1"
SOUTH = ("clin.south", "clin-south-password")
FINDINGS = "No acute intracranial abnormality.\nVentricles normal in size & configuration."
IMPRESSION = "Normal CT of the head."


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    settings = Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                        hl7=Hl7Settings(port=0, senders=[Hl7Sender(application="RIS", issuer="GENHOSP",
                                                                   may_send=["ADT", "ORM", "ORU", "MDM"],
                                                                   patient_facility="north")]))
    mosaic = Mosaic(settings)
    mosaic.ingest.store(make_bytes(patient_id="MRN1", issuer="GENHOSP", patient_name="Müller^Hans", study_uid=STUDY,
                                   series_uid=f"{STUDY}.1", sop_uid=f"{STUDY}.1.1", accession="ACC1",
                                   charset="ISO_IR 100"),
                        IngestOrigin(door="test", facility="north"))
    mosaic.start()
    mosaic.identity.add_user("clin.south", roles=["clinician"], password=SOUTH[1], facilities=["south"])
    yield mosaic
    mosaic.stop()


def obr(accession: str, *, status: str = "F", service: str = "CTHEAD^CT head^L",
        changes: dict[int, str] | None = None) -> str:
    """An OBR (set ID 1) of the accession; ``changes`` sets fields by number."""
    fields = ["OBR", "1", f"P{accession}", f"F{accession}", service] + [""] * 28
    fields[7] = "20261208090000"
    fields[18] = accession
    fields[22] = "20261208101500"
    fields[25] = status
    fields[32] = "1234&Radiologist&Rita"
    for number, value in (changes or {}).items():
        fields[number] = value
    return "|".join(fields)


def oru(control: str, accession: str, *observations: str, status: str = "F",
        patient: str = "MRN1^^^GENHOSP^MR", service: str = "CTHEAD^CT head^L",
        changes: dict[int, str] | None = None) -> bytes:
    segments = [f"MSH|^~\\&|RIS|GENHOSP|MOSAIC|RAD|20261208103000||ORU^R01^ORU_R01|{control}|P|2.5.1|||||||8859/1",
                f"PID|1||{patient}||Müller^Hans||19600101|M",
                obr(accession, status=status, service=service, changes=changes), *observations]
    return ("\r".join(segments) + "\r").encode("latin-1")


def text_observations() -> list[str]:
    return ["OBX|1|FT|&GDT^Findings^L||No acute intracranial abnormality.\\.br\\Ventricles normal in size "
            "\\T\\ configuration.||||||F",
            f"OBX|2|TX|&IMP^Impression^L||{IMPRESSION}||||||F"]


def tiny_pdf() -> bytes:
    """A one-page PDF with a correct cross-reference table."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def txa() -> str:
    """An authenticated (TXA-17 AU) radiology document, its authenticator in TXA-22."""
    fields = ["TXA", "1", "RAD", "TX", "20261208110000"] + [""] * 18
    fields[12], fields[15], fields[17], fields[22] = "DOC9", "FACC9", "AU", "1234^Reader^Rhea"
    return "|".join(fields)


def pdf_observation(document: bytes) -> str:
    return f"OBX|1|ED|PDF^Radiology report^L||RIS^AP^PDF^Base64^{base64.b64encode(document).decode()}||||||F"


def send(node: Mosaic, message: bytes) -> tuple[str, str, str]:
    """(MSA-1, ERR-2 location, ERR-3 code) of the acknowledgement."""
    with MLLPClient(LOCALHOST, node.hl7_port, encoding="latin-1") as client:
        answer = hl7.parse(client.send_message(message).decode("latin-1"))
    try:
        error = answer.segment("ERR")
        return str(answer["MSA.F1"]), str(error[2]), str(error[3][0][0])
    except KeyError:
        return str(answer["MSA.F1"]), "", ""


def http(node: Mosaic, path: str, *, auth: Any = None, headers: dict[str, str] | None = None,
         **params: Any) -> httpx.Response:
    return httpx.get(path if path.startswith("http") else f"http://{LOCALHOST}:{node.http_port}{path}",
                     params=params, headers={**({} if auth else auth_headers(node)), **(headers or {})}, auth=auth,
                     timeout=30)


def bundle(answer: httpx.Response) -> Bundle:
    assert answer.status_code == 200, answer.text
    return Bundle.model_validate(answer.json())


def resources(result: Bundle, kind: type[Any]) -> list[Any]:
    return [kind.model_validate(entry.resource.model_dump()) for entry in result.entry or []
            if entry.resource.get_resource_type() == kind.get_resource_type()]


def patient_reference(node: Mosaic) -> str:
    [patient] = resources(bundle(http(node, "/fhir/Patient", identifier="MRN1")), Patient)
    return f"Patient/{patient.id}"


def instances_in(node: Mosaic, study: str = STUDY) -> int:
    matches = node.query.find(Query("STUDY", [], ["StudyInstanceUID"]), door="test", scope=Scope.everything())
    [match] = [match for match in matches if match.rows["STUDY"].StudyInstanceUID == study]
    return int(match.rows["STUDY"].NumberOfStudyRelatedInstances)


def modalities_in_study(node: Mosaic) -> list[str]:
    answer = http(node, "/dicom-web/studies", StudyInstanceUID=STUDY, includefield="ModalitiesInStudy")
    assert answer.status_code == 200, answer.text
    [study] = answer.json()
    return sorted(study["00080061"]["Value"])


def wado_instance(node: Mosaic, study: str, series: str, sop: str) -> pydicom.Dataset:
    answer = http(node, f"/dicom-web/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": ANY_DICOM})
    assert answer.status_code == 200, answer.text
    [(_, body)] = multipart_parts(answer)
    return pydicom.dcmread(io.BytesIO(body))


def test_a_text_report_is_an_sr_of_its_study_in_qido_wado_and_fhir(node: Mosaic) -> None:
    assert send(node, oru("RPT1", "ACC1", *text_observations()))[0] == "AA"
    assert modalities_in_study(node) == ["CT", "SR"]

    reference = patient_reference(node)
    result = bundle(http(node, "/fhir/DiagnosticReport", patient=reference))
    [report] = resources(result, DiagnosticReport)
    assert report.status == "final" and report.subject.reference == reference
    assert report.code.coding[0].system == "http://loinc.org" and report.code.coding[0].code == "11528-7"
    assert report.imagingStudy[0].reference == f"ImagingStudy/{STUDY}" and report.conclusion == IMPRESSION
    assert report.resultsInterpreter[0].display == "Rita Radiologist"
    assert str(report.effectiveDateTime).startswith("2026-12-08")
    text_form = next(form for form in report.presentedForm if form.contentType.startswith("text/plain"))
    assert text_form.data == f"{FINDINGS}\n\n{IMPRESSION}".encode()  # the model decodes base64Binary
    dicom_form = next(form for form in report.presentedForm if form.contentType == "application/dicom")

    sr = wado_instance(node, *dicom_form.url.split("/studies/")[1].split("/")[::2])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11" and sr.SOPInstanceUID == report.id
    assert sr.StudyInstanceUID == STUDY and sr.AccessionNumber == "ACC1" and sr.Modality == "SR"
    assert str(sr.PatientName) == "Müller^Hans" and sr.PatientID == "MRN1" and sr.StudyDate == "20240101"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "11528-7"
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "VERIFIED")
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Radiologist^Rita"
    assert sr.VerifyingObserverSequence[0].VerificationDateTime == "20261208101500"
    assert sr.ReferencedRequestSequence[0].AccessionNumber == "ACC1"
    findings, conclusions = sr.ContentSequence
    assert findings.ConceptNameCodeSequence[0].CodeValue == "121070"
    assert findings.ContentSequence[0].TextValue == FINDINGS
    assert conclusions.ConceptNameCodeSequence[0].CodeValue == "121076"
    assert conclusions.ContentSequence[0].TextValue == IMPRESSION

    read = DiagnosticReport.model_validate(http(node, f"/fhir/DiagnosticReport/{report.id}").json())
    assert read.id == report.id

    # sent again (same MSH-10 from the same sender): answered AA, nothing stored twice
    before = instances_in(node)
    assert send(node, oru("RPT1", "ACC1", *text_observations()))[0] == "AA"
    assert instances_in(node) == before == 2
    assert bundle(http(node, "/fhir/DiagnosticReport", patient=reference)).total == 1

    # another facility's clinician sees no report of a north study
    assert bundle(http(node, "/fhir/DiagnosticReport", auth=SOUTH)).total == 0
    assert http(node, f"/fhir/DiagnosticReport/{report.id}", auth=SOUTH).status_code == 404


def test_an_embedded_pdf_is_an_encapsulated_pdf_and_a_document_reference(node: Mosaic) -> None:
    document = tiny_pdf()
    assert send(node, oru("RPT2", "ACC1", pdf_observation(document)))[0] == "AA"
    assert modalities_in_study(node) == ["CT", "DOC"]

    reference = patient_reference(node)
    [entry] = resources(bundle(http(node, "/fhir/DocumentReference", patient=reference)), DocumentReference)
    assert entry.subject.reference == reference and entry.docStatus == "final"
    assert entry.context.related[0].reference == f"ImagingStudy/{STUDY}"
    attachment = entry.content[0].attachment
    assert attachment.contentType == "application/pdf" and attachment.size == len(document)
    answer = http(node, attachment.url, headers={"Accept": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    assert answer.content[:attachment.size] == document  # the element is padded to even length
    assert answer.content == document + b"\0" * (len(document) % 2)

    [report] = resources(bundle(http(node, "/fhir/DiagnosticReport", patient=reference)), DiagnosticReport)
    assert report.id == entry.id and "application/pdf" in {form.contentType for form in report.presentedForm}
    DocumentReference.model_validate(http(node, f"/fhir/DocumentReference/{entry.id}").json())

    [pdf] = [wado_instance(node, STUDY, series, entry.id) for series in
             [attachment.url.split("/series/")[1].split("/")[0]]]
    assert pdf.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and pdf.MIMETypeOfEncapsulatedDocument == \
        "application/pdf"
    assert pdf.BurnedInAnnotation == "YES" and pdf.DocumentTitle == "Radiology report"
    assert pdf.EncapsulatedDocument[:len(document)] == document and len(pdf.EncapsulatedDocument) % 2 == 0
    assert bundle(http(node, "/fhir/DocumentReference", auth=SOUTH)).total == 0


def test_a_report_for_an_unknown_accession_is_refused_and_stores_nothing(node: Mosaic) -> None:
    assert send(node, oru("RPT3", "NOSUCH", *text_observations())) == ("AE", "OBR^1^18", "204")
    assert instances_in(node) == 1


def test_a_pdf_that_is_not_a_pdf_is_refused_and_stores_nothing(node: Mosaic) -> None:
    assert send(node, oru("RPT4", "ACC1", pdf_observation(b"GIF89a not a PDF at all"))) == ("AE", "OBX^1^5", "102")
    assert instances_in(node) == 1


def test_a_report_of_another_patient_than_the_study_s_is_refused(node: Mosaic) -> None:
    answer = send(node, oru("RPT5", "ACC1", *text_observations(), patient="MRN2^^^GENHOSP^MR"))
    assert answer == ("AE", "PID^1^3^1^1", "204")
    assert instances_in(node) == 1


def test_the_study_uid_in_an_obx_links_the_report_and_a_correction_is_a_new_instance(node: Mosaic) -> None:
    uid = f"OBX|3|RP|113014^DICOM Study^DCM||{STUDY}^RIS^Application^DICOM||||||F"
    preliminary = oru("RPT6", "", *text_observations(), uid, status="P")
    assert send(node, preliminary)[0] == "AA"
    corrected = oru("RPT7", "", "OBX|1|TX|&IMP^Impression^L||Small old infarct.||||||C", uid, status="C")
    assert send(node, corrected)[0] == "AA"
    assert instances_in(node) == 3
    reference = patient_reference(node)
    reports = resources(bundle(http(node, "/fhir/DiagnosticReport", patient=reference)), DiagnosticReport)
    assert [report.status for report in reports] == ["corrected", "preliminary"]  # newest first (C: corrected)
    assert [r.id for r in resources(bundle(http(node, "/fhir/DiagnosticReport", status="corrected")),
                                    DiagnosticReport)] == [reports[0].id]
    series = {form.url.split("/series/")[1].split("/")[0] for report in reports for form in report.presentedForm
              if form.url}
    assert len(series) == 1  # one report series per study
    first = wado_instance(node, STUDY, series.copy().pop(), reports[1].id)
    assert (first.CompletionFlag, first.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    second = wado_instance(node, STUDY, series.pop(), reports[0].id)
    assert second.VerificationFlag == "VERIFIED" and second.InstanceNumber == 2
    assert second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == reports[1].id


def test_a_document_for_an_ordered_study_is_based_on_its_service_request(node: Mosaic) -> None:
    order = "\r".join([
        "MSH|^~\\&|RIS|GENHOSP|MOSAIC|RAD|20261207||ORM^O01^ORM_O01|ORD9|P|2.5.1",
        "PID|1||MRN9^^^GENHOSP||Łukasz^Zoë||19900215|F",
        "ORC|NW|PACC9|FACC9||SC||^^^202612081000^^R",
        "OBR|1|PACC9|FACC9|MRKNEE^MR knee^L||||||||||||||ACC9|RPACC9|SPSACC9|MR01|||MR",
        f"ZDS|{PREFIX}.9^100^Application^DICOM"]) + "\r"
    assert send(node, order.encode("latin-1", errors="replace"))[0] == "AA"
    document = "\r".join([
        "MSH|^~\\&|RIS|GENHOSP|MOSAIC|RAD|20261208||MDM^T02^MDM_T02|DOC9|P|2.5.1",
        "EVN|T02|20261208",
        "PID|1||MRN9^^^GENHOSP||Łukasz^Zoë||19900215|F",
        "OBR|1|PACC9|FACC9|MRKNEE^MR knee^L||||||||||||||ACC9",
        txa(),
        "OBX|1|TX|&GDT^Findings^L||Intact menisci.||||||F"]) + "\r"
    assert send(node, document.encode("latin-1", errors="replace"))[0] == "AA"
    [patient] = resources(bundle(http(node, "/fhir/Patient", identifier="MRN9")), Patient)
    [request] = resources(bundle(http(node, "/fhir/ServiceRequest", patient=f"Patient/{patient.id}")),
                          ServiceRequest)
    [report] = resources(bundle(http(node, "/fhir/DiagnosticReport",
                                     **{"based-on": f"ServiceRequest/{request.id}"})), DiagnosticReport)
    assert report.basedOn[0].reference == f"ServiceRequest/{request.id}" and report.status == "final"
    assert report.imagingStudy[0].reference == f"ImagingStudy/{PREFIX}.9" and report.conclusion == "Intact menisci."
    assert report.subject.reference == f"Patient/{patient.id}"
    # the study exists now (its report is its first instance), filed under the order's facility
    assert bundle(http(node, "/fhir/DiagnosticReport", **{"based-on": "ServiceRequest/999999"})).total == 0
    assert http(node, "/fhir/DiagnosticReport", shoe="42").status_code == 400


def test_a_deleted_study_takes_its_reports_with_it(node: Mosaic) -> None:
    assert send(node, oru("RPT8", "ACC1", *text_observations()))[0] == "AA"
    node.deleter.delete_study(STUDY, reason="test")
    assert bundle(http(node, "/fhir/DiagnosticReport")).total == 0
    with node.database.session() as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 0


def newest_report(node: Mosaic, **params: Any) -> tuple[DiagnosticReport, pydicom.Dataset]:
    """The newest DiagnosticReport (of ``params``) and its DICOM object as WADO-RS returns it."""
    report = resources(bundle(http(node, "/fhir/DiagnosticReport", **params)), DiagnosticReport)[0]
    form = next(form for form in report.presentedForm if form.url and "/instances/" in form.url)
    return report, wado_instance(node, *form.url.split("/studies/")[1].split("/")[::2])


def test_a_control_id_reused_for_another_report_stores_it_and_an_identical_resend_does_not(node: Mosaic) -> None:
    assert send(node, oru("RPT20", "ACC1", *text_observations()))[0] == "AA"
    other = oru("RPT20", "ACC1", "OBX|1|TX|&IMP^Impression^L||Acute subdural hematoma.||||||F")
    assert send(node, other)[0] == "AA"
    assert instances_in(node) == 3  # the second report is not taken for the first sent again
    reports = resources(bundle(http(node, "/fhir/DiagnosticReport")), DiagnosticReport)
    assert [report.conclusion for report in reports] == ["Acute subdural hematoma.", IMPRESSION]
    assert send(node, other)[0] == "AA" and send(node, oru("RPT20", "ACC1", *text_observations()))[0] == "AA"
    assert instances_in(node) == 3 and bundle(http(node, "/fhir/DiagnosticReport")).total == 2
    # the same text under another status is another report too
    assert send(node, oru("RPT20", "ACC1", *text_observations(), status="C"))[0] == "AA"
    assert instances_in(node) == 4


def test_an_oru_of_two_procedures_files_a_report_in_each_study_or_none(node: Mosaic) -> None:
    second_study = f"{STUDY}.2"
    node.ingest.store(make_bytes(patient_id="MRN1", issuer="GENHOSP", patient_name="Müller^Hans",
                                 study_uid=second_study, series_uid=f"{second_study}.1", sop_uid=f"{second_study}.1.1",
                                 accession="ACC2", charset="ISO_IR 100"), IngestOrigin(door="test", facility="north"))
    neck = obr("ACC2", changes={1: "2", 4: "CTNECK^CT neck^L"}) + "\rOBX|1|TX|&IMP^Impression^L||Normal neck.||||||F\r"
    unknown = obr("ACC9", changes={1: "2", 4: "CTNECK^CT neck^L"}) + "\rOBX|1|TX|&IMP^Impression^L||Normal.||||||F\r"
    # the second procedure's accession is not in the archive: neither report is stored
    assert send(node, oru("RPT21", "ACC1", *text_observations()) + unknown.encode("latin-1")) == (
        "AE", "OBR^2^18", "204")
    assert instances_in(node) == 1 and instances_in(node, second_study) == 1
    assert send(node, oru("RPT22", "ACC1", *text_observations()) + neck.encode("latin-1"))[0] == "AA"
    assert instances_in(node) == 2 and instances_in(node, second_study) == 2
    reports = resources(bundle(http(node, "/fhir/DiagnosticReport")), DiagnosticReport)
    assert sorted(report.imagingStudy[0].reference for report in reports) == [
        f"ImagingStudy/{STUDY}", f"ImagingStudy/{second_study}"]
    neck_report = next(report for report in reports if report.imagingStudy[0].reference.endswith(second_study))
    assert neck_report.conclusion == "Normal neck." and "CTNECK" in {c.code for c in neck_report.code.coding}


def test_the_sr_s_request_and_procedure_attributes_of_type_2_are_present(node: Mosaic) -> None:
    assert send(node, oru("RPT22", "ACC1", *text_observations()))[0] == "AA"
    _, sr = newest_report(node)
    [request] = sr.ReferencedRequestSequence
    assert request.StudyInstanceUID == STUDY and request.AccessionNumber == "ACC1"
    for keyword in ("ReferencedStudySequence", "IssuerOfAccessionNumberSequence", "RequestedProcedureID",
                    "RequestedProcedureDescription", "RequestedProcedureCodeSequence",
                    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest"):
        assert keyword in request, keyword
    assert len(request.ReferencedStudySequence) == 0 and len(request.IssuerOfAccessionNumberSequence) == 0
    [code] = request.RequestedProcedureCodeSequence  # OBR-4 code^text^system
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("CTHEAD", "L", "CT head")
    assert "ReferencedPerformedProcedureStepSequence" in sr and "PerformedProcedureCodeSequence" in sr


def test_a_service_code_longer_than_16_characters_is_a_long_code_value(node: Mosaic) -> None:
    service = "RAD-CT-HEAD-WO-CONTRAST^CT head without contrast^L"
    assert send(node, oru("RPT23", "ACC1", *text_observations(), service=service))[0] == "AA"
    _, sr = newest_report(node)
    [code] = sr.ReferencedRequestSequence[0].RequestedProcedureCodeSequence
    assert "CodeValue" not in code and code.LongCodeValue == "RAD-CT-HEAD-WO-CONTRAST"
    assert (code.CodingSchemeDesignator, code.CodeMeaning) == ("L", "CT head without contrast")


def test_report_times_are_hl7_dtm_and_make_a_valid_content_time(node: Mosaic) -> None:
    assert send(node, oru("RPT24", "ACC1", *text_observations(), changes={22: "20261208", 7: ""}))[0] == "AA"
    report, sr = newest_report(node)
    assert (sr.ContentDate, sr.ContentTime) == ("20261208", "000000")  # type 1: never empty
    assert (sr.InstanceCreationDate, sr.InstanceCreationTime) == ("20261208", "000000")
    assert str(report.effectiveDateTime) == "2026-12-08"
    minutes = oru("RPT25", "ACC1", "OBX|1|TX|&IMP^Impression^L||Old lacune.||||||F",
                  changes={22: "202612081015.25+0100"})
    assert send(node, minutes)[0] == "AA"
    _, sr = newest_report(node)
    assert (sr.ContentDate, sr.ContentTime) == ("20261208", "101500")
    assert sr.VerifyingObserverSequence[0].VerificationDateTime == "202612081015"
    before = instances_in(node)
    for control, changes, where in (("RPT26", {22: "20261332101500"}, "OBR^1^22"),
                                    ("RPT27", {22: "", 7: "20260230"}, "OBR^1^7"),
                                    ("RPT28", {22: "2026120810151"}, "OBR^1^22"),
                                    ("RPT29", {22: "20261208256000"}, "OBR^1^22")):
        assert send(node, oru(control, "ACC1", *text_observations(), changes=changes)) == ("AE", where, "102")
    assert instances_in(node) == before


def test_a_final_report_without_a_verifier_is_complete_but_unverified(node: Mosaic) -> None:
    assert send(node, oru("RPT30", "ACC1", *text_observations(), changes={32: ""}))[0] == "AA"
    report, sr = newest_report(node)
    assert report.status == "final"
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert "VerifyingObserverSequence" not in sr


def test_a_result_entered_in_error_is_so_in_fhir(node: Mosaic) -> None:
    document = tiny_pdf()
    assert send(node, oru("RPT31", "ACC1", *text_observations(), pdf_observation(document), status="W"))[0] == "AA"
    reports = resources(bundle(http(node, "/fhir/DiagnosticReport")), DiagnosticReport)
    assert [report.status for report in reports] == ["entered-in-error", "entered-in-error"]
    [entry] = resources(bundle(http(node, "/fhir/DocumentReference")), DocumentReference)
    assert (entry.status, entry.docStatus) == ("entered-in-error", "entered-in-error")


def test_report_reads_and_searches_are_audited_with_the_patient_of_the_reports(node: Mosaic) -> None:
    assert send(node, oru("RPT32", "ACC1", *text_observations()))[0] == "AA"
    report, _ = newest_report(node, identifier="ACC1")  # a search naming no patient
    assert http(node, f"/fhir/DiagnosticReport/{report.id}").status_code == 200

    def audited(action: str) -> bool:
        node.audit.flush()
        records, _ = node.audit.search(patient_id="MRN1", action=action)
        return any("/fhir/DiagnosticReport" in record.detail and record.IssuerOfPatientID == "GENHOSP"
                   for record in records)
    wait_until(lambda: audited("query"), timeout=30, what="the DiagnosticReport search's audit record")
    wait_until(lambda: audited("read"), timeout=30, what="the DiagnosticReport read's audit record")


def test_a_sender_files_reports_only_in_its_own_facility_s_studies(node: Mosaic) -> None:
    """The RIS speaks for north: a report naming a south study (by accession or Study Instance UID) finds no
    study (the same answer as for one not stored) and stores nothing there."""
    south = f"{PREFIX}.5"
    node.ingest.store(make_bytes(patient_id="MRN1", issuer="GENHOSP", study_uid=south, series_uid=f"{south}.1",
                                 sop_uid=f"{south}.1.1", accession="SOUTH1"),
                      IngestOrigin(door="test", facility="south"))
    assert send(node, oru("RPT20", "SOUTH1", *text_observations())) == ("AE", "OBR^1^18", "204")
    by_uid = f"OBX|3|RP|113014^DICOM Study^DCM||{south}^RIS^Application^DICOM||||||F"
    answer = send(node, oru("RPT21", "", *text_observations(), by_uid))
    assert answer[0] == "AE" and answer[2] == "204"
    assert instances_in(node, south) == 1
    with node.database.session() as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 0
    assert send(node, oru("RPT22", "ACC1", *text_observations()))[0] == "AA"  # its own study still takes it
