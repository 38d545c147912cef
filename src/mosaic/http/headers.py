"""Headers on every HTTP answer, whatever door gave it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
