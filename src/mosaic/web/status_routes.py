"""The node's own state: ``/healthz`` (liveness and readiness, public) and ``/metrics`` (Prometheus, admins)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from mosaic import __version__
from mosaic.governance.policy import Permission
from mosaic.http.auth import require

if TYPE_CHECKING:
    from mosaic.index.database import Database
    from mosaic.storage import BlobStore


def free_space_problem(incoming: Path | None, floor: int) -> str | None:
    """Why the filesystem blob store cannot take much more (below ``storage.min_free_bytes``), or None."""
    if incoming is None:
        return None
    free = shutil.disk_usage(incoming).free
    if free < floor:
        return f"error: only {free} bytes free on the blob file system (storage.min_free_bytes is {floor})"
    return None


def create_status_router(database: Database, blobs: BlobStore, *, min_free_bytes: int) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    def healthz() -> JSONResponse:
        """Liveness and readiness: the index answers and the blob store is reachable."""
        checks: dict[str, Any] = {}
        try:
            with database.session() as session:
                session.execute(text("SELECT 1"))
            checks["index"] = "ok"
        except Exception as exc:
            checks["index"] = f"error: {exc}"
        try:
            blobs.exists("healthz-probe")
            checks["storage"] = free_space_problem(local.incoming if (local := blobs.local_files()) else None,
                                                   min_free_bytes) or "ok"
        except Exception as exc:
            checks["storage"] = f"error: {exc}"
        healthy = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if healthy else "error", "version": __version__, "checks": checks},
                            status_code=200 if healthy else 503)

    @router.get("/metrics")
    def metrics(request: Request) -> Response:
        require(request, Permission.ADMINISTER)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # several DICOM worker processes: add up what every process wrote
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
