"""How exceptions become HTTP answers, the same on every door: ``{"error": "<what and why>"}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from mosaic.services.ingest import RETRY_AFTER_SECONDS, out_of_resources

log = logging.getLogger("mosaic.http")


def install_error_handlers(app: FastAPI) -> None:
    """Refusals (HTTPException) look like every other error answer; an index that is down or out of
    connections is a 503 with Retry-After that says so, not a 500 (a bug)."""

    @app.exception_handler(HTTPException)
    async def explain(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    async def index_unavailable(request: Request, exc: Exception) -> JSONResponse:
        reason = out_of_resources(exc)
        if reason is None:
            raise exc
        log.error("HTTP %s %s: %s", request.method, request.url.path, reason)
        return JSONResponse({"error": f"Mosaic cannot answer now: {reason}"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
