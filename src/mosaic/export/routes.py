"""De-identified exports over HTTP: start one, follow its progress, and (administrators only) read its
manifest. Folder and zip exports are written under ``export.folder``; the request names a file or folder
inside it, never a path elsewhere on the server."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from mosaic.export.service import KIND, Destination, ExportError, summary
from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import AccessDenied, Permission
from mosaic.http.auth import principal_of, require
from mosaic.http.bodies import json_object
from mosaic.web.jobs_routes import visible

if TYPE_CHECKING:
    from pathlib import Path

    from mosaic.export.service import ExportService
    from mosaic.jobs.store import JobStore

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def create_export_router(exports: ExportService, jobs: JobStore, export_folder: Path) -> APIRouter:
    """``/api/exports``: folder and zip exports are written inside ``export_folder`` (``settings.export_path``)."""
    router = APIRouter(prefix="/api/exports")

    @router.post("")
    async def start_export(request: Request) -> JSONResponse:
        """``{"studies": [...], "project": "...", "destination": {"kind": "zip", "target": "cohort.zip"},
        "options": {...}}`` → 202 with the export's id; poll ``GET /api/exports/{id}``."""
        principal = require(request, Permission.EXPORT, action=AuditAction.EXPORT)
        body = await json_object(request)
        destination = body.get("destination") or {}
        kind, target = str(destination.get("kind", "")), str(destination.get("target", ""))
        if kind in ("folder", "zip"):
            if not _NAME.match(target):
                raise HTTPException(400, f"export name {target!r} must be a plain file or folder name "
                                         "(letters, digits, '.', '_', '-')")
            target = str(export_folder / target)
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise HTTPException(400, "options must be an object of true/false de-identification options")
        studies = [str(study) for study in body.get("studies") or []]
        try:
            job = exports.prepare(principal, studies, Destination(kind, target), str(body.get("project", "")),
                                         {key: bool(value) for key, value in options.items()})
        except AccessDenied as exc:
            raise HTTPException(403, str(exc)) from None
        except ExportError as exc:
            raise HTTPException(404 if "not in the archive" in str(exc) else 400, str(exc)) from None
        exports.start()
        return JSONResponse(summary(job), status_code=202, headers={"Location": f"/api/exports/{job.id}"})

    @router.get("/{export_id}")
    def export_status(request: Request, export_id: str) -> dict[str, Any]:
        principal = principal_of(request)
        job = jobs.get(export_id)
        return summary(visible(principal, job if job is not None and job.kind == KIND else None, export_id,
                               "export"))

    @router.get("/{export_id}/manifest")
    def export_manifest(request: Request, export_id: str) -> dict[str, Any]:
        """Which patient and study each pseudonym stands for: re-identification, administrators only, audited."""
        principal = require(request, Permission.ADMINISTER, action=AuditAction.EXPORT)
        entries = exports.manifest(export_id)
        if not entries:
            raise HTTPException(404, f"export {export_id} has no manifest")
        request.state.audit = AuditEntry.of(principal, AuditAction.READ, "", detail={"manifest": export_id})
        return {"export": export_id, "entries": entries}

    return router
