"""The origin (scheme, host, port) a client reached Mosaic at, as far as Mosaic may believe it.

Used wherever Mosaic writes its own address into an answer: the BulkDataURIs and RetrieveURLs of DICOMweb,
the OpenID Connect ``redirect_uri``. ``http.public_url`` when configured (behind a proxy); else the request's
Host header when it names a trusted host (``http.trusted_hosts``), else the address the client connected to: a
forged Host never ends up in a URL a viewer follows or an identity provider redirects to. A client that
connected straight to a non-default port but left the port out of Host (dicomweb-client does) gets the port it
connected to.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request


def trusted_hosts(host: str, public_url: str | None, configured: list[str]) -> frozenset[str] | None:
    """The Host header names answers may build URLs from (None: any, ``http.trusted_hosts = ["*"]``)."""
    if "*" in configured:
        return None
    names = {host, "localhost", "127.0.0.1", "::1", *configured}
    if public_url:
        names.add(urlsplit(public_url).hostname or "")
    return frozenset(name.strip("[]").lower() for name in names if name)


def client_origin(request: Request) -> str:
    """``scheme://host[:port]`` without a trailing slash (the application's own settings on ``app.state``)."""
    public_url = getattr(request.app.state, "public_url", None)
    if public_url:
        return str(public_url).rstrip("/")
    url = request.base_url
    server = request.scope.get("server")
    trusted = getattr(request.app.state, "trusted_hosts", None)
    if trusted is not None and (url.hostname or "").lower() not in trusted and server:
        url = url.replace(hostname=server[0], port=server[1])
    if url.port is None and server and url.hostname == server[0] and server[1] not in (80, 443):
        url = url.replace(port=server[1])
    return str(url).rstrip("/")
