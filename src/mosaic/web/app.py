"""The ASGI application: health, metrics and the change feed (DICOMweb and the viewer mount here later)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from mosaic import __version__
from mosaic.services.browse import BrowseService
from mosaic.viewer import mount_viewer
from mosaic.web.landing import render_landing

if TYPE_CHECKING:
    from mosaic.app import Mosaic


def create_app(mosaic: Mosaic) -> FastAPI:
    app = FastAPI(title="Mosaic", version=__version__)
    app.state.public_url = mosaic.settings.http.public_url
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
            checks["storage"] = "ok"
        except Exception as exc:
            checks["storage"] = f"error: {exc}"
        healthy = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if healthy else "error", "version": __version__, "checks": checks},
                            status_code=200 if healthy else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # several DICOM worker processes: add up what every process wrote
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/changes")
    def changes(since: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """Index changes in order: pass the returned ``last`` as ``since`` to get the next page."""
        page = mosaic.changes.page(since, limit)
        return {"changes": page.changes, "last": page.last, "done": page.done}

    browse = BrowseService(mosaic.database)

    @app.get("/", response_class=HTMLResponse)
    def landing(limit: int = Query(50, ge=1, le=500)) -> HTMLResponse:
        """Recent studies, each linked to the viewer."""
        return HTMLResponse(render_landing(browse.recent_studies(limit)))

    from mosaic.dicomweb.routes import create_router
    from mosaic.dicomweb.wado import create_wado_router

    app.include_router(create_router(mosaic))
    app.include_router(create_wado_router(mosaic, rs=False))  # WADO-URI also at the site root: /wado?…
    mount_viewer(app, mosaic.settings.viewer_path, dicomweb_root="/dicom-web")
    return app
