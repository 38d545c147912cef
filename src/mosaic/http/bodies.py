"""Request bodies of the JSON API: one reader, so every route answers bad input the same way (400, saying why)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request


async def json_object(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}`` when ``empty_ok``. Anything else is a 400."""
    raw = await request.body()
    if empty_ok and not raw.strip():
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the body is not JSON: expected a JSON object") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "expected a JSON object")
    return body
