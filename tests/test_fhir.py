"""FHIR R4 at /fhir: what an EHR reads, parsed back with fhir.resources' R4B models (every resource, every Bundle).

Real HTTP (httpx) against a running node; patients come from the archive's own doors (C-STORE-equivalent ingest
and an HL7 ADT message over MLLP), so the FHIR answers show what those doors made.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from hl7.client import MLLPClient

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, Hl7Sender, Hl7Settings, HttpSettings, Settings
from mosaic.services.origin import IngestOrigin
from tests.auth_support import auth_headers
from tests.factory import make_bytes
from tests.helpers import wait_until

LOCALHOST = "127.0.0.1"
PREFIX = "1.2.826.0.1.3680043.10.1234.97"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    settings = Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                        hl7=Hl7Settings(port=0, senders=[Hl7Sender(application="EPIC", issuer="GENHOSP",
                                                                   may_send=["ADT", "ORM"],
                                                                   patient_facility="north")]))
    mosaic = Mosaic(settings)
    for number, (facility, date, modality) in enumerate(
            [("north", "20240105", "CT"), ("north", "20250310", "MR"), ("south", "20260101", "CT")], start=1):
        mosaic.ingest.store(make_bytes(patient_id="MRN1", issuer="GENHOSP", patient_name="Müller^Hans",
                                       study_uid=f"{PREFIX}.{number}", series_uid=f"{PREFIX}.{number}.1",
                                       sop_uid=f"{PREFIX}.{number}.1.1", modality=modality, study_date=date,
                                       accession=f"ACC{number}"),
                            IngestOrigin(door="test", facility=facility))
    mosaic.start()
    mosaic.identity.add_user("clin.north", roles=["clinician"], password="clin-north-password",
                             facilities=["north"])
    yield mosaic
    mosaic.stop()


def fhir(node: Mosaic, path: str, *, auth: Any = None, **params: Any) -> httpx.Response:
    headers = {} if auth else auth_headers(node)
    return httpx.get(f"http://{LOCALHOST}:{node.http_port}/fhir{path}", params=params, headers=headers, auth=auth,
                     timeout=30)


def bundle(answer: httpx.Response) -> Bundle:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    return Bundle.model_validate(answer.json())


def resources(result: Bundle, kind: type[Any]) -> list[Any]:
    return [kind.model_validate(entry.resource.model_dump()) for entry in result.entry or []
            if entry.resource.get_resource_type() == kind.get_resource_type()]


def test_the_capability_statement_says_what_the_server_does(node: Mosaic) -> None:
    answer = fhir(node, "/metadata")
    statement = CapabilityStatement.model_validate(answer.json())
    assert statement.fhirVersion == "4.0.1" and statement.format == ["json"]
    assert {item.type for item in statement.rest[0].resource} == {
        "Patient", "ImagingStudy", "Endpoint", "ServiceRequest", "AuditEvent", "DiagnosticReport", "DocumentReference",
        "Subscription"}


def test_a_patient_is_found_by_identifier_and_by_name_with_accents_and_read_by_id(node: Mosaic) -> None:
    result = bundle(fhir(node, "/Patient", identifier="urn:mosaic:issuer:GENHOSP|MRN1"))
    [patient] = resources(result, Patient)
    assert result.total == 1 and patient.identifier[0].value == "MRN1"
    assert patient.identifier[0].system == "urn:mosaic:issuer:GENHOSP"
    assert patient.name[0].family == "Müller" and patient.name[0].given == ["Hans"]
    assert [item.id for item in resources(bundle(fhir(node, "/Patient", name="muller")), Patient)] == [patient.id]
    assert resources(bundle(fhir(node, "/Patient", family="Hans")), Patient) == []  # family is the family name
    read = Patient.model_validate(fhir(node, f"/Patient/{patient.id}").json())
    assert read.identifier[0].value == "MRN1"


def test_a_patient_hl7_created_is_there_before_any_image(node: Mosaic) -> None:
    message = ("MSH|^~\\&|EPIC|GENHOSP|MOSAIC|RAD|20261207||ADT^A04^ADT_A01|F1|P|2.5.1|||||||8859/1\r"
               "PID|1||MRN2^^^GENHOSP||Łukasz^Zoë||19900215|F\r")
    with MLLPClient(LOCALHOST, node.hl7_port, encoding="latin-1") as client:
        assert b"MSA|AA" in client.send_message(message.encode("latin-1", errors="replace"))
    [patient] = resources(bundle(fhir(node, "/Patient", identifier="MRN2", birthdate="1990-02")), Patient)
    assert str(patient.birthDate) == "1990-02-15" and patient.gender == "female"
    assert resources(bundle(fhir(node, "/ImagingStudy", patient=f"Patient/{patient.id}")), ImagingStudy) == []


def test_imaging_studies_of_a_patient_with_their_endpoint_and_pages(node: Mosaic) -> None:
    [patient] = resources(bundle(fhir(node, "/Patient", identifier="MRN1")), Patient)
    result = bundle(fhir(node, "/ImagingStudy", patient=f"Patient/{patient.id}", _include="ImagingStudy:endpoint"))
    studies = resources(result, ImagingStudy)
    assert sorted(study.id for study in studies) == [f"{PREFIX}.{n}" for n in (1, 2, 3)]
    [endpoint] = resources(result, Endpoint)
    assert endpoint.address == f"http://{LOCALHOST}:{node.http_port}/dicom-web"
    assert endpoint.connectionType.code == "dicom-wado-rs"
    first = next(study for study in studies if study.id == f"{PREFIX}.1")
    assert first.identifier[0].value == f"urn:oid:{PREFIX}.1" and first.identifier[1].value == "ACC1"
    assert [coding.code for coding in first.modality] == ["CT"] and first.subject.reference == f"Patient/{patient.id}"
    assert str(first.started).startswith("2024-01-05")

    page = bundle(fhir(node, "/ImagingStudy", patient=f"Patient/{patient.id}", _count=2))
    assert page.total == 3 and len(page.entry) == 2
    [following] = [link.url for link in page.link if link.relation == "next"]
    rest = bundle(httpx.get(following, headers=auth_headers(node), timeout=30))
    assert len(rest.entry) == 1 and not [link for link in rest.link if link.relation == "next"]
    assert {entry.resource.id for entry in page.entry + rest.entry} == {f"{PREFIX}.{n}" for n in (1, 2, 3)}

    by_date = resources(bundle(fhir(node, "/ImagingStudy", started="ge2025-01-01")), ImagingStudy)
    assert sorted(study.id for study in by_date) == [f"{PREFIX}.2", f"{PREFIX}.3"]
    assert [s.id for s in resources(bundle(fhir(node, "/ImagingStudy", identifier="ACC2")), ImagingStudy)] == [
        f"{PREFIX}.2"]
    ImagingStudy.model_validate(fhir(node, f"/ImagingStudy/{PREFIX}.1").json())
    Endpoint.model_validate(fhir(node, "/Endpoint/dicomweb").json())


def test_a_scoped_clinician_sees_only_the_studies_of_its_facility(node: Mosaic) -> None:
    clinician = ("clin.north", "clin-north-password")
    studies = resources(bundle(fhir(node, "/ImagingStudy", auth=clinician, modality="CT")),
                        ImagingStudy)
    assert [study.id for study in studies] == [f"{PREFIX}.1"]
    hidden = fhir(node, f"/ImagingStudy/{PREFIX}.3", auth=clinician)
    unknown = fhir(node, "/ImagingStudy/1.2.3.999", auth=clinician)
    assert hidden.status_code == unknown.status_code == 404
    assert OperationOutcome.model_validate(hidden.json()).issue[0].code == "not-found"
    assert hidden.json()["issue"][0]["diagnostics"].replace(f"{PREFIX}.3", "X") == \
        unknown.json()["issue"][0]["diagnostics"].replace("1.2.3.999", "X")


def test_last_updated_finds_what_changed_since_an_instant(node: Mosaic) -> None:
    studies = resources(bundle(fhir(node, "/ImagingStudy")), ImagingStudy)
    assert len(studies) == 3 and all(study.meta and study.meta.lastUpdated for study in studies)
    before = max(study.meta.lastUpdated for study in studies)
    time.sleep(1.1)  # lastUpdated has a precision of one second
    node.ingest.store(make_bytes(patient_id="MRN1", issuer="GENHOSP", patient_name="Müller^Hans",
                                 study_uid=f"{PREFIX}.2", series_uid=f"{PREFIX}.2.2", sop_uid=f"{PREFIX}.2.2.1",
                                 modality="MR", study_date="20250310", accession="ACC2"),
                      IngestOrigin(door="test", facility="north"))
    since = before.isoformat().replace("+00:00", "Z")
    changed = resources(bundle(fhir(node, "/ImagingStudy", _lastUpdated=f"gt{since}")), ImagingStudy)
    assert [study.id for study in changed] == [f"{PREFIX}.2"] and changed[0].numberOfInstances == 2
    unchanged = resources(bundle(fhir(node, "/ImagingStudy", _lastUpdated=f"le{since}")), ImagingStudy)
    assert sorted(study.id for study in unchanged) == [f"{PREFIX}.1", f"{PREFIX}.3"]
    today = resources(bundle(fhir(node, "/ImagingStudy", _lastUpdated=before.date().isoformat())), ImagingStudy)
    assert len(today) == 3 or before.date() != changed[0].meta.lastUpdated.date()  # a day covers its instants
    [patient] = resources(bundle(fhir(node, "/Patient", _lastUpdated=f"le{since}")), Patient)
    assert patient.meta.lastUpdated is not None
    for bad in ("2026-12-07T10:00:00", "gt2026-13-01", "yesterday"):  # no UTC offset, no such month, no date
        answer = fhir(node, "/ImagingStudy", _lastUpdated=bad)
        assert answer.status_code == 400 and OperationOutcome.model_validate(answer.json()).issue, bad
    empty = httpx.get(f"http://{LOCALHOST}:{node.http_port}/fhir/ImagingStudy",
                      params=[("_lastUpdated", "ge2026-12-08"), ("_lastUpdated", "lt2026-12-01")],
                      headers=auth_headers(node), timeout=30)  # nothing is both
    assert empty.status_code == 400 and "_lastUpdated" in empty.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(("params", "status"), [
    ({"shoe-size": "42"}, 400),  # an unknown parameter is refused, not ignored
    ({"birthdate": "1990-13-45"}, 400),
    ({"_format": "xml"}, 406),
    ({"name:exact": "Hans"}, 400),
])
def test_a_search_it_cannot_run_is_an_operation_outcome(node: Mosaic, params: dict[str, str], status: int) -> None:
    answer = fhir(node, "/Patient", **params)
    assert answer.status_code == status
    outcome = OperationOutcome.model_validate(answer.json())
    assert outcome.issue[0].severity == "error" and outcome.issue[0].diagnostics


def test_a_search_is_audited(node: Mosaic) -> None:
    bundle(fhir(node, "/Patient", identifier="MRN1"))

    def recorded() -> bool:  # the middleware records a request's entry just after its answer went out
        node.audit.flush()
        records, _ = node.audit.search(action="query")
        return any("/fhir/Patient" in record.detail and "MRN1" in record.detail for record in records)
    wait_until(recorded, timeout=30, what="the FHIR search's audit record")


def order(control: str, accession: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|EPIC|GENHOSP|MOSAIC|RAD|20261207||ORM^O01^ORM_O01|{accession}{control}|P|2.3.1",
        "PID|1||MRN1^^^GENHOSP||Müller^Hans||19600101|M",
        f"ORC|{control}|P{accession}|F{accession}||SC||^^^202612081000^^S",
        f"OBR|1|P{accession}|F{accession}|CTHEAD^CT head^L||||||||||||||{accession}|RP{accession}|SPS{accession}|CT01"
        "|||CT"]) + "\r"


def test_orders_are_service_requests_of_their_patient(node: Mosaic) -> None:
    with MLLPClient(LOCALHOST, node.hl7_port, encoding="latin-1") as client:
        assert b"MSA|AA" in client.send_message(order("NW", "SR1"))
    [patient] = resources(bundle(fhir(node, "/Patient", identifier="MRN1")), Patient)
    [request] = resources(bundle(fhir(node, "/ServiceRequest", patient=f"Patient/{patient.id}")), ServiceRequest)
    assert request.status == "active" and request.intent == "order" and request.priority == "stat"
    assert request.subject.reference == f"Patient/{patient.id}" and request.code.coding[0].code == "CTHEAD"
    assert {identifier.value for identifier in request.identifier} == {"SR1", "PSR1", "FSR1"}
    clinician = ("clin.north", "clin-north-password")  # the order's facility is the sender's: north
    assert len(bundle(fhir(node, "/ServiceRequest", auth=clinician, identifier="SR1")).entry) == 1
    with MLLPClient(LOCALHOST, node.hl7_port, encoding="latin-1") as client:
        assert b"MSA|AA" in client.send_message(order("CA", "SR1"))
    assert ServiceRequest.model_validate(fhir(node, f"/ServiceRequest/{request.id}").json()).status == "revoked"
    assert fhir(node, "/ServiceRequest/999999").status_code == 404


def test_auditors_read_the_trail_as_audit_events(node: Mosaic) -> None:
    [patient] = resources(bundle(fhir(node, "/Patient", identifier="MRN1")), Patient)
    fhir(node, f"/Patient/{patient.id}")

    def events() -> list[AuditEvent]:
        node.audit.flush()
        return resources(bundle(fhir(node, "/AuditEvent", patient=f"Patient/{patient.id}", _count=5)), AuditEvent)
    wait_until(lambda: bool(events()), timeout=30, what="the read's audit record")
    assert all(event.recorded for event in events())
    refused = fhir(node, "/AuditEvent", auth=("clin.north", "clin-north-password"))
    assert refused.status_code == 403
    assert OperationOutcome.model_validate(refused.json()).issue[0].code == "forbidden"
