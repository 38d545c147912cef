"""Every HTTP answer leaves at once: Mosaic's HTTP connections have Nagle's algorithm off (TCP_NODELAY).

Without it a small answer written in two pieces (headers, body) waited ~40 ms for the client's delayed ACK: every
QIDO-RS query and `/healthz` took 44-48 ms instead of 2-5 ms (docs/benchmarks.md, 2026-12-07). The accepted
socket's option is read back from the kernel, on the socket the server binds and on one accepted from it.
"""

from __future__ import annotations

import socket
from typing import Any

from mosaic.app import _listen
from mosaic.http.protocol import _no_delay


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


def test_accepted_http_connections_send_without_delay() -> None:
    listening = _listen("127.0.0.1", 0, "HTTP")
    try:
        assert listening.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only on such sockets
        client = socket.create_connection(listening.getsockname()[:2])
        accepted, _ = listening.accept()
        try:
            accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)  # as a socket of proto 0 would be
            _no_delay(_Transport(accepted))  # type: ignore[arg-type]
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            accepted.close()
            client.close()
    finally:
        listening.close()
