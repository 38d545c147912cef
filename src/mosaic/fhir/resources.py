"""Index rows as FHIR R4 resources (fhir.resources' R4B models, so every answer is validated as it is built).

* ``Patient``: id = the archive's patient number; identifier = PatientID with its issuer as the system
  (``urn:oid:`` for an OID, the issuer itself when it is a URI, ``urn:mosaic:issuer:<issuer>`` otherwise);
  name from the DICOM person name (family^given^middle^prefix^suffix); birthDate; gender.
* ``ImagingStudy``: id = StudyInstanceUID; identifiers ``urn:dicom:uid`` / ``urn:oid:<uid>`` and the accession
  (type ACSN); modalities as DCM codes; counts; the DICOMweb ``Endpoint``.
* ``Endpoint`` ``dicomweb``: connectionType ``dicom-wado-rs``, Mosaic's DICOMweb root as the client sees it.
"""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENDPOINT_ID = "dicomweb"
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_GENDER = {"M": "male", "F": "female", "O": "other"}


def issuer_system(issuer: str) -> str | None:
    if not issuer:
        return None
    if _OID.match(issuer):
        return f"urn:oid:{issuer}"
    if ":" in issuer:
        return issuer
    return f"urn:mosaic:issuer:{issuer}"


def issuer_of_system(system: str) -> str:
    """The IssuerOfPatientID a search's identifier system names (the inverse of :func:`issuer_system`)."""
    for prefix in ("urn:oid:", "urn:mosaic:issuer:"):
        if system.startswith(prefix):
            return system[len(prefix):]
    return system


def _date(value: str) -> str | None:
    value = (value or "").strip()
    if len(value) >= 8 and value[:8].isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:8]}"
    return None


def _human_name(dicom_name: str) -> list[dict[str, Any]]:
    alphabetic = (dicom_name or "").split("=")[0]
    if not alphabetic.strip("^ "):
        return []
    parts = (alphabetic.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (part.strip() for part in parts)
    name: dict[str, Any] = {"text": " ".join(part for part in (prefix, given, middle, family, suffix) if part)}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [part for part in (given, middle) if part]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return [name]


def patient_resource(pk: int, row: Any) -> Patient:
    identifier: dict[str, Any] = {"value": row.PatientID, "type": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}
    system = issuer_system(row.IssuerOfPatientID)
    if system:
        identifier["system"] = system
    data: dict[str, Any] = {"resourceType": "Patient", "id": str(pk), "identifier": [identifier],
                            "name": _human_name(str(row.PatientName or ""))}
    if birth := _date(str(row.PatientBirthDate or "")):
        data["birthDate"] = birth
    data["gender"] = _GENDER.get(str(row.PatientSex or "").upper(), "unknown")
    if not data["name"]:
        del data["name"]
    return Patient.model_validate(data)


def imaging_study_resource(study: Any, patient_pk: int) -> ImagingStudy:
    identifiers: list[dict[str, Any]] = [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.StudyInstanceUID}"}]
    if study.AccessionNumber:
        identifiers.append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "ACSN"}]}, "value": study.AccessionNumber})
    data: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": study.StudyInstanceUID, "status": "available",
        "identifier": identifiers, "subject": {"reference": f"Patient/{patient_pk}"},
        "endpoint": [{"reference": f"Endpoint/{ENDPOINT_ID}"}],
        "numberOfSeries": int(study.NumberOfStudyRelatedSeries or 0),
        "numberOfInstances": int(study.NumberOfStudyRelatedInstances or 0),
    }
    modalities = [item for item in str(study.ModalitiesInStudy or "").split("\\") if item]
    if modalities:
        data["modality"] = [{"system": DCM, "code": code} for code in modalities]
    if started := _date(str(study.StudyDate or "")):
        # the day only: FHIR wants a time with its UTC offset, and DICOM's StudyTime has none
        data["started"] = started
    if study.StudyDescription:
        data["description"] = study.StudyDescription
    return ImagingStudy.model_validate(data)


_ORDER_STATUS = {"SCHEDULED": "active", "STARTED": "active", "COMPLETED": "completed", "CANCELED": "revoked",
                 "DISCONTINUED": "revoked"}
_ORDER_PRIORITY = {"STAT": "stat", "HIGH": "asap", "MEDIUM": "urgent", "ROUTINE": "routine"}


def service_request_resource(step: Any, patient_pk: int | None) -> ServiceRequest:
    """A scheduled procedure step of an order as the ServiceRequest it fulfils."""
    identifiers: list[dict[str, Any]] = [{"type": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}, "value": step.AccessionNumber}]
    for code, value in (("PLAC", step.placer_order), ("FILL", step.filler_order)):
        if value:
            identifiers.append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                     "code": code}]}, "value": value})
    code, meaning, scheme = [*str(step.RequestedProcedureCode or "").split("^"), "", "", ""][:3]
    concept: dict[str, Any] = {"text": step.RequestedProcedureDescription or meaning or code or "imaging procedure"}
    if code:
        coding: dict[str, Any] = {"code": code}
        if meaning:
            coding["display"] = meaning
        if scheme:
            coding["system"] = f"urn:mosaic:coding-scheme:{scheme}"
        concept["coding"] = [coding]
    data: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": str(step.pk), "identifier": identifiers,
        "status": _ORDER_STATUS.get(step.ScheduledProcedureStepStatus, "unknown"), "intent": "order",
        "code": concept, "subject": {"reference": f"Patient/{patient_pk}"} if patient_pk is not None else
        {"identifier": {"value": step.PatientID}},
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005",
                                  "display": "Imaging"}]}],
    }
    if priority := _ORDER_PRIORITY.get(step.RequestedProcedurePriority):
        data["priority"] = priority
    if when := _date(str(step.ScheduledProcedureStepStartDate or "")):
        data["occurrenceDateTime"] = when
    return ServiceRequest.model_validate(data)


def endpoint_resource(dicomweb_root: str) -> Endpoint:
    return Endpoint.model_validate({
        "resourceType": "Endpoint", "id": ENDPOINT_ID, "status": "active", "name": "Mosaic DICOMweb",
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                           "code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}], "payloadMimeType": ["application/dicom"], "address": dicomweb_root})


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> OperationOutcome:
    """``code``: an IssueType (not-found, invalid, not-supported, forbidden, security, exception)."""
    return OperationOutcome.model_validate({"resourceType": "OperationOutcome", "issue": [
        {"severity": severity, "code": code, "diagnostics": diagnostics}]})
