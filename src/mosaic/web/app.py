"""The ASGI application: health, metrics and the change feed (DICOMweb and the viewer mount here later)."""

from __future__ import annotations

import logging
import os
import shutil
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from mosaic import __version__
from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.policy import Permission
from mosaic.services.browse import BrowseService
from mosaic.services.ingest import RETRY_AFTER_SECONDS, out_of_resources
from mosaic.viewer import mount_viewer
from mosaic.web.auth import AuthMiddleware, require
from mosaic.web.landing import render_landing

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from mosaic.app import Mosaic

log = logging.getLogger("mosaic.http")

ANTI_FRAMING = ((b"content-security-policy", b"frame-ancestors 'self'"), (b"x-frame-options", b"SAMEORIGIN"))
"""On every answer: no other site may frame Mosaic's pages (clickjacking); the viewer's scripts, workers and wasm
are not restricted by these."""


class AntiFramingHeaders:
    """Adds :data:`ANTI_FRAMING` to every HTTP answer (plain ASGI: streamed answers stay streamed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(header for header in ANTI_FRAMING if header[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def trusted_hosts(host: str, public_url: str | None, configured: list[str]) -> frozenset[str] | None:
    """The Host header names answers may build URLs from (None: any, ``http.trusted_hosts = ["*"]``)."""
    if "*" in configured:
        return None
    names = {host, "localhost", "127.0.0.1", "::1", *configured}
    if public_url:
        names.add(urlsplit(public_url).hostname or "")
    return frozenset(name.strip("[]").lower() for name in names if name)


def _free_space_problem(mosaic: Mosaic) -> str | None:
    """Why the filesystem blob store cannot take much more (below ``storage.min_free_bytes``), or None."""
    folder = getattr(mosaic.blobs, "incoming", None)
    if folder is None:
        return None
    free = shutil.disk_usage(folder).free
    floor = mosaic.settings.storage.min_free_bytes
    if free < floor:
        return f"error: only {free} bytes free on the blob file system (storage.min_free_bytes is {floor})"
    return None


def create_app(mosaic: Mosaic) -> FastAPI:
    app = FastAPI(title="Mosaic", version=__version__)
    app.state.public_url = mosaic.settings.http.public_url
    app.state.trusted_hosts = trusted_hosts(mosaic.settings.http.host, mosaic.settings.http.public_url,
                                            mosaic.settings.http.trusted_hosts)
    app.add_middleware(AuthMiddleware, mosaic=mosaic)  # type: ignore[arg-type]
    app.add_middleware(AntiFramingHeaders)  # outermost: refusals by the middleware get the headers too

    @app.exception_handler(HTTPException)
    async def explain(_request: Request, exc: HTTPException) -> JSONResponse:
        """Refusals look like every other error answer: ``{"error": "<what and why>"}``."""
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    async def index_unavailable(request: Request, exc: Exception) -> JSONResponse:
        """The index is down or out of connections: 503 with Retry-After, saying so, not a 500 (a bug)."""
        reason = out_of_resources(exc)
        if reason is None:
            raise exc
        log.error("HTTP %s %s: %s", request.method, request.url.path, reason)
        return JSONResponse({"error": f"Mosaic cannot answer now: {reason}"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if mosaic.settings.http.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=mosaic.settings.http.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"], expose_headers=["X-Total-Count", "ETag", "Content-Location"], max_age=600,
        )

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Liveness and readiness: the index answers and the blob store is reachable."""
        checks: dict[str, Any] = {}
        try:
            with mosaic.database.session() as session:
                session.execute(text("SELECT 1"))
            checks["index"] = "ok"
        except Exception as exc:
            checks["index"] = f"error: {exc}"
        try:
            mosaic.blobs.exists("healthz-probe")
            checks["storage"] = _free_space_problem(mosaic) or "ok"
        except Exception as exc:
            checks["storage"] = f"error: {exc}"
        healthy = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if healthy else "error", "version": __version__, "checks": checks},
                            status_code=200 if healthy else 503)

    @app.get("/metrics")
    def metrics(request: Request) -> Response:
        require(request, Permission.ADMINISTER)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # several DICOM worker processes: add up what every process wrote
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/changes")
    def changes(request: Request, since: int = Query(0, ge=0, le=2**63 - 1),
                limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """Index changes in order: pass the returned ``last`` as ``since`` to get the next page."""
        principal = require(request, Permission.QUERY, action=AuditAction.QUERY)
        if not mosaic.policy.scope(principal).unrestricted:
            raise HTTPException(403, f"{principal.name} may see only some facilities or departments; the change "
                                     "feed covers them all")
        page = mosaic.changes.page(since, limit)
        request.state.audit = AuditEntry.of(principal, AuditAction.QUERY, "",
                                            detail={"path": "/api/changes", "since": since, "count": len(page.changes)})
        return {"changes": page.changes, "last": page.last, "done": page.done}

    browse = BrowseService(mosaic.database)

    @app.get("/", response_class=HTMLResponse)
    def landing(request: Request, limit: int = Query(50, ge=1, le=500)) -> HTMLResponse:
        """Recent studies the user may see, each linked to the viewer."""
        principal = require(request, Permission.QUERY, action=AuditAction.QUERY)
        studies = browse.recent_studies(limit, mosaic.policy.scope(principal))
        request.state.audit = AuditEntry.of(principal, AuditAction.QUERY, "", detail={
            "path": "/", "studies": [study.StudyInstanceUID for study in studies][:100]})
        return HTMLResponse(render_landing(studies, user=principal.name, csrf_token=principal.csrf_token))

    from mosaic.dicomweb.guard import dicomweb_guard
    from mosaic.dicomweb.routes import create_router
    from mosaic.dicomweb.wado import create_wado_router
    from mosaic.web.account import create_account_router

    app.include_router(create_router(mosaic))
    # WADO-URI also at the site root: /wado?…
    app.include_router(create_wado_router(mosaic, rs=False), dependencies=[Depends(dicomweb_guard(mosaic))])
    app.include_router(create_account_router(mosaic))
    from mosaic.web.export_routes import create_export_router

    app.include_router(create_export_router(mosaic))
    from mosaic.web.users_routes import create_users_router

    app.include_router(create_users_router(mosaic))
    from mosaic.web.retention_routes import create_retention_router

    app.include_router(create_retention_router(mosaic))
    from mosaic.web.jobs_routes import create_jobs_router

    app.include_router(create_jobs_router(mosaic))
    mount_viewer(app, mosaic.settings.viewer_path, dicomweb_root="/dicom-web")
    return app
