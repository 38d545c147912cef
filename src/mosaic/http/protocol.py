"""The HTTP/1.1 connection protocol of Mosaic's uvicorn server: uvicorn's h11 protocol with deadlines and a cap.

uvicorn drops an idle keep-alive connection, but a connection whose request headers never finish (slowloris)
or whose body stops arriving is kept for ever, and any number of them is accepted. Here:

* the request line and headers must arrive within ``header_timeout`` of the connection (or of the previous
  answer on a kept-alive connection), however slowly the bytes trickle in; else 408 and the connection closes;
* while the body is read, each read must come within ``body_timeout`` of the last (not while Mosaic itself
  has paused reading because the application is behind);
* beyond ``max_connections`` open connections a new one is answered 503 with Retry-After and closed, and so
  is one beyond ``max_connections_per_address`` from one IP address (not counting the trusted reverse proxies,
  through which every browser comes): one stranger cannot fill the door for everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("mosaic.http.protocol")

_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s")
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\n"
         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s")


def _no_delay(transport: asyncio.Transport) -> None:
    """Send each answer at once (TCP_NODELAY). asyncio sets it only on sockets created with ``IPPROTO_TCP``; the
    socket Mosaic binds itself (``proto`` 0) would leave Nagle on, and every small answer waited ~40 ms for the
    client's delayed ACK."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # a socket already closing
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _answer(template: bytes, message: str) -> bytes:
    body = message.encode()
    return template % (len(body), body)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, a body idle deadline and a connection cap."""

    header_timeout: float = 20.0
    body_timeout: float = 60.0
    max_connections: int = 1000
    max_connections_per_address: int = 100
    unlimited_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """The trusted reverse proxies (http.trusted_proxies): not held to the per-address cap."""
    _refusals: list[float] = [0, -10.0]
    """Refusals since the last report, and when it was (the loop's clock), shared by a server's connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    @classmethod
    def configured(cls, *, header_timeout: float, body_timeout: float, max_connections: int,
                   max_connections_per_address: int = 0, trusted_proxies: list[str] | None = None
                   ) -> type[GuardedH11Protocol]:
        """A protocol class with these limits (uvicorn builds one instance per connection from the class)."""
        return type("GuardedH11Protocol", (cls,), {
            "header_timeout": header_timeout, "body_timeout": body_timeout, "max_connections": max_connections,
            "max_connections_per_address": max_connections_per_address or max(1, max_connections // 10),
            "_refusals": [0, -10.0],
            "unlimited_addresses": tuple(ipaddress.ip_network(entry.strip(), strict=False)
                                         for entry in trusted_proxies or ())})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)
        address = self.client[0] if self.client else ""
        if len(self.connections) > self.max_connections:
            self._refuse(transport, f"Mosaic already serves {self.max_connections} HTTP connections "
                                    "(http.max_connections)", "http.max_connections", len(self.connections) - 1)
            return
        if address and not self._unlimited(address):
            from_address = sum(1 for other in self.connections
                               if isinstance(other, H11Protocol) and other.client and other.client[0] == address)
            if from_address > self.max_connections_per_address:
                self._refuse(transport, f"{address} already holds {self.max_connections_per_address} HTTP "
                                        "connections (http.max_connections_per_address)",
                             "http.max_connections_per_address", from_address - 1)
                return
        self._arm(self.header_timeout, self._headers_late)

    def _unlimited(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.unlimited_addresses)

    def _refuse(self, transport: asyncio.Transport, message: str, limit: str, count: int) -> None:
        """503 and close; one log line per 10 s at most (a flood must not fill the disk with its refusals)."""
        refusals = type(self)._refusals
        refusals[0] += 1
        now = self.loop.time()
        if now - refusals[1] >= 10:
            log.warning("HTTP connection from %s refused: %d connections are open (%s); %d refused since the "
                        "last report", self.client[0] if self.client else "?", count, limit, int(refusals[0]))
            refusals[:] = [0, now]
        transport.write(_answer(_BUSY, f"{message}; try again shortly.\n"))
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._deadline is None:  # the first bytes of a request on a kept-alive connection
                self._arm(self.header_timeout, self._headers_late)
        elif state is h11.SEND_BODY:
            self._arm(self.body_timeout, self._body_late)
        else:  # the request is in: the application answers at its own pace
            self._disarm()

    def on_response_complete(self) -> None:
        self._disarm()  # uvicorn's keep-alive timer now runs until the next request's first bytes
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._arm(self.body_timeout, self._body_late)

    def _arm(self, seconds: float, handler: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.warning("HTTP connection from %s closed: its request headers did not arrive within %g s "
                    "(http.header_timeout_seconds)", self.client[0] if self.client else "?", self.header_timeout)
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_answer(_TIMEOUT, f"the request headers did not arrive within "
                                                   f"{self.header_timeout:g} s\n"))
        self.transport.close()

    def _body_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        if self.flow.read_paused:  # Mosaic stopped reading, not the client: wait on
            self._arm(self.body_timeout, self._body_late)
            return
        log.warning("HTTP connection from %s closed: nothing of its request body arrived for %g s "
                    "(http.body_timeout_seconds)", self.client[0] if self.client else "?", self.body_timeout)
        self.transport.close()
