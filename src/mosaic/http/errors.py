"""How exceptions become HTTP answers, the same on every door: ``{"error": "<what and why>"}``; for a browser
navigating to one of the pages (:func:`~mosaic.http.auth.wants_page`), the same sentence as a page."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from mosaic.http.auth import wants_page
from mosaic.services.ingest import RETRY_AFTER_SECONDS, out_of_resources

log = logging.getLogger("mosaic.http")

ErrorPage = Callable[[Request, int, str, "dict[str, str] | None"], Response]
"""Renders a refusal or error as a page: (request, status code, the sentence, headers)."""


def _validation_sentence(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "the request"
        problems.append(f"{where}: {error.get('msg', 'not valid')}")
    return "the request's parameters are not valid (" + "; ".join(problems) + ")"


def install_error_handlers(app: FastAPI, *, page: ErrorPage | None = None) -> None:
    """Refusals (HTTPException) look like every other error answer; an index that is down or out of
    connections is a 503 with Retry-After that says so, not a 500 (a bug). With ``page``, a browser navigating
    to a page is shown these as a page with the same status code and sentence."""

    def as_page(request: Request) -> bool:
        return page is not None and wants_page(request)

    @app.exception_handler(HTTPException)
    async def explain(request: Request, exc: HTTPException) -> Response:
        if page is not None and as_page(request):
            return page(request, exc.status_code, str(exc.detail), dict(exc.headers or {}))
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def not_routed(request: Request, exc: StarletteHTTPException) -> Response:
        """No such route or method (Starlette's own refusals): FastAPI's answer, or a page for a browser."""
        if page is not None and as_page(request):
            detail = "there is no page at this address" if exc.status_code == 404 else str(exc.detail)
            return page(request, exc.status_code, detail, dict(exc.headers or {}))
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if page is not None and as_page(request):
            return page(request, 400, _validation_sentence(exc), None)
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    async def index_unavailable(request: Request, exc: Exception) -> Response:
        reason = out_of_resources(exc)
        if reason is None:
            raise exc
        log.error("HTTP %s %s: %s", request.method, request.url.path, reason)
        message = f"Mosaic cannot answer now: {reason}"
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if page is not None and as_page(request):
            return page(request, 503, message, headers)
        return JSONResponse({"error": message}, status_code=503, headers=headers)

    if page is not None:
        @app.exception_handler(Exception)
        async def failed(request: Request, exc: Exception) -> Response:
            """A bug: logged by the server (the traceback), never shown; a browser gets a page saying so."""
            if as_page(request):
                return page(request, 500, "Mosaic failed to answer this request; the error is logged for the "
                                          "administrators", None)
            return PlainTextResponse("Internal Server Error", status_code=500)
