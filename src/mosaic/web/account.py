"""Sign-in, sign-out, break-glass and the audit trail over HTTP (API and the pages: ``login.html``,
``break_glass.html``, ``audit.html``)."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.audit_export import fhir_bundle, record_json
from mosaic.governance.identity import AuthenticationFailed, SignInRefused
from mosaic.governance.policy import ANONYMOUS, AccessDenied, AccessPolicy, Permission, Principal
from mosaic.http.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, check_csrf_form, principal_of, require
from mosaic.http.bodies import json_object
from mosaic.index.query import MatchKey, Scope
from mosaic.index.query import Query as IndexQuery
from mosaic.web.pages import dicom_date, page, person_name

if TYPE_CHECKING:
    from mosaic.config import SecuritySettings
    from mosaic.governance.audit import AuditTrail
    from mosaic.governance.identity import IdentityService
    from mosaic.services.query import QueryService

BREAK_GLASS_SEARCH_LIMIT = 20
"""At most this many studies are shown by a break-glass search (it looks at every study: keep it narrow)."""
BREAK_GLASS_NAME_MINIMUM = 3
"""Characters besides wildcards a patient name needs in a break-glass search."""
AUDIT_ACTIONS = sorted(value for name, value in vars(AuditAction).items() if name.isupper())


def _safe_next(target: str) -> str:
    """Only a path on this site (no scheme, no host): a sign-in must not redirect anywhere else."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _sentence(message: str) -> str:
    text = f"{message[:1].upper()}{message[1:]}"
    return text if not text or text[-1] in ".!?" else text + "."


BREAK_GLASS_SEARCHES = 20
"""Emergency searches over every facility one user may run an hour."""


@dataclass(frozen=True)
class FoundStudy:
    """What a break-glass search shows of a study: only what picking the right one needs."""

    StudyInstanceUID: str
    name: str
    PatientID: str
    date: str
    StudyDescription: str
    modalities: str
    AccessionNumber: str
    facility: str


def _audit_time(value: str | None, field: str) -> datetime | None:
    """An audit page's time filter: empty is no filter; else an ISO 8601 date or date and time (UTC)."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{field} {text!r} is not a date and time (like 2024-05-31T14:30)") from None


def create_account_router(identity: IdentityService, policy: AccessPolicy, audit: AuditTrail,
                          security: SecuritySettings, *, https: bool, ae_title: str,
                          query: QueryService | None = None) -> APIRouter:
    """Sign-in and sign-out, break-glass (its search over every study is ``query``'s, when given), and the
    audit trail's search and verification."""
    router = APIRouter()

    sso = security.oidc.provider_name if security.oidc.client_id and security.oidc.issuer else ""

    def cookie_options() -> dict[str, Any]:
        secure = security.secure_cookies or https
        return {"httponly": True, "samesite": "lax", "secure": secure, "path": "/"}

    if sso:
        from mosaic.web.oidc_login import create_oidc_router

        router.include_router(create_oidc_router(identity, security, https, _safe_next))

    def login_form(request: Request, next_path: str, csrf: str, message: str = "", status_code: int = 200,
                   headers: dict[str, str] | None = None) -> HTMLResponse:
        """The password form; with single sign-on configured, a link to the provider first."""
        return page(request, ANONYMOUS, "login.html", status_code=status_code, title="Sign in", headers=headers,
                    next_path=next_path, login_csrf=csrf, message=message, sso=sso)

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> Response:
        csrf = secrets.token_urlsafe(24)
        response = login_form(request, _safe_next(next), csrf)
        response.set_cookie(LOGIN_CSRF_COOKIE, csrf, max_age=3600, **cookie_options())
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        next_path = _safe_next(str(form.get("next", "/")))
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(expected, str(form.get("csrf_token", ""))):
            return login_form(request, next_path, "", "The sign-in form expired; reload the page.", 403)
        principal = principal_of(request)
        try:
            user = await run_in_threadpool(partial(identity.check_password, username, password,
                                                   address=principal.address))
        except AuthenticationFailed as exc:
            request.state.audit = AuditEntry(action=AuditAction.LOGIN, outcome="denied", actor=username[:128],
                                             address=principal.address, interface="http",
                                             detail={"reason": str(exc)})
            csrf = secrets.token_urlsafe(24)
            if isinstance(exc, SignInRefused):
                response = login_form(request, next_path, csrf, _sentence(str(exc)), exc.status,
                                      headers={"Retry-After": str(exc.retry_after)})
            else:
                response = login_form(request, next_path, csrf, "Wrong user name or password.", 401)
            response.set_cookie(LOGIN_CSRF_COOKIE, csrf, max_age=3600, **cookie_options())
            return response
        session_id, _csrf = await run_in_threadpool(identity.open_session, user.name)
        request.state.audit = AuditEntry.of(user.at(address=principal.address, interface="http"),
                                            AuditAction.LOGIN, "success")
        redirect = RedirectResponse(next_path, status_code=303)
        redirect.set_cookie(SESSION_COOKIE, session_id, max_age=int(security.session_hours * 3600),
                            **cookie_options())
        redirect.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return redirect

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        form = await request.form()
        check_csrf_form(request, form)
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            await run_in_threadpool(identity.close_session, session_id)
        request.state.audit = AuditEntry.of(principal_of(request), AuditAction.LOGOUT, "success")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @router.get("/api/me")
    def me(request: Request) -> dict[str, Any]:
        """Who the request is made as, what it may do and see (the browser's CSRF token included)."""
        principal = principal_of(request)
        return {"name": principal.name, "kind": principal.kind, "roles": sorted(principal.roles),
                "permissions": sorted(principal.permissions), "facilities": sorted(principal.facilities),
                "departments": sorted(principal.departments), "csrf_token": principal.csrf_token or None}

    # --- break-glass ------------------------------------------------------------------------

    minimum = AccessPolicy.BREAK_GLASS_REASON_MINIMUM

    def break_glass_form(request: Request, principal: Principal, *, status_code: int = 200, message: str = "",
                         study: str = "", reason: str = "", search: dict[str, str] | None = None,
                         studies: list[FoundStudy] | None = None, more: bool = False) -> HTMLResponse:
        return page(request, principal, "break_glass.html", status_code=status_code, title="Emergency access",
                    hours=f"{security.break_glass_hours:g}", minimum=minimum, message=message, study=study,
                    reason=reason, search=search or {"name": "", "patient_id": "", "accession": ""},
                    searched=studies is not None, studies=studies or [], more=more,
                    limit=BREAK_GLASS_SEARCH_LIMIT, name_minimum=BREAK_GLASS_NAME_MINIMUM)

    def search_all_studies(request: Request, principal: Principal, terms: dict[str, str]) -> tuple[
            list[FoundStudy], bool]:
        """Studies of every facility matching the terms (break-glass is for studies outside one's scope): at most
        BREAK_GLASS_SEARCH_LIMIT, showing only what picking one needs; audited as a break-glass search."""
        assert query is not None
        keys = [MatchKey(keyword, value, vr) for keyword, value, vr in (
            ("PatientName", terms["name"], "PN"), ("PatientID", terms["patient_id"], "LO"),
            ("AccessionNumber", terms["accession"], "SH")) if value]
        matches = query.find(IndexQuery(level="STUDY", keys=keys, limit=BREAK_GLASS_SEARCH_LIMIT + 1),
                             door="http", scope=Scope.everything())
        found = [FoundStudy(study.StudyInstanceUID, person_name(patient.PatientName), patient.PatientID,
                            dicom_date(study.StudyDate), study.StudyDescription,
                            ", ".join(value for value in study.ModalitiesInStudy.split("\\") if value),
                            study.AccessionNumber, study.facility)
                 for study, patient in ((match.rows["STUDY"], match.rows["PATIENT"]) for match in matches)]
        shown = found[:BREAK_GLASS_SEARCH_LIMIT]
        request.state.audit = AuditEntry.of(principal, AuditAction.QUERY, "", break_glass=True, detail={
            "path": "/break-glass", "break_glass_search": {key: value for key, value in terms.items() if value},
            "matches": len(shown), "more": len(found) > len(shown),
            "studies": [study.StudyInstanceUID for study in shown]})
        return shown, len(found) > len(shown)

    searches: dict[str, list[float]] = {}
    searches_lock = threading.Lock()

    def search_refusal(principal: Principal) -> str:
        """A search over every facility's patients is for a person in an emergency, a few times: not for an
        integration's token, and not a way to list the directory (BREAK_GLASS_SEARCHES an hour per user)."""
        if principal.kind not in ("user", "oidc"):
            return "Emergency access is for people signed in, not for API tokens."
        now = time.monotonic()
        with searches_lock:
            recent = [moment for moment in searches.get(principal.name, []) if now - moment < 3600]
            if len(recent) >= BREAK_GLASS_SEARCHES:
                searches[principal.name] = recent
                return (f"At most {BREAK_GLASS_SEARCHES} emergency searches an hour: give the study's UID, or "
                        "ask a colleague with access to the patient's site.")
            searches[principal.name] = [*recent, now]
        return ""

    def search_problem(terms: dict[str, str]) -> str:
        if not any(terms.values()):
            return ""
        letters = len("".join(character for character in terms["name"] if character not in "*?^= "))
        if terms["name"] and letters < BREAK_GLASS_NAME_MINIMUM:
            return (f"A patient name needs at least {BREAK_GLASS_NAME_MINIMUM} letters besides wildcards "
                    f"(this one has {letters}).")
        if any(character in terms[field] for field in ("patient_id", "accession") for character in "*?\\"):
            return "Patient ID and accession number match exactly: leave out wildcards."
        if any(len(value) > 64 for value in terms.values()):
            return "Search terms are at most 64 characters."
        return ""

    @router.get("/break-glass", response_class=HTMLResponse)
    def break_glass_page(request: Request, study: str = "", name: str = "", patient_id: str = "",
                         accession: str = "") -> HTMLResponse:
        """The form a clinician uses to open a study outside their scope (emergency access): find it by patient
        name, patient ID or accession number among every study, or give its Study Instance UID; then a reason."""
        principal = require(request, Permission.READ, action=AuditAction.BREAK_GLASS)
        terms = {"name": name.strip(), "patient_id": patient_id.strip(), "accession": accession.strip()}
        problem = search_problem(terms)
        if not problem and any(terms.values()):
            problem = search_refusal(principal)
        if problem:
            return break_glass_form(request, principal, status_code=400, message=problem, study=study,
                                    search=terms)
        if not any(terms.values()) or query is None:
            return break_glass_form(request, principal, study=study, search=terms)
        studies, more = search_all_studies(request, principal, terms)
        return break_glass_form(request, principal, study=study, search=terms, studies=studies, more=more)

    async def _break_glass_fields(request: Request) -> tuple[str, str]:
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await json_object(request)
            return str(body.get("StudyInstanceUID", "")), str(body.get("reason", ""))
        form = await request.form()
        check_csrf_form(request, form)
        return str(form.get("StudyInstanceUID", "")), str(form.get("reason", ""))

    @router.post("/api/break-glass")
    async def break_glass(request: Request) -> Response:
        """Open an out-of-scope study, giving a reason: allowed for a while, flagged and audited. A form
        (the /break-glass page) is sent on to the viewer, or shown again with what was wrong; JSON callers get
        the grant's end."""
        principal = principal_of(request)
        is_form = not request.headers.get("content-type", "").startswith("application/json")
        study, reason = "", ""
        try:
            study, reason = await _break_glass_fields(request)
            if not study.strip():
                raise HTTPException(400, "StudyInstanceUID is required")
            given = len("".join(reason.split()))
            if given < minimum:
                raise HTTPException(400, f"break-glass needs a reason of at least {minimum}"
                                         f" characters besides spaces (this one has {given})")
            entry = AuditEntry.of(principal, AuditAction.BREAK_GLASS, "", StudyInstanceUID=study.strip(),
                                  break_glass=True, detail={"reason": reason})
            request.state.audit = entry
            try:
                expires = await run_in_threadpool(policy.break_glass, principal, study.strip(), reason)
            except AccessDenied as exc:
                raise HTTPException(403, str(exc)) from None
        except HTTPException as exc:
            if not is_form or not principal.authenticated:
                raise
            return break_glass_form(request, principal, status_code=exc.status_code, message=_sentence(exc.detail),
                                    study=study.strip(), reason=reason)
        access = await run_in_threadpool(policy.study_access, principal, study.strip())
        entry.PatientID, entry.IssuerOfPatientID = access.PatientID, access.IssuerOfPatientID
        if is_form:
            return RedirectResponse(f"/viewer/viewer?StudyInstanceUIDs={quote(study.strip())}", status_code=303)
        return JSONResponse({"StudyInstanceUID": study.strip(), "until": expires.isoformat()})

    # --- the audit trail --------------------------------------------------------------------

    def _search(request: Request, patient: str | None, user: str | None, study: str | None, action: str | None,
                since: datetime | None, until: datetime | None, limit: int, offset: int) -> tuple[list[Any], int]:
        principal = require(request, Permission.READ_AUDIT, action=AuditAction.AUDIT_READ)
        rows, total = audit.search(patient_id=patient, user=user, study=study, action=action, since=since,
                                   until=until, limit=limit, offset=offset)
        request.state.audit = AuditEntry.of(principal, AuditAction.AUDIT_READ, "", PatientID=patient or "",
                                            StudyInstanceUID=study or "",
                                            detail={"user": user, "action": action, "matches": total})
        return rows, total

    @router.get("/api/audit")
    def audit_search(request: Request, patient: str | None = None, user: str | None = None,
                     study: str | None = None, action: str | None = None, since: datetime | None = None,
                     until: datetime | None = None, limit: int = Query(100, ge=1, le=1000),
                     offset: int = Query(0, ge=0, le=2**31 - 1), format: str = Query("json", pattern="^(json|fhir)$"),
                     ) -> Response:
        """Search the audit trail (newest first); ``format=fhir`` answers a FHIR R4 Bundle of AuditEvent."""
        rows, total = _search(request, patient, user, study, action, since, until, limit, offset)
        if format == "fhir":
            return JSONResponse(fhir_bundle(rows, total, ae_title),
                                media_type="application/fhir+json")
        return JSONResponse({"total": total, "records": [record_json(row) for row in rows]},
                            headers={"X-Total-Count": str(total)})

    @router.get("/api/audit/verify")
    def audit_verify(request: Request) -> dict[str, Any]:
        """Walk the hash chain: is every record as written, in order, none removed?"""
        principal = require(request, Permission.READ_AUDIT, action=AuditAction.AUDIT_READ)
        audit.flush()
        report = audit.verify()
        request.state.audit = AuditEntry.of(principal, AuditAction.AUDIT_READ, "", detail={"verify": report.intact})
        return {"intact": report.intact, "checked": report.checked, "first_bad_seq": report.first_bad_seq,
                "reason": report.reason, "checkpoints": report.checkpoints, "anchored_seq": report.anchored_seq,
                "bad_checkpoint_line": report.bad_checkpoint_line}

    page_size = 100

    @router.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, patient: str = "", user: str = "", study: str = "", action: str = "",
                   since: str = "", until: str = "", offset: int = Query(0, ge=0, le=2**31 - 1)) -> HTMLResponse:
        """The auditors' page: search by patient, user, study, action and time range (a field left empty is no
        filter; a time that is not one shows the form again, saying so)."""
        principal = require(request, Permission.READ_AUDIT, action=AuditAction.AUDIT_READ)
        filters = {"patient": patient.strip(), "user": user.strip(), "study": study.strip(),
                   "action": action.strip(), "since": since.strip(), "until": until.strip()}
        try:
            start, end = _audit_time(since, "From"), _audit_time(until, "Until")
        except ValueError as exc:
            return page(request, principal, "audit.html", status_code=400, title="Audit trail", filters=filters,
                        actions=AUDIT_ACTIONS, message=_sentence(str(exc)), rows=[], total=0, offset=offset,
                        previous=None, following=None)
        rows, total = _search(request, filters["patient"] or None, filters["user"] or None,
                              filters["study"] or None, filters["action"] or None, start, end, page_size, offset)

        def at(position: int) -> str:
            given = {key: value for key, value in filters.items() if value}
            return "/audit?" + urlencode({**given, "offset": position}) if position or given else "/audit"

        return page(request, principal, "audit.html", title="Audit trail", filters=filters, actions=AUDIT_ACTIONS,
                    message="", rows=rows, total=total, offset=offset,
                    previous=at(max(0, offset - page_size)) if offset else None,
                    following=at(offset + page_size) if offset + page_size < total else None)

    return router
