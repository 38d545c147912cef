"""Answers every HTTP door gives the same way: an error that says what was wrong, conditional GETs, gzip."""

from __future__ import annotations

import gzip

from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

GZIP_MIN = 1024
"""Bodies shorter than this are sent as they are (compressing them saves nothing)."""


def problem(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer that says what was wrong: ``{"error": "<what and why>"}`` (PS3.18 lets the body explain)."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def not_modified(request: Request, etag: str, headers: dict[str, str]) -> Response | None:
    """Sets ``ETag`` (and ``Cache-Control: no-cache``: revalidate each time) in ``headers``; a ``304`` when the
    client's ``If-None-Match`` already names that tag, else None (send the body)."""
    headers["ETag"] = etag
    headers["Cache-Control"] = "no-cache"
    if etag in {value.strip() for value in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    return None


def compressed(request: Request, body: bytes, headers: dict[str, str]) -> bytes:
    """``body`` gzip-compressed when the client accepts it and it is worth it (headers set), else unchanged."""
    if len(body) >= GZIP_MIN and "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        return gzip.compress(body, compresslevel=5)
    return body
