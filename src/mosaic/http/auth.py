"""The HTTP door's guard: authentication on every request, CSRF on browser forms, audit of every answer.

:class:`AuthMiddleware` (pure ASGI, so streamed answers stay streamed) turns the request's credentials —
``Authorization: Bearer`` (Mosaic API token or OpenID Connect JWT), ``Authorization: Basic`` (local account), or
the session cookie a browser got at ``/login`` — into a :class:`~mosaic.governance.policy.Principal` in
``request.state.principal``. Wrong credentials are a 401 that says what was wrong; no credentials on anything
but the sign-in page and ``/healthz`` is a 401 (or, for a browser, a redirect to ``/login``). Routes that touch
patient data then ask the policy (:func:`require`, :mod:`mosaic.dicomweb.guard`) and put an
:class:`~mosaic.governance.audit.AuditEntry` in ``request.state.audit``; the middleware records it with the
outcome the answer had.

The recipient of a share link has no account: ``/share/<token>/…`` is left to the share routes (the token, and
its PIN, are their credential), which give the recipient's browser a ``mosaic_share`` cookie. With that cookie
alone a request is the link's own principal (kind ``share``: it sees exactly the link's studies), and it may reach
only the link's pages, the viewer and DICOMweb reads (:func:`share_may_reach`); anything else is a 403.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.identity import TOKEN_PREFIX, AuthenticationFailed, SignInRefused
from mosaic.governance.policy import ANONYMOUS, AccessDenied, AccessPolicy, Permission, Principal
from mosaic.services.ingest import RETRY_AFTER_SECONDS, out_of_resources

if TYPE_CHECKING:
    from mosaic.governance.audit import AuditTrail
    from mosaic.governance.identity import IdentityService
    from mosaic.services.shares import ShareService

log = logging.getLogger("mosaic.http.auth")

SESSION_COOKIE = "mosaic_session"
SHARE_COOKIE = "mosaic_share"
"""A share link's recipient session (see :mod:`mosaic.services.shares`)."""
SHARE_PREFIX = "/share/"
LOGIN_CSRF_COOKIE = "mosaic_login_csrf"
CSRF_HEADER = "x-csrf-token"
PUBLIC_PATHS = frozenset({"/healthz", "/login", "/login/oidc", "/login/oidc/callback", "/favicon.ico",
                          "/viewer/manifest.json", "/static/mosaic.css", "/static/portal.js",
                          "/IHEInvokeImageDisplay", "/smart/launch"})
"""No patient data behind these; the viewer's web-app manifest is fetched by browsers without cookies, and the
pages' style sheet and script are the sign-in page's too. The EHR launch doors (``mosaic.web.launch``) are reached
without a session by an EHR's signed launch link, which is the credential: the route checks it, and sends a
request with neither a link nor a session to ``/login?next=…`` itself, as this middleware would."""
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_PATHS = frozenset({"/logout", "/api/break-glass", "/shares"})
"""The pages' forms: they carry the CSRF token as a form field, which the route checks (``check_csrf_form``);
every other unsafe request of a browser session must send it in the header, whatever its body."""
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_FORM_PATTERNS = (re.compile(r"^/portal/patients/\d+/captures$"), re.compile(r"^/shares/\d+/revoke$"))
"""Form routes with a variable part (the portal's upload form): they check the form's token too."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}


def _cookies(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            cookies[name] = value
    return cookies


def is_public(path: str) -> bool:
    """Reached without an account: the sign-in pages, health, the styles; and a share link's pages, whose token
    (and PIN) the share routes check themselves."""
    return path in PUBLIC_PATHS or path.startswith(SHARE_PREFIX)


_SHARE_READS = ("/dicom-web/", "/viewer/", "/static/")


def share_may_reach(path: str, method: str) -> bool:
    """What a share link's session may ask for: the link's pages, and reads of the viewer (which loads the
    studies through DICOMweb) and of DICOMweb itself (scoped to the link's studies). Nothing else: not the portal,
    the API, FHIR, the audit trail, the landing page."""
    if is_public(path):
        return True
    return method in ("GET", "HEAD") and (path == "/viewer" or path.startswith(_SHARE_READS))


def _audited_path(path: str) -> str:
    """A path as audit records keep it: a share link's token is a credential and never written down."""
    return SHARE_PREFIX + "…" if path.startswith(SHARE_PREFIX) else path


def interface_of(path: str) -> str:
    if path.startswith("/dicom-web") or path.startswith("/wado"):
        return "dicomweb"
    if path.startswith("/fhir"):
        return "fhir"
    return "http"


class AuthMiddleware:
    """Handed the identity service (who is asking), the audit trail (what they were answered) and the HTTP
    door's settings; nothing else."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, identity: IdentityService, audit: AuditTrail,
                 trusted_proxies: list[str], development_mode: bool = False,
                 shares: ShareService | None = None) -> None:
        self.app = app
        self.identity = identity
        self.shares = shares
        self.audit = audit
        self.development_mode = development_mode
        self.proxies = TrustedProxies(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path: str = scope.get("path", "")
        address = self.proxies.resolve(scope)
        state = scope.setdefault("state", {})
        try:
            found = self._remembered(headers, address)
            if found is None:
                found = await run_in_threadpool(self._authenticate, headers, address)
            principal, via_cookie = found
        except AuthenticationFailed as exc:
            self.audit.record(AuditEntry(
                action=AuditAction.LOGIN, outcome="denied", actor=_claimed_name(headers), address=address,
                interface=interface_of(path), detail={"reason": str(exc), "path": _audited_path(path)}))
            if isinstance(exc, SignInRefused):  # too many wrong passwords from this client, or no slot to check
                await _send_error(send, exc.status, str(exc), {"retry-after": str(exc.retry_after)})
                return
            if is_public(path):
                principal, via_cookie = ANONYMOUS, False  # a stale cookie must not lock anyone out of /login
            elif _wants_page(scope, headers) and not headers.get("authorization"):
                # a browser whose session ended (signed out elsewhere, expired): to the sign-in page, cookie gone
                await _send_redirect(send, _login_for(scope, path), expire=SESSION_COOKIE)
                return
            else:
                await _send_error(send, 401, str(exc), {"www-authenticate": 'Bearer error="invalid_token"'})
                return
        except Exception as exc:
            reason = out_of_resources(exc)
            if reason is None:
                raise
            # the index is down: who asks cannot be checked now; say so (after the body: no reset mid-upload)
            log.error("HTTP %s %s from %s: cannot authenticate: %s", scope.get("method"), path, address, reason)
            await drain(receive)
            await _send_error(send, 503, f"Mosaic cannot check credentials now: {reason}",
                              {"retry-after": str(RETRY_AFTER_SECONDS)})
            return
        principal = principal.at(address=address, interface=interface_of(path))
        state["principal"] = principal
        if principal.kind == "share" and not share_may_reach(path, str(scope.get("method", ""))):
            await drain(receive)
            await _send_error(send, 403, "a shared link opens only its own pages, the viewer and its studies; "
                                         "sign in for anything else")
            return
        if not principal.authenticated and not is_public(path):
            if _wants_page(scope, headers):
                await _send_redirect(send, _login_for(scope, path))
            else:
                await _send_error(send, 401, "credentials are required: an API token or OpenID Connect bearer "
                                             "token (Authorization: Bearer …), or sign in at /login",
                                  {"www-authenticate": 'Bearer realm="mosaic"'})
            return
        if (via_cookie and scope.get("method") in _UNSAFE and not is_public(path)
                and not ((path in FORM_PATHS or any(pattern.match(path) for pattern in _FORM_PATTERNS))
                         and headers.get("content-type", "").startswith(_FORM_TYPES))
                and not secrets.compare_digest(headers.get(CSRF_HEADER, ""), principal.csrf_token)):
            await _send_error(send, 403, f"a browser session must send its CSRF token in {CSRF_HEADER}")
            return
        status = 500

        async def send_and_watch(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            entry: AuditEntry | None = state.get("audit")
            if entry is not None:
                entry.outcome = entry.outcome or ("success" if status < 400 else "denied" if status in (401, 403)
                                                  else "failure")
                entry.detail.setdefault("status", status)
                self.audit.record(entry)

    def _remembered(self, headers: dict[str, str], address: str) -> tuple[Principal, bool] | None:
        """Who asks, when that needs no thread and no index: the developer in development mode, or a credential
        checked moments ago (a viewer's hundreds of frame requests). None: :meth:`_authenticate` must check.
        Basic credentials from a client that must wait after wrong passwords are refused here, before a thread
        is spent on them."""
        identity = self.identity
        if self.development_mode:
            return identity.development_principal(), False
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and credentials:
            kind = "token" if credentials.startswith(TOKEN_PREFIX) else "jwt"
            principal = identity.remembered(kind, credentials)
            return (principal, False) if principal is not None else None
        if scheme.lower() == "basic" and credentials:
            username, password = _basic(credentials)
            principal = identity.remembered("password", f"{username}\x00{password}")
            if principal is not None:
                return principal, False
            identity.sign_in_allowed(username, address)
            return None
        cookies = _cookies(headers.get("cookie", "")) if not scheme else {}
        session_id = cookies.get(SESSION_COOKIE)
        if session_id:
            principal = identity.remembered("session", session_id)
            return (principal, True) if principal is not None else None
        share_session = cookies.get(SHARE_COOKIE)
        if share_session and self.shares is not None:
            share = self.shares.remembered(share_session)
            return (self.shares.principal(share), False) if share is not None else None
        return None

    def _authenticate(self, headers: dict[str, str], address: str) -> tuple[Principal, bool]:
        identity = self.identity
        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return identity.authenticate_bearer(credentials.strip()), False
        if scheme.lower() == "basic" and credentials.strip():
            username, password = _basic(credentials.strip())
            return identity.check_password(username, password, address=address), False
        if authorization:
            raise AuthenticationFailed(f"authorization scheme {scheme!r} is not Bearer or Basic")
        cookies = _cookies(headers.get("cookie", ""))
        session_id = cookies.get(SESSION_COOKIE)
        if session_id:
            return identity.check_session(session_id), True
        share_session = cookies.get(SHARE_COOKIE)
        if share_session and self.shares is not None:
            share = self.shares.session(share_session)
            if share is None:
                raise AuthenticationFailed("the shared link's session has ended (or the link was withdrawn or has "
                                           "expired): open the link again")
            # not a browser session of an account: it changes nothing (share_may_reach), so it needs no CSRF token
            return self.shares.principal(share), False
        return ANONYMOUS, False


def _basic(credentials: str) -> tuple[str, str]:
    """(user name, password) of ``Authorization: Basic`` credentials."""
    try:
        username, _, password = base64.b64decode(credentials.strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationFailed("the Basic credentials are not base64 of user:password") from None
    return username, password


class TrustedProxies:
    """``http.trusted_proxies``: only a request whose socket peer is one of them may say, in ``Forwarded``
    (RFC 7239) or ``X-Forwarded-For``, whom it forwards for; the client is then the right-most address named
    that is not itself a trusted proxy, and ``proto`` / ``X-Forwarded-Proto`` set the scheme. Any other peer is
    the client, whatever headers it sends (so no one can choose the address audited and throttled)."""

    def __init__(self, entries: list[str]) -> None:
        self.networks = [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries]

    def __contains__(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def resolve(self, scope: Scope) -> str:
        """The client's address; for a trusted proxy's request, ``scope["client"]`` and ``scope["scheme"]`` are
        rewritten to the forwarded client's, so every route (``request.client``, ``request.base_url``) sees it."""
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        if not self.networks or peer not in self:
            return peer
        forwarded: list[bytes] = []
        x_forwarded_for: list[bytes] = []
        x_forwarded_proto: list[bytes] = []
        for name, value in scope.get("headers", []):
            if name == b"forwarded":
                forwarded.append(value)
            elif name == b"x-forwarded-for":
                x_forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                x_forwarded_proto.append(value)
        hops: list[tuple[str, str]] = []  # (address, proto) from the first hop to the last
        if forwarded:
            for element in b",".join(forwarded).decode("latin-1").split(","):
                pairs = dict(_forwarded_pair(pair) for pair in element.split(";") if "=" in pair)
                if "for" in pairs:
                    hops.append((_host_of(pairs["for"]), pairs.get("proto", "")))
        elif x_forwarded_for:
            protos = [item.strip() for item in b",".join(x_forwarded_proto).decode("latin-1").split(",")]
            proto = protos[-1] if protos else ""
            hops = [(_host_of(item), proto) for item in b",".join(x_forwarded_for).decode("latin-1").split(",")
                    if item.strip()]
        if not hops:
            return peer
        chosen = next((hop for hop in reversed(hops) if hop[0] not in self), hops[0])
        address, proto = chosen[0][:64], chosen[1].lower()
        scope["client"] = (address, 0)
        if proto in ("http", "https"):
            scope["scheme"] = proto
        return address


def _forwarded_pair(pair: str) -> tuple[str, str]:
    name, _, value = pair.strip().partition("=")
    return name.strip().lower(), value.strip().strip('"')


def _host_of(node: str) -> str:
    """The address of a forwarded node: ``192.0.2.1:8080`` → 192.0.2.1, ``[2001:db8::1]:443`` → 2001:db8::1."""
    node = node.strip().strip('"')
    if node.startswith("["):
        return node[1:].partition("]")[0]
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node


def _claimed_name(headers: dict[str, str]) -> str:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(credentials.strip()).decode("utf-8").partition(":")[0][:128]
        except (binascii.Error, UnicodeDecodeError):
            return "?"
    return "bearer" if scheme else "session"


async def drain(receive: Receive) -> None:
    """Read the rest of a request's body and drop it, so an answer given before it (an error) reaches a client
    still sending instead of a connection reset (closing a socket with unread data resets it)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(key.encode(), value.encode()) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_redirect(send: Send, location: str, *, expire: str = "") -> None:
    headers = [(b"location", location.encode()), (b"content-length", b"0")]
    if expire:
        headers.append((b"set-cookie", f"{expire}=; Max-Age=0; Path=/; HttpOnly; SameSite=lax".encode()))
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _wants_page(scope: Scope, headers: dict[str, str]) -> bool:
    """A browser navigating to a page (it should be sent to sign in, not shown a JSON 401)."""
    return scope.get("method") == "GET" and "text/html" in headers.get("accept", "")


NOT_PAGES = ("/api/", "/dicom-web", "/wado", "/fhir", "/metrics", "/healthz", "/viewer/")
"""Paths whose answers keep their own formats (JSON, DICOM JSON, FHIR, the viewer's), whoever asks."""


def wants_page(request: Request) -> bool:
    """A browser navigating to one of the pages (or posting one of their forms): its errors and refusals are
    answered with a page (``error.html``), not JSON. API paths never are, whatever the Accept header."""
    if request.url.path.startswith(NOT_PAGES):
        return False
    accept = request.headers.get("accept", "")
    if "text/html" not in accept or accept.lstrip().startswith(("application/json", "application/dicom")):
        return False
    if request.method in ("GET", "HEAD"):
        return True
    return request.method == "POST" and request.headers.get("content-type", "").startswith(_FORM_TYPES)


def _login_for(scope: Scope, path: str) -> str:
    target = path + ("?" + scope["query_string"].decode() if scope.get("query_string") else "")
    return "/login?next=" + quote(target, safe="")


def principal_of(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else ANONYMOUS


def require(request: Request, permission: Permission, *, action: str | None = None) -> Principal:
    """The request's principal if it has ``permission``; else a 403 (audited as denied when ``action``)."""
    principal = principal_of(request)
    try:
        AccessPolicy.require(principal, permission)
    except AccessDenied as exc:
        if action is not None:
            request.state.audit = AuditEntry.of(principal, action, "denied",
                                                detail={"path": request.url.path, "missing": permission.value})
        raise HTTPException(403, str(exc)) from None
    return principal


def check_csrf_form(request: Request, form: Any) -> None:
    """A form posted by a signed-in browser must carry the session's CSRF token."""
    principal = principal_of(request)
    if principal.csrf_token and not secrets.compare_digest(str(form.get("csrf_token", "")), principal.csrf_token):
        raise HTTPException(403, "the form's CSRF token does not match this session; reload the page")
