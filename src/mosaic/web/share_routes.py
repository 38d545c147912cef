"""Share links over HTTP: the creator's side (``/shares``: their links and a form; ``/api/shares``: create, list,
revoke) and the recipient's (``/share/<token>``: the PIN form, the shared studies read-only, their content, the
IHE PDI zip).

The recipient has no account. The token in the path names the link; opening it (with the PIN, for a link that has
one) starts a share session in the ``mosaic_share`` cookie, which every later page, content read and download of
the link must carry, and with which the viewer reads the studies through DICOMweb (the middleware makes it the
link's principal, whose scope is exactly the link's studies). Every use and every refusal is audited with the
link's id and creator; the token itself never is."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import ANONYMOUS, Permission, Principal
from mosaic.http.auth import SHARE_COOKIE, check_csrf_form, require
from mosaic.http.bodies import json_object
from mosaic.http.origin import client_origin
from mosaic.services.shares import RECIPIENT_KINDS, ShareRefused
from mosaic.web.content_answer import ranged
from mosaic.web.pages import page

if TYPE_CHECKING:
    from mosaic.services.content import ContentService
    from mosaic.services.portal import PortalService, StudyView
    from mosaic.services.shares import CreatedShare, ShareService, ShareView

_UID = re.compile(r"^[0-9.]{1,64}$")


def create_share_router(shares: ShareService, portal: PortalService, content: ContentService, *,
                        https: bool = False, viewer_prefix: str = "/viewer") -> APIRouter:
    router = APIRouter()

    # --- the creator's side -----------------------------------------------------------------

    @router.get("/shares")
    def list_page(request: Request) -> Response:
        """The caller's links (an administrator's: everyone's) and the form to share a study."""
        principal = require(request, Permission.SHARE)
        return _list_page(request, principal, shares.links(principal))

    @router.post("/shares")
    async def create_from_form(request: Request) -> Response:
        principal = require(request, Permission.SHARE, action=AuditAction.EXPORT)
        form = await request.form()
        check_csrf_form(request, form)
        studies = [uid for uid in re.split(r"[\s,\\]+", str(form.get("studies", ""))) if uid]
        days_text = str(form.get("days", "") or "").strip()
        try:
            created = await run_in_threadpool(
                shares.create, principal, studies, recipient_kind=str(form.get("recipient", "")), note=str(
                    form.get("note", "")), days=int(days_text) if days_text.isdigit() else None,
                pin=form.get("pin") == "1", deidentified=form.get("deidentified") == "1")
        except ShareRefused as exc:
            _audit_refused_creation(request, principal, studies, exc)
            listed = await run_in_threadpool(shares.links, principal)
            return _list_page(request, principal, listed, error=str(exc), status_code=exc.status)
        _audit_created(request, principal, created)
        return page(request, principal, "share_created.html", title="Link created", status_code=201,
                    share=created.share, url=_url(request, created.token), pin=created.pin,
                    recipients=RECIPIENT_KINDS)

    @router.post("/shares/{share_id}/revoke")
    async def revoke_from_form(request: Request, share_id: str) -> Response:
        principal = require(request, Permission.SHARE, action=AuditAction.POLICY_CHANGE)
        form = await request.form()
        check_csrf_form(request, form)
        await run_in_threadpool(_revoke, request, principal, _number(share_id))
        return RedirectResponse("/shares", status_code=303)

    @router.post("/api/shares")
    async def create(request: Request) -> Response:
        """``{"studies": [...], "recipient": "provider|patient|tumour-board", "note": "", "days": 7, "pin": false,
        "deidentified": false}`` → 201 with the link's URL (and PIN) said this once."""
        principal = require(request, Permission.SHARE, action=AuditAction.EXPORT)
        body = await json_object(request)
        studies = body.get("studies", [])
        if isinstance(studies, str):
            studies = [studies]
        if not isinstance(studies, list) or not all(isinstance(uid, str) for uid in studies):
            raise HTTPException(400, "studies must be a list of Study Instance UIDs")
        days = body.get("days")
        if days is not None and (not isinstance(days, int) or isinstance(days, bool)):
            raise HTTPException(400, "days must be a whole number")
        try:
            created = await run_in_threadpool(
                shares.create, principal, studies, recipient_kind=str(body.get("recipient", "provider")),
                note=str(body.get("note", "") or ""), days=days, pin=body.get("pin") is True,
                deidentified=body.get("deidentified") is True)
        except ShareRefused as exc:
            _audit_refused_creation(request, principal, studies, exc)
            raise HTTPException(exc.status, str(exc)) from None
        _audit_created(request, principal, created)
        answer = {**created.share.as_json(), "url": _url(request, created.token)}
        if created.pin:
            answer["pin_code"] = created.pin
        return JSONResponse(answer, status_code=201)

    @router.get("/api/shares")
    def list_links(request: Request) -> Response:
        principal = require(request, Permission.SHARE)
        return JSONResponse({"shares": [view.as_json() for view in shares.links(principal)]})

    @router.delete("/api/shares/{share_id}")
    def revoke(request: Request, share_id: str) -> Response:
        principal = require(request, Permission.SHARE, action=AuditAction.POLICY_CHANGE)
        return JSONResponse(_revoke(request, principal, _number(share_id)).as_json())

    def _revoke(request: Request, principal: Principal, share_id: int) -> ShareView:
        try:
            view = shares.revoke(principal, share_id)
        except ShareRefused as exc:
            request.state.audit = AuditEntry.of(principal, AuditAction.POLICY_CHANGE, "denied", detail={
                "what": "share revoke", "share": share_id, "reason": str(exc)})
            raise HTTPException(exc.status, str(exc)) from None
        request.state.audit = AuditEntry.of(principal, AuditAction.POLICY_CHANGE, "", PatientID=view.PatientID,
                                            IssuerOfPatientID=view.IssuerOfPatientID, detail={
                                                "what": "share revoke", "share": view.id,
                                                "creator": view.created_by})
        return view

    # --- the recipient's side ---------------------------------------------------------------

    @router.get("/share/{token}")
    def open_link(request: Request, token: str) -> Response:
        """The shared studies, read-only; first the PIN form for a link with a PIN."""
        try:
            view = shares.find(token, _address(request))
        except ShareRefused as exc:
            return _refused(request, exc)
        if _session_of(request, view):
            return _studies_page(request, view, token)
        if view.has_pin:
            return page(request, _nobody(request), "share_pin.html", title="PIN", token=token, error="")
        return _started(request, view, token, _studies_page(request, view, token))

    @router.post("/share/{token}")
    async def give_pin(request: Request, token: str) -> Response:
        """The PIN form: the right PIN starts the recipient's session; a wrong one is refused (and counted)."""
        form = await request.form()
        pin = str(form.get("pin", "") or "")
        address = _address(request)
        try:
            view = await run_in_threadpool(shares.find, token, address)
            if view.has_pin:
                await run_in_threadpool(shares.check_pin, view, pin, address)
        except ShareRefused as exc:
            if exc.share is not None and exc.status == 403 and "PIN is not" in str(exc):
                _audit_refusal(request, exc)
                return page(request, _nobody(request), "share_pin.html", title="PIN", token=token,
                            error=str(exc), status_code=403)
            return _refused(request, exc)
        return await run_in_threadpool(
            _started, request, view, token, RedirectResponse(f"/share/{quote(token)}", status_code=303))

    @router.get("/share/{token}/content/{study}/{series}/{sop}")
    def content_of(request: Request, token: str, study: str, series: str, sop: str) -> Response:
        """A shared photo's, video's or PDF's content, by byte range (a link that is not de-identified)."""
        view, principal = _recipient(request, token)
        if view.deidentified:
            raise HTTPException(403, "this link is de-identified: its studies are downloaded, not shown")
        if not all(_UID.match(uid) for uid in (study, series, sop)):
            raise HTTPException(400, "not a DICOM UID")
        original = request.query_params.get("original") == "1"
        found = content.locate(study, series, sop, scope=shares.scope(view), original=original)
        if found is None:
            raise HTTPException(404, f"instance {sop} is not one this link shares (or has no content to show)")
        request.state.audit = AuditEntry.of(principal, AuditAction.READ, "", StudyInstanceUID=study,
                                            SOPInstanceUID=sop, PatientID=found.instance.PatientID,
                                            IssuerOfPatientID=found.instance.IssuerOfPatientID,
                                            detail={**_who(view), "what": found.media_type, "path": "/share/…"})
        return ranged(request, content, found, download=request.query_params.get("download") == "1",
                      cache="private, no-store")

    @router.get("/share/{token}/download")
    def download(request: Request, token: str) -> Response:
        """The shared studies as an IHE PDI zip (DICOMDIR, DICOM/…, README.TXT), de-identified when the link is."""
        view, principal = _recipient(request, token)
        try:
            chunks, count = shares.download(view, address=_address(request))
        except ShareRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        request.state.audit = AuditEntry.of(principal, AuditAction.EXPORT, "", PatientID=view.PatientID,
                                            IssuerOfPatientID=view.IssuerOfPatientID, detail={
                                                **_who(view), "what": "share download", "instances": count,
                                                "studies": list(view.studies), "deidentified": view.deidentified})
        name = f"shared-studies-{view.id}.zip"
        return StreamingResponse(chunks, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "private, no-store"})

    # --- helpers ----------------------------------------------------------------------------

    def _session_of(request: Request, view: ShareView) -> bool:
        cookie = request.cookies.get(SHARE_COOKIE, "")
        current = shares.session(cookie) if cookie else None
        return current is not None and current.id == view.id

    def _recipient(request: Request, token: str) -> tuple[ShareView, Principal]:
        """The link and its principal, for a request that carries the link's session; else refused."""
        try:
            view = shares.find(token, _address(request))
        except ShareRefused as exc:
            _audit_refusal(request, exc)
            raise HTTPException(exc.status, str(exc)) from None
        if not _session_of(request, view):
            _audit_refusal(request, ShareRefused("no session of this link", status=403, share=view))
            raise HTTPException(403, "open the link first (and give its PIN)")
        return view, shares.principal(view, address=_address(request))

    def _started(request: Request, view: ShareView, token: str, response: Response) -> Response:
        session_id, until = shares.start_session(view, _address(request))
        seconds = max(1, int((until - datetime.now(UTC)).total_seconds()))
        response.set_cookie(SHARE_COOKIE, session_id, max_age=seconds, path="/", httponly=True, secure=https,
                            samesite="lax")
        if not isinstance(response, RedirectResponse):
            entry: AuditEntry | None = getattr(request.state, "audit", None)
            if entry is not None:
                entry.detail["session"] = "started"
        else:
            request.state.audit = AuditEntry.of(shares.principal(view, address=_address(request)),
                                                AuditAction.LOGIN, "", PatientID=view.PatientID,
                                                IssuerOfPatientID=view.IssuerOfPatientID,
                                                detail={**_who(view), "what": "share PIN accepted"})
        return response

    def _studies_page(request: Request, view: ShareView, token: str) -> Response:
        principal = shares.principal(view, address=_address(request))
        scope = shares.scope(view)
        studies: list[StudyView] = [found for found in (portal.study(uid, scope=scope) for uid in view.studies)
                                    if found is not None]
        request.state.audit = AuditEntry.of(principal, AuditAction.READ, "", PatientID=view.PatientID,
                                            IssuerOfPatientID=view.IssuerOfPatientID,
                                            detail={**_who(view), "what": "share opened",
                                                    "studies": list(view.studies)})
        return page(request, _nobody(request), "share_view.html", title="Shared studies", share=view,
                    studies=studies, base=f"/share/{quote(token)}", viewer=viewer_prefix,
                    recipients=RECIPIENT_KINDS)

    def _refused(request: Request, exc: ShareRefused) -> Response:
        _audit_refusal(request, exc)
        response = page(request, _nobody(request), "share_refused.html", title="Link refused",
                        status_code=exc.status, reason=str(exc))
        if exc.retry_after:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    return router


def _list_page(request: Request, principal: Principal, listed: list[ShareView], *, error: str = "",
               status_code: int = 200) -> Response:
    return page(request, principal, "share_list.html", title="Shared links", shares=listed, error=error,
                status_code=status_code, recipients=RECIPIENT_KINDS,
                everyone=Permission.ADMINISTER in principal.permissions)


def _audit_created(request: Request, principal: Principal, created: CreatedShare) -> None:
    view = created.share
    request.state.audit = AuditEntry.of(principal, AuditAction.EXPORT, "", PatientID=view.PatientID,
                                        IssuerOfPatientID=view.IssuerOfPatientID,
                                        StudyInstanceUID=view.studies[0] if len(view.studies) == 1 else "",
                                        detail={**_who(view), "what": "share created", "studies": list(view.studies),
                                                "recipient": view.recipient_kind, "pin": view.has_pin,
                                                "deidentified": view.deidentified,
                                                "expires_at": view.expires_at.isoformat()})


def _audit_refused_creation(request: Request, principal: Principal, studies: Any, exc: ShareRefused) -> None:
    request.state.audit = AuditEntry.of(principal, AuditAction.EXPORT, "denied", detail={
        "what": "share created", "studies": [str(uid)[:64] for uid in list(studies)[:100]], "reason": str(exc)})


def _audit_refusal(request: Request, exc: ShareRefused) -> None:
    """A refused opening or use: who it was (the link, when the token named one), from where, and why."""
    view = exc.share
    actor = f"share:{view.id}:{view.created_by}"[:128] if view is not None else "share"
    request.state.audit = AuditEntry(action=AuditAction.LOGIN, outcome="denied", actor=actor, actor_kind="share",
                                     address=_address(request), interface="http",
                                     PatientID=view.PatientID if view is not None else "",
                                     IssuerOfPatientID=view.IssuerOfPatientID if view is not None else "",
                                     detail={**(_who(view) if view is not None else {}), "reason": str(exc),
                                             "path": "/share/…"})


def _number(share_id: str) -> int:
    """A link's id from the path (checked after the caller's permission, so a stranger learns nothing)."""
    if not share_id.isdigit() or len(share_id) > 18:
        raise HTTPException(404, f"share link {share_id[:32]!r} is not one of yours (or does not exist)")
    return int(share_id)


def _who(view: ShareView) -> dict[str, Any]:
    return {"share": view.id, "creator": view.created_by}


def _nobody(request: Request) -> Principal:
    """The recipient's pages are shown as to someone not signed in (no navigation, no account, no form token),
    whoever else the browser may be."""
    return replace(ANONYMOUS, address=_address(request))


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def _url(request: Request, token: str) -> str:
    return f"{client_origin(request)}/share/{token}"




