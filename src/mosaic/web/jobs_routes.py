"""Durable jobs over HTTP (``/api/jobs``): the long work a user started (exports) or an administrator runs
(retention), with its progress, and cancelling it. Users see their own jobs; administrators every job. A job
someone else started answers 404, like one that does not exist. Parameters are never shown (they may name
patients); cancelling is audited."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query, Request

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import AccessPolicy, Permission, Principal
from mosaic.http.auth import principal_of
from mosaic.jobs.store import JobView

if TYPE_CHECKING:
    from mosaic.jobs.store import JobStore


def visible(principal: Principal, job: JobView | None, job_id: str, what: str = "job") -> JobView:
    """The job, for its requester or an administrator; anyone else gets the 404 of a job that does not exist."""
    if job is None or (job.requested_by != principal.name
                       and not AccessPolicy.permits(principal, Permission.ADMINISTER)):
        raise HTTPException(404, f"{what} {job_id} is unknown")
    return job


def create_jobs_router(jobs: JobStore) -> APIRouter:
    router = APIRouter(prefix="/api/jobs")

    @router.get("")
    def list_jobs(request: Request, kind: str | None = None, state: str | None = None,
                  limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
        """The newest jobs first (a user's own; an administrator's: everyone's)."""
        principal = principal_of(request)
        mine = None if AccessPolicy.permits(principal, Permission.ADMINISTER) else principal.name
        found = jobs.recent(kind=kind, state=state, requested_by=mine, limit=limit)
        return {"jobs": [job.as_json() for job in found]}

    @router.get("/{job_id}")
    def show_job(request: Request, job_id: str) -> dict[str, Any]:
        return visible(principal_of(request), jobs.get(job_id), job_id).as_json()

    @router.post("/{job_id}/cancel")
    def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        """A queued job is cancelled at once; a running one stops at its next step (its output is removed)."""
        principal = principal_of(request)
        job = visible(principal, jobs.get(job_id), job_id)
        if job.finished:
            raise HTTPException(409, f"job {job_id} has already ended ({job.state.value})")
        cancelled = jobs.cancel(job_id)
        assert cancelled is not None
        action = AuditAction.EXPORT if job.kind == "export" else AuditAction.MODIFY
        request.state.audit = AuditEntry.of(principal, action, "", detail={
            "job": job_id, "kind": job.kind, "cancel": True})
        return cancelled.as_json()

    return router
