"""Request bodies of the JSON API: one reader, so every route answers bad input the same way (400, saying why)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request

MAX_JSON_BYTES = 1 << 20
"""The largest JSON body a route of the JSON API reads (the API's objects are small: settings, a reason)."""


async def json_object(request: Request, *, empty_ok: bool = False, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}`` when ``empty_ok``. More than ``max_bytes`` is a 413
    (read no further), anything else that is not a JSON object a 400."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"the body is {declared} bytes; this route reads at most {max_bytes}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise HTTPException(413, f"the body is more than {max_bytes} bytes, the most this route reads")
    if empty_ok and not raw.strip():
        return {}
    try:
        body = json.loads(bytes(raw))
    except ValueError:
        raise HTTPException(400, "the body is not JSON: expected a JSON object") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "expected a JSON object")
    return body
