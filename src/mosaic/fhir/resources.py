"""Index rows as FHIR R4 resources (fhir.resources' R4B models, so every answer is validated as it is built).

* ``Patient``: id = the archive's patient number; identifier = PatientID with its issuer as the system
  (``urn:oid:`` for an OID, the issuer itself when it is a URI, ``urn:mosaic:issuer:<issuer>`` otherwise);
  name from the DICOM person name (family^given^middle^prefix^suffix); birthDate; gender.
* ``ImagingStudy``: id = StudyInstanceUID; identifiers ``urn:dicom:uid`` / ``urn:oid:<uid>`` and the accession
  (type ACSN); modalities as DCM codes; counts; the DICOMweb ``Endpoint``.
* ``Endpoint`` ``dicomweb``: connectionType ``dicom-wado-rs``, Mosaic's DICOMweb root as the client sees it.
* ``DiagnosticReport``: id = the report instance's SOP Instance UID (a Basic Text SR or Encapsulated PDF stored
  from HL7); status, LOINC 11528-7 (and the OBR-4 code), subject, imagingStudy, basedOn (the order's
  ServiceRequest), conclusion, presentedForm (the text, the instance by WADO-RS, the PDF by its bulk data URI).
* ``DocumentReference``: an Encapsulated PDF; content.attachment the PDF's WADO-RS bulk data URI.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest

from mosaic.services.content import STREAM_MEDIA_TYPES

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
    if (updated := getattr(row, "updated_at", None)) is not None:
        data["meta"] = {"lastUpdated": _instant(updated)}
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
    if (updated := getattr(study, "updated_at", None)) is not None:
        data["meta"] = {"lastUpdated": _instant(updated)}
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


LOINC = "http://loinc.org"
REPORT_CODING = {"system": LOINC, "code": "11528-7", "display": "Radiology Report"}
ENCAPSULATED_DOCUMENT_TAG = "00420011"


def _report_links(report: Any, dicomweb_root: str) -> tuple[str, str]:
    """The WADO-RS URL of a report's instance and of its Encapsulated Document's bulk data."""
    instance = (f"{dicomweb_root}/studies/{report.StudyInstanceUID}/series/{report.SeriesInstanceUID}"
                f"/instances/{report.SOPInstanceUID}")
    return instance, f"{instance}/bulkdata/{ENCAPSULATED_DOCUMENT_TAG}"


def _report_code(report: Any) -> dict[str, Any]:
    code, meaning, scheme = [*str(report.code or "").split("^"), "", "", ""][:3]
    codings: list[dict[str, Any]] = [dict(REPORT_CODING)]
    if code and code != REPORT_CODING["code"]:
        coding: dict[str, Any] = {"code": code, "system": LOINC if scheme.upper() in ("LN", "LOINC") else
                                  f"urn:mosaic:coding-scheme:{scheme or 'local'}"}
        if meaning:
            coding["display"] = meaning
        codings.append(coding)
    return {"coding": codings, "text": report.title or meaning or REPORT_CODING["display"]}


def _instant(value: Any) -> str:
    moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return str(moment.astimezone(UTC).isoformat(timespec="seconds"))


def _pdf_attachment(report: Any, dicomweb_root: str) -> dict[str, Any]:
    attachment: dict[str, Any] = {"contentType": "application/pdf", "url": _report_links(report, dicomweb_root)[1],
                                  "title": report.title or "Report"}
    if report.document_length is not None:
        attachment["size"] = int(report.document_length)
    return attachment


def diagnostic_report_resource(report: Any, patient_pk: int, dicomweb_root: str) -> DiagnosticReport:
    """A report stored from HL7 (its index row) as the DiagnosticReport an EHR reads."""
    instance_url, _ = _report_links(report, dicomweb_root)
    forms: list[dict[str, Any]] = [{"contentType": "application/dicom", "url": instance_url,
                                    "title": report.title or "Report"}]
    if report.kind == "PDF":
        forms.append(_pdf_attachment(report, dicomweb_root))
    text = "\n\n".join(part for part in (report.text, report.conclusion) if part)
    if text:
        forms.insert(0, {"contentType": "text/plain; charset=utf-8", "title": report.title or "Report",
                         "data": base64.b64encode(text.encode("utf-8")).decode("ascii")})
    data: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": report.SOPInstanceUID,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{report.SOPInstanceUID}"}],
        "status": report.status or "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": _report_code(report), "subject": {"reference": f"Patient/{patient_pk}"},
        "imagingStudy": [{"reference": f"ImagingStudy/{report.StudyInstanceUID}"}],
        "issued": _instant(report.created_at), "presentedForm": forms,
    }
    if report.scheduled_step_pk is not None:
        data["basedOn"] = [{"reference": f"ServiceRequest/{report.scheduled_step_pk}"}]
    if report.AccessionNumber:
        data["identifier"].append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                        "code": "ACSN"}]}, "value": report.AccessionNumber})
    if effective := _date(str(report.observed or "")):
        data["effectiveDateTime"] = effective  # the day only: the message's time has no UTC offset
    if report.performer:
        names = _human_name(report.performer)
        display = names[0]["text"] if names else report.performer
        data["resultsInterpreter"] = [{"display": display}]
        data["performer"] = [{"display": display}]
    if report.conclusion or report.text:
        data["conclusion"] = report.conclusion or report.text
    return DiagnosticReport.model_validate(data)


_DOC_STATUS = {"final": "final", "corrected": "amended", "amended": "amended", "entered-in-error": "entered-in-error"}
"""DiagnosticReport.status (the report row's) → DocumentReference.docStatus (preliminary, final, amended,
entered-in-error)."""


def document_reference_resource(report: Any, patient_pk: int, dicomweb_root: str) -> DocumentReference:
    """An Encapsulated PDF stored from HL7 as a DocumentReference: the PDF itself by its WADO-RS bulk data URI."""
    data: dict[str, Any] = {
        "resourceType": "DocumentReference", "id": report.SOPInstanceUID,
        "masterIdentifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{report.SOPInstanceUID}"},
        "status": "entered-in-error" if report.status == "entered-in-error" else "current",
        "docStatus": _DOC_STATUS.get(report.status, "preliminary"),
        "type": {"coding": [dict(REPORT_CODING)], "text": report.title or REPORT_CODING["display"]},
        "subject": {"reference": f"Patient/{patient_pk}"}, "date": _instant(report.created_at),
        "content": [{"attachment": _pdf_attachment(report, dicomweb_root)}],
        "context": {"related": [{"reference": f"ImagingStudy/{report.StudyInstanceUID}"}]},
    }
    if report.AccessionNumber:
        data["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                    "code": "ACSN"}]}, "value": report.AccessionNumber}]
    if report.performer:
        names = _human_name(report.performer)
        data["author"] = [{"display": names[0]["text"] if names else report.performer}]
    return DocumentReference.model_validate(data)


def captured_document_resource(document: Any, origin: str) -> DocumentReference:
    """A photo, video or PDF of a study (captured in the portal, sent by STOW-RS or a modality) as a
    DocumentReference: its content as it was captured, from the portal's content URL (the caller's own
    credentials fetch it, within their scope), or for a photo stored decoded its rendering."""
    content_url = (f"{origin}/portal/content/{document.StudyInstanceUID}/{document.SeriesInstanceUID}/"
                   f"{document.SOPInstanceUID}")
    if document.kind == "document":
        attachment: dict[str, Any] = {"contentType": "application/pdf", "url": content_url}
    elif document.TransferSyntaxUID in STREAM_MEDIA_TYPES:  # the JPEG or MP4 as it came
        attachment = {"contentType": STREAM_MEDIA_TYPES[document.TransferSyntaxUID], "url": content_url}
    else:  # a photo converted losslessly: its rendering (the original file is at ?original=1)
        attachment = {"contentType": "image/jpeg", "url": f"{origin}/dicom-web/studies/{document.StudyInstanceUID}"
                      f"/series/{document.SeriesInstanceUID}/instances/{document.SOPInstanceUID}/rendered"}
    title = document.SeriesDescription or {"photo": "Photo", "video": "Video", "document": "Document"}.get(
        document.kind, "Document")
    attachment["title"] = title
    data: dict[str, Any] = {
        "resourceType": "DocumentReference", "id": document.SOPInstanceUID,
        "masterIdentifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{document.SOPInstanceUID}"},
        "status": "current", "docStatus": "final", "type": {"text": title},
        "category": [{"text": {"photo": "Clinical photograph", "video": "Clinical video"}.get(document.kind,
                                                                                             "Clinical document")}],
        "subject": {"reference": f"Patient/{document.patient_pk}"}, "date": _instant(document.received_at),
        "content": [{"attachment": attachment}],
        "context": {"related": [{"reference": f"ImagingStudy/{document.StudyInstanceUID}"}]},
    }
    if document.department:
        data["context"]["practiceSetting"] = {"text": document.department}
    if document.AccessionNumber:
        data["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                    "code": "ACSN"}]}, "value": document.AccessionNumber}]
    return DocumentReference.model_validate(data)
