"""EHR launches: IHE Invoke Image Display (IID, RAD-106) at ``/IHEInvokeImageDisplay`` and a SMART-style EHR
launch at ``/smart/launch``, each a redirect into the portal or the viewer in the context the EHR names.

* ``requestType=STUDY&studyUID=<uid>[,<uid>…]`` (or ``accessionNumber=<a>[,<a>…]``, optionally with
  ``patientID``): one study → its portal page; several (or ``viewerType=IHE_BIR``) → the viewer with all of them.
* ``requestType=PATIENT&patientID=<id>^^^<issuer>`` (the issuer a namespace, ``&<oid>&ISO`` or both) → the
  patient's timeline, ``lowerDateTime`` / ``upperDateTime`` (ISO 8601; the timeline filters by study date, so
  the time of day is not used) as its ``since`` / ``until``; ``mostRecentResults=N`` moves ``since`` to the date of
  the N-th newest study (studies of that same day all shown); ``viewerType=IHE_BIR`` → the viewer with those
  studies. Other viewer types, ``diagnosticQuality`` and ``keyImagesOnly`` are accepted and ignored (the
  portal's default display); parameters IID does not define are ignored.
* ``/smart/launch?iss=<Mosaic's own /fhir>&launch=ImagingStudy/<uid>`` or ``launch=Patient/<id>`` (the ids of
  Mosaic's FHIR server): the same pages. Mosaic has no SMART authorization server, so this is a launch of its
  own portal, not of a SMART app against a foreign EHR: another ``iss`` is refused, and
  ``/.well-known/smart-configuration`` is not published.

Who launches: a signed-in browser (a session from ``/login`` or single sign-on; one without is sent to
``/login?next=<the whole launch URL>`` and comes back), a bearer, or a signed launch link from an EHR
(:mod:`mosaic.services.launch`), which opens a browser session for its user like ``/login`` does and
redirects without the link's token parameters. Every lookup is within the user's scope: an unknown and an
out-of-scope study or patient get the same 404 page; a malformed request a 400 page naming the parameter; a
refused link a 403 page, audited as a denied sign-in with its reason. Each launch is audited: who, what was
asked and opened, from which address, EHR and referring page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import Permission, Principal
from mosaic.http.auth import SESSION_COOKIE, principal_of
from mosaic.http.origin import client_origin
from mosaic.services.launch import TOKEN_PARAMETERS, LaunchRefused
from mosaic.web.pages import page

if TYPE_CHECKING:
    from mosaic.config import SecuritySettings
    from mosaic.governance.audit import AuditTrail
    from mosaic.governance.identity import IdentityService
    from mosaic.governance.policy import AccessPolicy
    from mosaic.services.launch import FoundPatient, FoundStudy, LaunchService, LaunchTokens

IID_PATH = "/IHEInvokeImageDisplay"
SMART_PATH = "/smart/launch"
_UID = re.compile(r"^[0-9.]{1,64}$")
_DAY = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})(?:[T ].*)?$")
_MAX_ITEMS = 100
NOT_FOUND = ("Nothing to show", "What this link names is not in the archive, or is not something you may see.")
"""The one answer to an unknown and to an out-of-scope study or patient (same status, same page)."""


class BadLaunch(Exception):
    """A malformed launch request; ``parameter`` is the one at fault."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class IidRequest:
    kind: str
    """STUDY or PATIENT."""
    study_uids: list[str] = field(default_factory=list)
    accessions: list[str] = field(default_factory=list)
    patient_id: str = ""
    issuers: list[str] = field(default_factory=list)
    since: str = ""
    """YYYY-MM-DD (lowerDateTime's date)."""
    until: str = ""
    most_recent: int | None = None
    viewer: bool = False
    """viewerType=IHE_BIR: the image viewer rather than the portal's page."""


def _one(params: Any, name: str) -> str:
    values = params.getlist(name)
    if len(values) > 1:
        raise BadLaunch(name, f"{name} is given {len(values)} times; give it once")
    return str(values[0]).strip() if values else ""


def _list(name: str, value: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    if not value or any(not item for item in items):
        raise BadLaunch(name, f"{name} must be a comma-separated list without empty items")
    if len(items) > _MAX_ITEMS:
        raise BadLaunch(name, f"{name} names {len(items)} items; at most {_MAX_ITEMS}")
    return list(dict.fromkeys(items))


def parse_cx(value: str) -> tuple[str, list[str]]:
    """An IID ``patientID`` (HL7 v2 CX: ``id^^^namespace&universal-id&type``) as (PatientID, the issuers to try:
    the namespace, then the universal ID; [""] when there is no assigning authority)."""
    components = value.split("^")
    patient_id = components[0].strip()
    if not patient_id or len(patient_id) > 64:
        raise BadLaunch("patientID", "patientID must be <id>^^^<assigning authority> (the ID at most 64 characters)")
    authority = components[3] if len(components) > 3 else ""
    parts = [part.strip() for part in [*authority.split("&"), "", ""][:3]]
    namespace, universal, kind = parts
    if universal and kind and kind.upper() not in ("ISO", "UUID", "DNS", "URI", "URL", "L", "M", "N"):
        raise BadLaunch("patientID", f"{kind!r} is not a universal ID type (ISO, UUID, DNS, URI…)")
    issuers = [issuer for issuer in dict.fromkeys((namespace, universal)) if issuer]
    if any(len(issuer) > 64 for issuer in issuers):
        raise BadLaunch("patientID", "the assigning authority is longer than 64 characters")
    return patient_id, issuers or [""]


def parse_day(name: str, value: str) -> str:
    """An ISO 8601 date or date-time as the date it names (YYYY-MM-DD)."""
    match = _DAY.match(value)
    try:
        if match is None:
            raise ValueError(value)
        day = date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        if len(value) > 10 and "-" in value[:8]:
            datetime.fromisoformat(value.replace("Z", "+00:00"))  # the time part must be one too
    except ValueError:
        raise BadLaunch(name, f"{name} {value[:40]!r} is not an ISO 8601 date or date-time "
                              "(e.g. 2024-03-01 or 2024-03-01T08:00:00Z)") from None
    return day.isoformat()


def parse_iid(params: Any) -> IidRequest:
    """The IID request of a query, or :class:`BadLaunch` naming the parameter at fault."""
    kind = _one(params, "requestType")
    if not kind:
        raise BadLaunch("requestType", "requestType is required: STUDY or PATIENT")
    if kind.upper() not in ("STUDY", "PATIENT"):
        raise BadLaunch("requestType", f"requestType {kind[:20]!r} is not STUDY or PATIENT")
    kind = kind.upper()
    viewer = _one(params, "viewerType").upper() == "IHE_BIR"
    cx = _one(params, "patientID")
    patient_id, issuers = parse_cx(cx) if cx else ("", [])
    since = parse_day("lowerDateTime", value) if (value := _one(params, "lowerDateTime")) else ""
    until = parse_day("upperDateTime", value) if (value := _one(params, "upperDateTime")) else ""
    if since and until and since > until:
        raise BadLaunch("lowerDateTime", "lowerDateTime is after upperDateTime")
    most_recent = None
    if value := _one(params, "mostRecentResults"):
        if not value.isdigit() or not 1 <= int(value) <= 1000:
            raise BadLaunch("mostRecentResults", "mostRecentResults must be a whole number from 1 to 1000")
        most_recent = int(value)
    if kind == "STUDY":
        uids, accessions = _one(params, "studyUID"), _one(params, "accessionNumber")
        if bool(uids) == bool(accessions):
            raise BadLaunch("studyUID", "a STUDY request names its studies by studyUID or by accessionNumber "
                                        "(one of the two)")
        study_uids = _list("studyUID", uids) if uids else []
        if bad := [uid for uid in study_uids if not _UID.match(uid)]:
            raise BadLaunch("studyUID", f"{bad[0][:70]!r} is not a Study Instance UID")
        numbers = _list("accessionNumber", accessions) if accessions else []
        if any(len(number) > 16 for number in numbers):
            raise BadLaunch("accessionNumber", "an accession number has at most 16 characters")
        return IidRequest("STUDY", study_uids, numbers, patient_id, issuers, viewer=viewer)
    if not patient_id:
        raise BadLaunch("patientID", "a PATIENT request needs patientID=<id>^^^<assigning authority>")
    return IidRequest("PATIENT", patient_id=patient_id, issuers=issuers, since=since, until=until,
                      most_recent=most_recent, viewer=viewer)


@dataclass
class Opened:
    """Where a launch goes, and what the audit record says it opened."""

    location: str
    studies: list[str]
    patient: tuple[str, str]


def create_launch_router(launches: LaunchService, tokens: LaunchTokens, policy: AccessPolicy,
                         identity: IdentityService, audit: AuditTrail, security: SecuritySettings, *, https: bool,
                         viewer_prefix: str = "/viewer") -> APIRouter:
    """The launch doors, handed the lookups, the signed-link checker, the policy (the user's scope), the identity
    service (the session a signed link opens) and the audit trail (that sign-in's record)."""
    router = APIRouter()
    secure = security.secure_cookies or https

    def message(request: Request, principal: Principal, status: int, heading: str, text: str, *,
                sign_in: str = "", headers: dict[str, str] | None = None) -> Response:
        response = page(request, principal, "launch_message.html", status_code=status, title=heading,
                        heading=heading, message=text, sign_in=sign_in)
        response.headers.update(headers or {})
        return response

    def viewer_of(uids: list[str]) -> str:
        return f"{viewer_prefix}/viewer?StudyInstanceUIDs={quote(','.join(uids), safe=',')}"

    def study_target(found: list[FoundStudy], viewer: bool) -> Opened:
        uids = [study.StudyInstanceUID for study in found]
        location = viewer_of(uids) if viewer or len(uids) > 1 else f"/portal/studies/{uids[0]}"
        return Opened(location, uids, (found[0].PatientID, found[0].IssuerOfPatientID))

    def patient_target(patient: FoundPatient, principal: Principal, since: str, until: str,
                       most_recent: int | None, viewer: bool) -> Opened:
        scope = policy.scope(principal)
        recent = launches.recent_studies(patient, scope=scope, since=since.replace("-", ""),
                                         until=until.replace("-", ""), limit=most_recent or 100)
        uids = [study.StudyInstanceUID for study in recent]
        identity_of = (patient.PatientID, patient.IssuerOfPatientID)
        if viewer and uids:
            return Opened(viewer_of(uids), uids, identity_of)
        if most_recent is not None and len(recent) == most_recent and recent[-1].StudyDate:
            nth = recent[-1].StudyDate
            since = max(since, f"{nth[:4]}-{nth[4:6]}-{nth[6:8]}")
        query = urlencode({key: value for key, value in (("since", since), ("until", until)) if value})
        return Opened(f"/portal/patients/{patient.pk}" + (f"?{query}" if query else ""), uids, identity_of)

    def launched(request: Request, door: str, permission: Permission,
                 resolve: Callable[[Principal], Opened | None], asked: dict[str, str]) -> Response:
        """Authenticate the launch (session, bearer or signed link), then open what ``resolve`` finds."""
        principal = principal_of(request)
        items = [(name, value) for name, value in request.query_params.multi_items()]
        cookie = ""
        via = "session" if principal.kind in ("user", "oidc") else principal.kind
        if any(name == "signature" for name, _value in items):
            try:
                launch, user = tokens.verify(items, address=principal.address)
            except LaunchRefused as exc:
                request.state.audit = AuditEntry(
                    action=AuditAction.LOGIN, outcome="denied", actor=exc.user or "(signed launch)",
                    actor_kind="user", address=principal.address, interface="http",
                    detail={"via": "signed launch", "ehr": exc.ehr, "reason": str(exc), "path": request.url.path})
                retry = {"Retry-After": str(exc.retry_after)} if exc.status == 429 else None
                return message(request, principal_of(request), exc.status, "Launch refused",
                               f"The launch link was refused: {exc}.", headers=retry)
            cookie, _csrf = identity.open_session(user.name)
            principal = user.at(address=principal.address, interface="http")
            via = f"signed launch from {launch.ehr}"
            audit.record(AuditEntry.of(principal, AuditAction.LOGIN, "success", detail={
                "via": "signed launch", "ehr": launch.ehr, "path": request.url.path}))
        elif not principal.authenticated:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)
        detail: dict[str, Any] = {"path": request.url.path, "launch": door, "via": via, "request": asked}
        if referer := request.headers.get("referer", ""):
            detail["referer"] = referer[:256]
        action = AuditAction.READ if permission is Permission.READ else AuditAction.QUERY
        if permission not in principal.permissions:
            request.state.audit = AuditEntry.of(principal, action, "denied",
                                                detail={**detail, "missing": permission.value})
            answer = message(request, principal, 403, "Not allowed",
                             f"Your account may not {permission.value}: ask an administrator.")
        else:
            opened = resolve(principal)
            entry = AuditEntry.of(principal, action, "", detail=detail)
            request.state.audit = entry
            if opened is None:
                answer = message(request, principal, 404, *NOT_FOUND)
            else:
                entry.PatientID, entry.IssuerOfPatientID = opened.patient
                entry.StudyInstanceUID = opened.studies[0] if len(opened.studies) == 1 else ""
                detail.update(target=opened.location, studies=opened.studies[:100])
                answer = RedirectResponse(opened.location, status_code=303)
        if cookie:
            answer.set_cookie(SESSION_COOKIE, cookie, max_age=int(security.session_hours * 3600), httponly=True,
                              samesite="lax", secure=secure, path="/")
        return answer

    def bad(request: Request, exc: BadLaunch) -> Response:
        return message(request, principal_of(request), 400, "Cannot open this link",
                       f"The launch request is malformed ({exc.parameter}): {exc}.")

    def asked_of(request: Request) -> dict[str, str]:
        return {name: value[:256] for name, value in request.query_params.multi_items()
                if name not in TOKEN_PARAMETERS}

    @router.get(IID_PATH)
    def invoke_image_display(request: Request) -> Response:
        """IHE Invoke Image Display (RAD-106): a study or a patient's studies, opened for the signed-in user."""
        try:
            wanted = parse_iid(request.query_params)
        except BadLaunch as exc:
            return bad(request, exc)

        def resolve(principal: Principal) -> Opened | None:
            scope = policy.scope(principal)
            if wanted.kind == "STUDY":
                patient = None
                if wanted.accessions and wanted.patient_id:
                    patient = launches.patient(wanted.patient_id, wanted.issuers, scope=scope)
                    if patient is None:
                        return None
                found = (launches.studies(wanted.study_uids, scope=scope) if wanted.study_uids else
                         launches.studies_by_accession(wanted.accessions, scope=scope, patient=patient))
                return study_target(found, wanted.viewer) if found else None
            patient = launches.patient(wanted.patient_id, wanted.issuers, scope=scope)
            if patient is None:
                return None
            return patient_target(patient, principal, wanted.since, wanted.until, wanted.most_recent, wanted.viewer)

        permission = Permission.READ if wanted.kind == "STUDY" or wanted.viewer else Permission.QUERY
        return launched(request, "iid", permission, resolve, asked_of(request))

    @router.get(SMART_PATH)
    def smart_launch(request: Request) -> Response:
        """A SMART-style EHR launch of Mosaic's own portal: ``iss`` must be Mosaic's FHIR base, ``launch`` the
        reference of one of its ImagingStudy or Patient resources."""
        try:
            iss, context = _one(request.query_params, "iss"), _one(request.query_params, "launch")
            if not iss:
                raise BadLaunch("iss", "iss is required: the FHIR server the launch is from")
            own = client_origin(request) + "/fhir"
            if iss.rstrip("/") != own:
                raise BadLaunch("iss", f"iss must be Mosaic's own FHIR server ({own}): launches from another EHR's "
                                       "FHIR server need its SMART authorization server, which Mosaic does not use")
            kind, _, identifier = context.partition("/")
            if kind == "ImagingStudy" and _UID.match(identifier):
                permission = Permission.READ
            elif kind == "Patient" and identifier.isdigit() and len(identifier) < 18:
                permission = Permission.QUERY
            else:
                raise BadLaunch("launch", "launch must name ImagingStudy/<Study Instance UID> or Patient/<id> "
                                          "of this FHIR server")
        except BadLaunch as exc:
            return bad(request, exc)

        def resolve(principal: Principal) -> Opened | None:
            scope = policy.scope(principal)
            if kind == "ImagingStudy":
                found = launches.studies([identifier], scope=scope)
                return study_target(found, False) if found else None
            patient = launches.patient_by_pk(int(identifier), scope=scope)
            return patient_target(patient, principal, "", "", None, False) if patient is not None else None

        return launched(request, "smart", permission, resolve, asked_of(request))

    return router
