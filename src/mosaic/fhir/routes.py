"""The FHIR R4 REST API at ``/fhir``: ``metadata``; read and search of ``Patient``, ``ImagingStudy``,
``ServiceRequest``, ``DiagnosticReport`` and ``DocumentReference``; the DICOMweb ``Endpoint``. JSON only
(``application/fhir+json``). Every search and read asks the access policy (the ``query`` / ``read`` permissions,
the caller's scope inside the query) and leaves its audit entry; errors are OperationOutcome resources with the
HTTP status that fits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from mosaic import __version__
from mosaic.core.errors import QueryError
from mosaic.fhir.answers import MEDIA_TYPE, FhirError, outcome_answer, resource_answer
from mosaic.fhir.resources import (
    ENDPOINT_ID,
    captured_document_resource,
    diagnostic_report_resource,
    document_reference_resource,
    endpoint_resource,
    imaging_study_resource,
    patient_resource,
    service_request_resource,
)
from mosaic.fhir.search import DEFAULT_COUNT, MAX_COUNT, Search, SearchError, date_range, parse_search
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail
from mosaic.governance.audit_export import fhir_audit_event
from mosaic.governance.policy import AccessPolicy, Permission, Principal
from mosaic.http.auth import principal_of, require
from mosaic.http.origin import client_origin
from mosaic.index.query import Match, MatchKey, Query
from mosaic.services.documents import DocumentService
from mosaic.services.patients import PatientService
from mosaic.services.query import QueryService
from mosaic.services.reports import ReportService
from mosaic.services.worklist import WorklistService


def create_fhir_router(*, policy: AccessPolicy, query_service: QueryService, patients: PatientService,
                       worklist: WorklistService | None = None, reports: ReportService | None = None,
                       documents: DocumentService | None = None, audit_trail: AuditTrail | None = None,
                       observer: str = "MOSAIC") -> APIRouter:
    router = APIRouter(prefix="/fhir")

    def guarded(request: Request, permission: Permission, action: str) -> Principal:
        try:
            return require(request, permission, action=action)
        except HTTPException as exc:
            raise FhirError(exc.status_code, str(exc.detail)) from None

    def accept_json(request: Request) -> None:
        accept = request.headers.get("accept", "")
        if accept and not any(kind in accept for kind in ("json", "*/*")):
            raise FhirError(406, f"Mosaic answers FHIR as {MEDIA_TYPE}, not {accept!r}")
        fmt = request.query_params.get("_format")
        if fmt is not None and fmt not in ("json", MEDIA_TYPE, "application/json"):
            raise FhirError(406, f"_format={fmt!r}: Mosaic answers FHIR in JSON only")

    def handled(call: Any) -> Response:
        try:
            return call()  # type: ignore[no-any-return]
        except FhirError as exc:
            return outcome_answer(exc.status, str(exc))
        except (SearchError, QueryError) as exc:
            return outcome_answer(400, str(exc))

    def patient_identity(reference: str) -> tuple[str, str] | None:
        """(PatientID, issuer) of ``Patient/<id>`` (or a bare id), or None when no such patient exists."""
        pk_text = reference.removeprefix("Patient/")
        return patients.identity_of(int(pk_text)) if pk_text.isdigit() else None

    def patient_keys(reference: str) -> list[MatchKey] | None:
        identity = patient_identity(reference)
        if identity is None:
            return None
        return [MatchKey("PatientID", identity[0], "LO"), MatchKey("IssuerOfPatientID", identity[1], "LO")]

    def find(principal: Principal, query: Query) -> list[Match]:
        return query_service.find(query, door="fhir", scope=policy.scope(principal))

    def audit(request: Request, principal: Principal, action: str, matches: list[Match], **values: Any) -> None:
        studies = sorted({match.rows["STUDY"].StudyInstanceUID for match in matches if "STUDY" in match.rows})
        request.state.audit = AuditEntry.of(principal, action, "", detail={
            "path": request.url.path, "query": str(request.query_params)[:1000], "matches": len(matches),
            "studies": studies[:100], "patients": sorted({m.rows["PATIENT"].PatientID for m in matches})[:100]},
            **values)

    def base(request: Request) -> str:
        return client_origin(request) + "/fhir"

    def resource_of(resource: str, match: Match) -> Any:
        if resource == "Patient":
            return patient_resource(match.rows["PATIENT"].pk, match.rows["PATIENT"])
        return imaging_study_resource(match.rows["STUDY"], match.rows["PATIENT"].pk)

    def search(request: Request, resource: str) -> Response:
        accept_json(request)
        principal = guarded(request, Permission.QUERY, AuditAction.QUERY)
        parsed: Search = parse_search(resource, list(request.query_params.multi_items()))
        matches: list[Match] = []
        total = 0
        keys = patient_keys(parsed.patient_pk) if parsed.patient_pk is not None else []
        if keys is not None:  # None: the patient referred to does not exist, so nothing matches
            parsed.query.keys += keys
            scope = policy.scope(principal)
            if parsed.count:
                matches = query_service.find(parsed.query, door="fhir", scope=scope)
            total = (query_service.count(parsed.query, scope=scope)
                     if parsed.offset or len(matches) >= parsed.count else len(matches))
        audit(request, principal, AuditAction.QUERY, matches)
        items = [resource_of(resource, match).model_dump(mode="json", exclude_none=True) for match in matches]
        included = []
        if parsed.include_endpoint and matches:
            included.append(endpoint_resource(client_origin(request) + "/dicom-web")
                            .model_dump(mode="json", exclude_none=True))
        return searchset(request, resource, items, total, parsed.count, parsed.offset, parsed.page_parameters,
                         included=included)

    def read(request: Request, resource: str, identifier: str) -> Response:
        accept_json(request)
        principal = guarded(request, Permission.READ, AuditAction.READ)
        matches: list[Match] = []
        if resource == "Patient":
            keys = patient_keys(identifier)
            if keys is not None:
                matches = find(principal, Query("PATIENT", keys, limit=1))
        else:
            matches = find(principal, Query("STUDY", [MatchKey("StudyInstanceUID", identifier, "UI")], limit=1))
        first = matches[0] if matches else None
        audit(request, principal, AuditAction.READ, matches,
              PatientID=first.rows["PATIENT"].PatientID if first else "",
              IssuerOfPatientID=first.rows["PATIENT"].IssuerOfPatientID if first else "",
              StudyInstanceUID=identifier if resource == "ImagingStudy" else "")
        if first is None:  # unknown and outside the caller's scope answer alike
            raise FhirError(404, f"{resource}/{identifier} is not known")
        return resource_answer(resource_of(resource, first))

    @router.get("/metadata")
    def metadata(request: Request) -> Response:
        principal_of(request)  # authenticated by the middleware: who may connect may read what the server does
        def answer() -> Response:
            accept_json(request)
            return resource_answer(capability_statement(base(request)))
        return handled(answer)

    @router.get("/Patient")
    def search_patients(request: Request) -> Response:
        return handled(lambda: search(request, "Patient"))

    @router.get("/Patient/{identifier}")
    def read_patient(request: Request, identifier: str) -> Response:
        return handled(lambda: read(request, "Patient", identifier))

    @router.get("/ImagingStudy")
    def search_studies(request: Request) -> Response:
        return handled(lambda: search(request, "ImagingStudy"))

    @router.get("/ImagingStudy/{identifier}")
    def read_study(request: Request, identifier: str) -> Response:
        return handled(lambda: read(request, "ImagingStudy", identifier))

    def plain_parameters(request: Request, allowed: frozenset[str]) -> tuple[dict[str, str], int, int]:
        """The parameters of a search served without a Query (ServiceRequest, AuditEvent): checked, one value
        each, and the page asked for."""
        given: dict[str, str] = {}
        for name, value in request.query_params.multi_items():
            if name not in allowed | {"_count", "_offset", "_format"}:
                raise FhirError(400, f"search parameter {name!r} is not supported (supported: "
                                     f"{', '.join(sorted(allowed | {'_count', '_offset'}))})")
            given[name] = value
        try:
            count = max(0, min(int(given.pop("_count", DEFAULT_COUNT)), MAX_COUNT))
            offset = max(0, min(int(given.pop("_offset", 0)), 10**9))
        except ValueError as exc:
            raise FhirError(400, f"_count and _offset are numbers: {exc}") from None
        given.pop("_format", None)
        return given, count, offset

    def searchset(request: Request, resource: str, items: list[dict[str, Any]], total: int, count: int,
                  offset: int, given: list[tuple[str, str]], *,
                  included: list[dict[str, Any]] | None = None) -> Response:
        """A searchset Bundle: the matches, anything ``_include``d, and self / next links that repeat the search's
        own parameters with the page."""
        root = base(request)
        page = [*given, ("_count", str(count))]
        links = [{"relation": "self", "url": f"{root}/{resource}?{urlencode([*page, ('_offset', str(offset))])}"}]
        if count and offset + count < total:
            links.append({"relation": "next",
                          "url": f"{root}/{resource}?{urlencode([*page, ('_offset', str(offset + count))])}"})
        entries = [{"fullUrl": f"{root}/{resource}/{item['id']}", "resource": item, "search": {"mode": "match"}}
                   for item in items]
        entries += [{"fullUrl": f"{root}/{item['resourceType']}/{item['id']}", "resource": item,
                     "search": {"mode": "include"}} for item in included or []]
        return resource_answer(Bundle.model_validate({"resourceType": "Bundle", "type": "searchset", "total": total,
                                            "link": links, "entry": entries or None}))

    def service_requests(request: Request, step_pk: int | None = None) -> Response:
        accept_json(request)
        if worklist is None:
            raise FhirError(404, "this node keeps no orders")
        principal = guarded(request, Permission.QUERY if step_pk is None else Permission.READ,
                            AuditAction.QUERY if step_pk is None else AuditAction.READ)
        given, count, offset = plain_parameters(request, frozenset({"patient", "subject", "identifier"})) \
            if step_pk is None else ({}, 1, 0)
        patient: tuple[str, str] | None = None
        reference = given.get("patient") or given.get("subject")
        if reference is not None:
            patient = patient_identity(reference)
            if patient is None:
                count = 0
        accession = given["identifier"].split("|")[-1] if "identifier" in given else None
        rows, total = worklist.orders(scope=policy.scope(principal), patient=patient, accession=accession,
                                      step_pk=step_pk, limit=count, offset=offset) if count else ([], 0)
        request.state.audit = AuditEntry.of(principal, AuditAction.QUERY if step_pk is None else AuditAction.READ,
                                            "", PatientID=patient[0] if patient else
                                            rows[0].PatientID if step_pk is not None and rows else "",
                                            detail={"path": request.url.path, "query": str(request.query_params),
                                                    "matches": total})
        numbers = {identity: patients.pk_of(*identity)  # one lookup per patient, not per order
                   for identity in {(row.PatientID, row.IssuerOfPatientID) for row in rows}}
        items = [service_request_resource(row, numbers[(row.PatientID, row.IssuerOfPatientID)])
                 .model_dump(mode="json", exclude_none=True) for row in rows]
        if step_pk is not None:
            if not items:
                raise FhirError(404, f"ServiceRequest/{step_pk} is not known")
            return Response(json.dumps(items[0]), media_type=MEDIA_TYPE)
        return searchset(request, "ServiceRequest", items, total, count, offset, list(given.items()))

    @router.get("/ServiceRequest")
    def search_service_requests(request: Request) -> Response:
        return handled(lambda: service_requests(request))

    @router.get("/ServiceRequest/{identifier}")
    def read_service_request(request: Request, identifier: str) -> Response:
        # not a number: no order has it (0 is never an order's number), answered like any unknown one
        return handled(lambda: service_requests(request, int(identifier) if identifier.isdigit() else 0))

    def report_resources(request: Request, resource: str, identifier: str | None = None) -> Response:
        """DiagnosticReport (every stored report) and DocumentReference (the Encapsulated PDFs): search, or read
        by SOP Instance UID (``identifier``), within the caller's scope."""
        accept_json(request)
        if reports is None:
            raise FhirError(404, "this node keeps no reports")
        reading = identifier is not None
        principal = guarded(request, Permission.READ if reading else Permission.QUERY,
                            AuditAction.READ if reading else AuditAction.QUERY)
        allowed = {"patient", "subject", "identifier", "_id"} | ({"based-on", "status"}
                                                                  if resource == "DiagnosticReport" else set())
        given, count, offset = plain_parameters(request, frozenset(allowed)) if not reading else ({}, 1, 0)
        patient: tuple[str, str] | None = None
        reference = given.get("patient") or given.get("subject")
        if reference is not None:
            patient = patient_identity(reference)
            if patient is None:
                count = 0  # no such patient: nothing matches
        sop_uid = identifier if reading else given.get("_id")
        accession = None
        if "identifier" in given:
            system, _, value = given["identifier"].rpartition("|")
            if value.startswith("urn:oid:") or system == "urn:dicom:uid":
                sop_uid = value.removeprefix("urn:oid:")
            else:
                accession = value
        step_pk = None
        if "based-on" in given:
            number = given["based-on"].removeprefix("ServiceRequest/")
            step_pk = int(number) if number.isdigit() else 0
        if resource == "DocumentReference" and documents is not None:
            return document_resources(request, principal, reading, identifier, given, count, offset, patient,
                                      sop_uid, accession)
        found, total = reports.find(scope=policy.scope(principal), patient=patient, step_pk=step_pk,
                                    kind="PDF" if resource == "DocumentReference" else None,
                                    status=given.get("status"), accession=accession, sop_instance_uid=sop_uid,
                                    limit=count, offset=offset) if count else ([], 0)
        root = client_origin(request) + "/dicom-web"
        build = diagnostic_report_resource if resource == "DiagnosticReport" else document_reference_resource
        items = [build(item.row, item.patient_pk, root).model_dump(mode="json", exclude_none=True) for item in found]
        return audited_answer(request, principal, resource, identifier, items, total, count, offset, given, patient,
                              [(item.PatientID, item.IssuerOfPatientID, item.row.StudyInstanceUID,
                                item.row.SOPInstanceUID) for item in found])

    def audited_answer(request: Request, principal: Principal, resource: str, identifier: str | None,
                       items: list[dict[str, Any]], total: int, count: int, offset: int, given: dict[str, str],
                       patient: tuple[str, str] | None, keys: list[tuple[str, str, str, str]]) -> Response:
        """A read (``identifier``) or search of reports or documents, and its audit entry: ``keys`` are the
        (PatientID, issuer, Study and SOP Instance UID) of each resource in ``items``."""
        reading = identifier is not None
        first = keys[0] if keys else None
        patients = sorted({(key[0], key[1]) for key in keys})
        # the patient whose resources were returned (one patient: named; several: listed in the detail)
        audited = patients[0] if len(patients) == 1 else (patient or ("", "")) if not keys else ("", "")
        request.state.audit = AuditEntry.of(
            principal, AuditAction.READ if reading else AuditAction.QUERY, "",
            PatientID=audited[0], IssuerOfPatientID=audited[1],
            StudyInstanceUID=first[2] if reading and first else "",
            SOPInstanceUID=first[3] if reading and first else "",
            detail={"path": request.url.path, "query": str(request.query_params)[:1000], "matches": total,
                    "studies": sorted({key[2] for key in keys})[:100],
                    "patients": sorted({key[0] for key in keys})[:100]})
        if reading:
            if not items:  # unknown and outside the caller's scope answer alike
                raise FhirError(404, f"{resource}/{identifier} is not known")
            return Response(json.dumps(items[0]), media_type=MEDIA_TYPE)
        return searchset(request, resource, items, total, count, offset, list(given.items()))

    def document_resources(request: Request, principal: Principal, reading: bool, identifier: str | None,
                           given: dict[str, str], count: int, offset: int, patient: tuple[str, str] | None,
                           sop_uid: str | None, accession: str | None) -> Response:
        """DocumentReference: every PDF, photo and video of the caller's studies (an HL7 report's PDF with what
        its report row says)."""
        assert documents is not None
        found, total = documents.find(scope=policy.scope(principal), patient=patient, sop_instance_uid=sop_uid,
                                      accession=accession, limit=count, offset=offset) if count else ([], 0)
        origin = client_origin(request)
        items = [(document_reference_resource(item.report, item.patient_pk, origin + "/dicom-web")
                  if item.report is not None else captured_document_resource(item, origin))
                 .model_dump(mode="json", exclude_none=True) for item in found]
        return audited_answer(request, principal, "DocumentReference", identifier if reading else None, items,
                              total, count, offset, given, patient,
                              [(item.PatientID, item.IssuerOfPatientID, item.StudyInstanceUID, item.SOPInstanceUID)
                               for item in found])

    @router.get("/DiagnosticReport")
    def search_diagnostic_reports(request: Request) -> Response:
        return handled(lambda: report_resources(request, "DiagnosticReport"))

    @router.get("/DiagnosticReport/{identifier}")
    def read_diagnostic_report(request: Request, identifier: str) -> Response:
        return handled(lambda: report_resources(request, "DiagnosticReport", identifier))

    @router.get("/DocumentReference")
    def search_document_references(request: Request) -> Response:
        return handled(lambda: report_resources(request, "DocumentReference"))

    @router.get("/DocumentReference/{identifier}")
    def read_document_reference(request: Request, identifier: str) -> Response:
        return handled(lambda: report_resources(request, "DocumentReference", identifier))

    @router.get("/AuditEvent")
    def search_audit_events(request: Request) -> Response:
        """The audit trail for auditors (``read-audit``), newest first: ``patient``, ``agent``, ``date``."""
        def answer() -> Response:
            accept_json(request)
            if audit_trail is None:
                raise FhirError(404, "this node keeps no audit trail here")
            principal = guarded(request, Permission.READ_AUDIT, AuditAction.AUDIT_READ)
            given, count, offset = plain_parameters(request, frozenset({"patient", "agent", "date"}))
            patient_id: str | None = None
            if "patient" in given:  # Patient/<id>, or a Patient ID as the trail records it
                identity = patient_identity(given["patient"])
                patient_id = identity[0] if identity else given["patient"]
            since = until = None
            if "date" in given:
                try:
                    low_high = date_range([given["date"]], "date")
                except SearchError as exc:
                    raise FhirError(400, str(exc)) from None
                low, _, high = low_high.partition("-") if "-" in low_high else (low_high, "", low_high)
                since = datetime.strptime(low, "%Y%m%d").replace(tzinfo=UTC) if low else None
                until = datetime.strptime(high, "%Y%m%d").replace(tzinfo=UTC) + timedelta(days=1) if high else None
            rows, total = audit_trail.search(patient_id=patient_id, user=given.get("agent"), since=since,
                                             until=until, limit=max(count, 1), offset=offset)
            request.state.audit = AuditEntry.of(principal, AuditAction.AUDIT_READ, "", PatientID=patient_id or "",
                                                detail={"path": request.url.path, "matches": total})
            items = [fhir_audit_event(row, observer) for row in rows[:count]]
            return searchset(request, "AuditEvent", items, total, count, offset, list(given.items()))
        return handled(answer)

    @router.get("/Endpoint/{identifier}")
    def read_endpoint(request: Request, identifier: str) -> Response:
        def answer() -> Response:
            accept_json(request)
            guarded(request, Permission.READ, AuditAction.READ)
            if identifier != ENDPOINT_ID:
                raise FhirError(404, f"Endpoint/{identifier} is not known")
            return resource_answer(endpoint_resource(client_origin(request) + "/dicom-web"))
        return handled(answer)

    return router


def capability_statement(base: str) -> CapabilityStatement:
    def resource(kind: str, params: dict[str, str]) -> dict[str, Any]:
        return {"type": kind, "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [{"name": name, "type": kind_of} for name, kind_of in params.items()]}

    return CapabilityStatement.model_validate({
        "resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "fhirVersion": "4.0.1", "format": ["json"],
        "software": {"name": "Mosaic", "version": __version__},
        "implementation": {"description": "Mosaic enterprise imaging archive", "url": base},
        "rest": [{"mode": "server", "resource": [
            resource("Patient", {"identifier": "token", "name": "string", "family": "string",
                                 "birthdate": "date", "_id": "token", "_lastUpdated": "date"}),
            resource("ImagingStudy", {"patient": "reference", "subject": "reference", "identifier": "token",
                                      "started": "date", "modality": "token", "_id": "token",
                                      "_lastUpdated": "date"}),
            {"type": "Endpoint", "interaction": [{"code": "read"}]},
            resource("ServiceRequest", {"patient": "reference", "subject": "reference", "identifier": "token"}),
            resource("DiagnosticReport", {"patient": "reference", "subject": "reference", "based-on": "reference",
                                          "identifier": "token", "status": "token", "_id": "token"}),
            resource("DocumentReference", {"patient": "reference", "subject": "reference", "identifier": "token",
                                           "_id": "token"}),
            {"type": "AuditEvent", "interaction": [{"code": "search-type"}], "searchParam": [
                {"name": "patient", "type": "reference"}, {"name": "agent", "type": "reference"},
                {"name": "date", "type": "date"}]},
            {"type": "Subscription", "supportedProfile": [
                "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"],
             "interaction": [{"code": code} for code in ("create", "read", "search-type", "delete")],
             "documentation": "rest-hook notifications on the topic "
                              "http://mosaic.example/SubscriptionTopic/study-available (Subscriptions Backport IG)"},
        ]}],
    })

