"""Retention, legal holds and manual deletion over HTTP (``/api/retention``, ``/api/holds``, ``/api/studies``).

Retention and holds need the administer permission, deleting a study the delete permission (and the study in
the caller's scope: one outside it answers 404, like one that does not exist). A deletion a legal hold blocks
answers 409 with the hold and its reason. Every request is audited by the middleware from ``request.state.audit``.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mosaic.core.errors import NotFound
from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.holds import HoldError, UnderLegalHold, hold_audit_entry
from mosaic.governance.policy import AccessPolicy, Permission
from mosaic.http.auth import require
from mosaic.http.bodies import json_object
from mosaic.retention.service import RetentionBusy

if TYPE_CHECKING:
    from mosaic.retention.holds import HoldService
    from mosaic.retention.runs import RetentionRuns
    from mosaic.retention.service import RetentionService
    from mosaic.services.delete import DeleteService


def create_retention_router(retention: RetentionService, retention_runs: RetentionRuns, hold_service: HoldService,
                            deleter: DeleteService, policy: AccessPolicy) -> APIRouter:
    """The routes of retention runs, legal holds and deleting a study by hand, over the services they use."""
    router = APIRouter()

    # --- retention --------------------------------------------------------------------------

    @router.get("/api/retention/dry-run")
    def dry_run(request: Request, now: datetime | None = None,
                all: bool = Query(False, description="Also list studies no rule matches.")) -> dict[str, Any]:
        """Every study a run would mark or purge, and why the others stay (nothing is changed)."""
        principal = require(request, Permission.ADMINISTER, action=AuditAction.QUERY)
        items = retention.dry_run(now)
        counts = Counter(item.verdict.value for item in items)
        shown = [item for item in items if all or item.rule]
        request.state.audit = AuditEntry.of(principal, AuditAction.QUERY, "", detail={
            "path": "/api/retention/dry-run", "counts": dict(counts),
            "due": [item.StudyInstanceUID for item in items if item.verdict == "due"][:100]})
        return {"counts": dict(counts), "purge_now": sum(item.purge_now for item in items),
                "studies": [item.as_json() for item in shown]}

    @router.get("/api/retention/status")
    def status(request: Request) -> dict[str, Any]:
        """The newest run (phase, done of total; it is a job, see also ``/api/jobs``) and the last report."""
        require(request, Permission.ADMINISTER)
        return retention_runs.status()

    @router.post("/api/retention/run", response_model=None)
    def run(request: Request, background: bool = Query(False, description="Answer 202 at once; follow the run "
                                                       "at /api/retention/status.")) -> dict[str, Any] | JSONResponse:
        """Mark due studies and purge those past the grace period (each deletion audited as actor retention).
        The run is a durable job: any node shows it, and it is run again if its node stops."""
        principal = require(request, Permission.ADMINISTER, action=AuditAction.DELETE)
        entry = AuditEntry.of(principal, AuditAction.DELETE, "", detail={"path": "/api/retention/run"})
        request.state.audit = entry
        try:
            if background:
                job = retention_runs.submit(principal.name)
                entry.detail.update({"background": True, "job": job.id})
                return JSONResponse({"started": True, "job": job.as_json()}, status_code=202,
                                    headers={"Location": "/api/retention/status"})
            job = retention_runs.run_now(principal.name)
        except RetentionBusy as exc:
            raise HTTPException(409, str(exc)) from None
        if job.state != "done":
            raise HTTPException(500, f"the retention run {job.id} {job.state.value}: {job.error}")
        report = job.result
        entry.detail.update({"job": job.id, "marked": report["marked"], "purged": report["purged"],
                             "held": report["held"], "failed": report["failed"]})
        return report

    # --- legal holds ------------------------------------------------------------------------

    @router.get("/api/holds")
    def holds(request: Request, all: bool = Query(False, description="Include released holds.")) -> dict[str, Any]:
        """Legal holds in the order they were placed (active ones unless ``all``)."""
        principal = require(request, Permission.ADMINISTER, action=AuditAction.QUERY)
        found = hold_service.holds(include_released=all)
        request.state.audit = AuditEntry.of(principal, AuditAction.QUERY, "", detail={"path": "/api/holds",
                                                                                      "holds": len(found)})
        return {"holds": [hold.as_json() for hold in found]}

    @router.post("/api/holds", status_code=201)
    async def place_hold(request: Request) -> JSONResponse:
        """Place a hold: ``{"PatientID", "IssuerOfPatientID"}`` or ``{"StudyInstanceUID"}``, with ``reason``."""
        principal = require(request, Permission.ADMINISTER, action=AuditAction.LEGAL_HOLD)
        body = await json_object(request, empty_ok=True)
        fields = {name: str(body.get(name) or "") for name in ("PatientID", "IssuerOfPatientID",
                                                                "StudyInstanceUID", "reason")}
        request.state.audit = AuditEntry.of(principal, AuditAction.LEGAL_HOLD, "", PatientID=fields["PatientID"],
                                            IssuerOfPatientID=fields["IssuerOfPatientID"],
                                            StudyInstanceUID=fields["StudyInstanceUID"],
                                            detail={"change": "place", "reason": fields["reason"]})
        try:
            hold = await run_in_threadpool(lambda: hold_service.place(
                principal, reason=fields["reason"], patient_id=fields["PatientID"],
                issuer=fields["IssuerOfPatientID"], study_instance_uid=fields["StudyInstanceUID"]))
        except HoldError as exc:
            raise HTTPException(400, str(exc)) from None
        request.state.audit = hold_audit_entry(principal, hold, "placed")
        return JSONResponse(hold.as_json(), status_code=201)

    @router.delete("/api/holds/{hold_id}")
    def release_hold(request: Request, hold_id: int) -> dict[str, Any]:
        """Release a hold (it stays listed with ``all=true``, with who released it and when)."""
        principal = require(request, Permission.ADMINISTER, action=AuditAction.LEGAL_HOLD)
        request.state.audit = AuditEntry.of(principal, AuditAction.LEGAL_HOLD, "",
                                            detail={"change": "release", "hold": hold_id})
        try:
            hold = hold_service.release(principal, hold_id)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except HoldError as exc:
            raise HTTPException(409, str(exc)) from None
        request.state.audit = hold_audit_entry(principal, hold, "released")
        return hold.as_json()

    # --- deleting a study by hand -----------------------------------------------------------

    @router.delete("/api/studies/{study}")
    async def delete_study(request: Request, study: str, reason: str | None = None) -> JSONResponse:
        """Delete a study (index and blobs): needs ``reason`` (query or JSON body); 409 under a legal hold."""
        principal = require(request, Permission.DELETE, action=AuditAction.DELETE)
        if reason is None:
            reason = str((await json_object(request, empty_ok=True)).get("reason") or "")
        entry = AuditEntry.of(principal, AuditAction.DELETE, "", StudyInstanceUID=study,
                              detail={"reason": reason})
        request.state.audit = entry
        if not reason.strip():
            raise HTTPException(400, "deleting a study needs a reason (?reason=… or {\"reason\": …})")
        access = await run_in_threadpool(policy.study_access, principal, study)
        entry.PatientID, entry.IssuerOfPatientID = access.PatientID, access.IssuerOfPatientID
        if not access.allowed:
            raise HTTPException(404, f"study {study} is not in the index")
        try:
            result = await run_in_threadpool(lambda: deleter.delete_study(
                study, reason=reason.strip(), actor=principal.name))
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except UnderLegalHold as exc:
            entry.outcome = "denied"
            entry.detail["hold"] = exc.hold.id
            raise HTTPException(409, str(exc)) from None
        entry.PatientID, entry.IssuerOfPatientID = result.PatientID, result.IssuerOfPatientID
        entry.detail.update({"series": result.series, "instances": result.instances, "versions": result.versions,
                             "blobs_failed": len(result.blobs_failed)})
        return JSONResponse(result.as_json())

    return router
