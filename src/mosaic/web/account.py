"""Sign-in, sign-out, break-glass and the audit trail over HTTP (API and the auditors' page)."""

from __future__ import annotations

import secrets
from datetime import datetime
from functools import partial
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.audit_export import fhir_bundle, record_json
from mosaic.governance.identity import AuthenticationFailed, SignInRefused
from mosaic.governance.policy import AccessDenied, AccessPolicy, Permission
from mosaic.http.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, check_csrf_form, principal_of, require
from mosaic.http.bodies import json_object
from mosaic.web.landing import STYLE

if TYPE_CHECKING:
    from mosaic.config import SecuritySettings
    from mosaic.governance.audit import AuditTrail
    from mosaic.governance.identity import IdentityService
    from mosaic.governance.policy import AccessPolicy


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · Mosaic</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f"<body>{body}</body></html>")


def _safe_next(target: str) -> str:
    """Only a path on this site (no scheme, no host): a sign-in must not redirect anywhere else."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _login_form(next_path: str, csrf: str, message: str = "", sso: str = "") -> str:
    """The password form; with single sign-on configured (``sso``: the provider's name), a link to it first."""
    error = f'<p class="error">{escape(message)}</p>' if message else ""
    single = (f'<p><a class="button" href="/login/oidc?next={quote(next_path)}">Sign in with {escape(sso)}</a></p>'
              '<p>or with a Mosaic account:</p>') if sso else ""
    return _page("Sign in", f"""<h1>Mosaic</h1><form method="post" action="/login" class="card">
<h2>Sign in</h2>{error}{single}
<label>User name <input name="username" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<input type="hidden" name="csrf_token" value="{escape(csrf)}"><input type="hidden" name="next"
value="{escape(next_path)}"><button type="submit">Sign in</button></form>""")


def create_account_router(identity: IdentityService, policy: AccessPolicy, audit: AuditTrail,
                          security: SecuritySettings, *, https: bool, ae_title: str) -> APIRouter:
    """Sign-in and sign-out, break-glass, and the audit trail's search and verification."""
    router = APIRouter()

    sso = security.oidc.provider_name if security.oidc.client_id and security.oidc.issuer else ""

    def cookie_options() -> dict[str, Any]:
        secure = security.secure_cookies or https
        return {"httponly": True, "samesite": "lax", "secure": secure, "path": "/"}

    if sso:
        from mosaic.web.oidc_login import create_oidc_router

        router.include_router(create_oidc_router(identity, security, https, _safe_next, _page))

    @router.get("/login", response_class=HTMLResponse)
    def login_page(next: str = "/") -> Response:
        csrf = secrets.token_urlsafe(24)
        response = HTMLResponse(_login_form(_safe_next(next), csrf, sso=sso))
        response.set_cookie(LOGIN_CSRF_COOKIE, csrf, max_age=3600, **cookie_options())
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        next_path = _safe_next(str(form.get("next", "/")))
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(expected, str(form.get("csrf_token", ""))):
            return HTMLResponse(_login_form(next_path, "", "The sign-in form expired; reload the page."), 403)
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
                message = str(exc)
                response = HTMLResponse(_login_form(next_path, csrf, f"{message[:1].upper()}{message[1:]}.", sso),
                                        exc.status, headers={"Retry-After": str(exc.retry_after)})
            else:
                response = HTMLResponse(_login_form(next_path, csrf, "Wrong user name or password.", sso), 401)
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

    async def _break_glass_fields(request: Request) -> tuple[str, str]:
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await json_object(request)
            return str(body.get("StudyInstanceUID", "")), str(body.get("reason", ""))
        form = await request.form()
        check_csrf_form(request, form)
        return str(form.get("StudyInstanceUID", "")), str(form.get("reason", ""))

    @router.get("/break-glass", response_class=HTMLResponse)
    def break_glass_page(request: Request, study: str = "") -> HTMLResponse:
        """The form a clinician uses to open a study outside their scope (emergency access)."""
        principal = principal_of(request)
        minimum = AccessPolicy.BREAK_GLASS_REASON_MINIMUM
        return HTMLResponse(_page("Emergency access", f"""<h1>Emergency access (break-glass)</h1>
<p class="muted">Opening a study outside your facilities or departments is allowed for
{security.break_glass_hours:g} hours, recorded with your reason and reviewed by the privacy office.</p>
<form method="post" action="/api/break-glass" class="card">
<label>Study Instance UID <input name="StudyInstanceUID" value="{escape(study)}" required></label>
<label>Reason <input name="reason" required minlength="{minimum}" pattern="\\s*(\\S\\s*){{{minimum},}}"
title="At least {minimum} characters besides spaces"></label>
<input type="hidden" name="csrf_token" value="{escape(principal.csrf_token)}">
<button type="submit">Open the study</button></form>"""))

    @router.post("/api/break-glass")
    async def break_glass(request: Request) -> Response:
        """Open an out-of-scope study, giving a reason: allowed for a while, flagged and audited. A form
        (the /break-glass page) is sent on to the viewer; JSON callers get the grant's end."""
        principal = principal_of(request)
        is_form = not request.headers.get("content-type", "").startswith("application/json")
        study, reason = await _break_glass_fields(request)
        if not study.strip():
            raise HTTPException(400, "StudyInstanceUID is required")
        given = len("".join(reason.split()))
        if given < AccessPolicy.BREAK_GLASS_REASON_MINIMUM:
            raise HTTPException(400, f"break-glass needs a reason of at least {AccessPolicy.BREAK_GLASS_REASON_MINIMUM}"
                                     f" characters besides spaces (this one has {given})")
        entry = AuditEntry.of(principal, AuditAction.BREAK_GLASS, "", StudyInstanceUID=study.strip(),
                              break_glass=True, detail={"reason": reason})
        request.state.audit = entry
        try:
            expires = await run_in_threadpool(policy.break_glass, principal, study.strip(), reason)
        except AccessDenied as exc:
            raise HTTPException(403, str(exc)) from None
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

    @router.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, patient: str | None = None, user: str | None = None,
                   study: str | None = None, action: str | None = None, since: datetime | None = None,
                   until: datetime | None = None, offset: int = Query(0, ge=0, le=2**31 - 1)) -> HTMLResponse:
        """The auditors' page: search by patient, user, study, action and time range."""
        rows, total = _search(request, patient or None, user or None, study or None, action or None, since, until,
                              100, offset)

        def field(name: str, value: Any, kind: str = "text") -> str:
            return (f'<label>{escape(name)} <input name="{escape(name)}" type="{kind}" '
                    f'value="{escape(str(value or ""))}"></label>')

        lines = "".join(
            f"<tr class=\"{'flag' if row.break_glass else ''}\"><td>{row.seq}</td>"
            f"<td>{escape(row.recorded_at.isoformat(sep=' ', timespec='seconds'))}</td>"
            f"<td>{escape(row.actor)}<br><span class=muted>{escape(row.actor_kind)} {escape(row.roles)}</span></td>"
            f"<td>{escape(row.address)}</td><td>{escape(row.interface)}</td><td>{escape(row.action)}"
            f"{' <b>break-glass</b>' if row.break_glass else ''}</td><td>{escape(row.outcome)}</td>"
            f"<td>{escape(row.PatientID)}</td><td class=uid>{escape(row.StudyInstanceUID)}</td></tr>"
            for row in rows)
        form = (f'<form method="get" action="/audit" class="filters">{field("patient", patient)}{field("user", user)}'
                f'{field("study", study)}{field("action", action)}{field("since", since, "datetime-local")}'
                f'{field("until", until, "datetime-local")}<button type="submit">Search</button></form>')
        return HTMLResponse(_page("Audit trail", f"""<h1>Audit trail</h1>{form}
<p class="muted">{total} matching records, newest first. <a href="/api/audit/verify">Verify the chain</a></p>
<table><thead><tr><th>#</th><th>When (UTC)</th><th>Who</th><th>From</th><th>Door</th><th>Action</th>
<th>Outcome</th><th>Patient</th><th>Study</th></tr></thead><tbody>{lines}</tbody></table>"""))

    return router
