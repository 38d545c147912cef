"""Where a FHIR Subscription may send its notifications: the archive posts patient data to a URL a user gave, so
the URL is checked when the subscription is made and again before every notification (DNS may change).

With ``fhir.subscription_endpoints`` set, an endpoint must be under one of those URLs (an administrator's list:
the EHR's notification URLs; same scheme and host, the port when the entry names one, the path below the entry's;
plain http allowed only if an entry names it). Without it, an endpoint must be
https and its host must not resolve to a loopback, link-local (cloud metadata), multicast, reserved or unspecified
address — the archive's own services and the machine it runs on are not subscribers. Private networks (10/8,
192.168/16 …) are allowed: that is where a hospital's EHR lives. Redirects are never followed (a notification
answered 3xx has failed), and the headers a subscription adds may not replace the ones that frame the request.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

FRAMING_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection",
                             "expect", "te", "upgrade", "trailer", "proxy-authorization"})
"""Header names a subscription's ``channel.header`` may not set."""


class EndpointRefused(Exception):
    """A notification endpoint that may not be sent to (the reason is the message)."""


def endpoint_refusal(url: str, allowed_prefixes: Sequence[str], *, resolve: bool = True) -> str | None:
    """Why ``url`` may not receive notifications, or None when it may (a URL under an administrator's list is not
    looked up here: its host is the administrator's, and is resolved when a notification is sent)."""
    try:
        checked_address(url, allowed_prefixes, resolve=resolve and not allowed_prefixes)
    except EndpointRefused as exc:
        return str(exc)
    return None


def checked_address(url: str, allowed_prefixes: Sequence[str], *, resolve: bool = True) -> str:
    """The address to connect to for ``url``: its host resolved once and checked (the connection must go to
    this address, not to a second lookup's answer, which a DNS rebinding could point at the archive's own
    machine). Raises :class:`EndpointRefused`; without ``resolve`` nothing is looked up and "" is returned."""
    parts = urlsplit(url)
    refusal = _form_refusal(url, parts, allowed_prefixes)
    if refusal is not None:
        raise EndpointRefused(refusal)
    if not resolve:
        return ""
    assert parts.hostname is not None  # checked by the form
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = [str(info[4][0]) for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)]
    except (OSError, UnicodeError, ValueError) as exc:
        raise EndpointRefused(f"{parts.hostname!r} does not resolve: {exc}") from None
    if not addresses:
        raise EndpointRefused(f"{parts.hostname!r} does not resolve")
    if not allowed_prefixes:  # an administrator's list names its hosts; otherwise every answer must be outside
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if (address.is_loopback or address.is_link_local or address.is_multicast or address.is_reserved
                    or address.is_unspecified):
                raise EndpointRefused(f"{parts.hostname!r} is {address}, a loopback, link-local or reserved "
                                      "address: not a subscriber (fhir.subscription_endpoints can allow it)")
    return addresses[0]


def _form_refusal(url: str, parts: SplitResult, allowed_prefixes: Sequence[str]) -> str | None:
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http or https URL"
    if parts.username or parts.password:
        return f"{url!r} carries credentials in the URL: give them as a channel.header"
    if allowed_prefixes:
        if any(_under(parts, urlsplit(prefix)) for prefix in allowed_prefixes):
            return None
        return f"{url!r} is not under an endpoint this archive notifies (fhir.subscription_endpoints)"
    if parts.scheme != "https":
        return f"{url!r}: notifications carry patient data and go over https only (fhir.subscription_endpoints " \
               "can allow a plain http endpoint)"
    return None


def _under(url: SplitResult, prefix: SplitResult) -> bool:
    """``url`` is at or below ``prefix``: the same scheme and host (any port when the prefix names none), its path
    under the prefix's (``https://ehr.example.org`` does not admit ``https://ehr.example.org.evil.net``)."""
    if url.scheme != prefix.scheme or (url.hostname or "") != (prefix.hostname or ""):
        return False
    try:
        if prefix.port is not None and url.port != prefix.port:
            return False
    except ValueError:
        return False
    base = prefix.path or "/"
    path = url.path or "/"
    return path.startswith(base) if base.endswith("/") else path == base or path.startswith(base + "/")


def header_refusal(lines: Sequence[str]) -> str | None:
    """Why these ``channel.header`` lines may not be sent, or None."""
    for line in lines:
        name, separator, value = line.partition(":")
        if not separator or "\n" in line or "\r" in line or not name.strip() or not value.strip():
            return "channel.header lines are 'Name: value', one line each"
        if name.strip().lower() in FRAMING_HEADERS:
            return f"channel.header may not set {name.strip()!r}"
    return None
