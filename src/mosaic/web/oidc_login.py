"""Single sign-on for the web pages and the viewer: OpenID Connect authorization code flow with PKCE.

``GET /login/oidc?next=…`` sends the browser to the provider with a fresh ``state``, ``nonce`` and PKCE
challenge (RFC 7636, S256), remembered in a short-lived HttpOnly cookie; ``GET /login/oidc/callback`` checks
the state, exchanges the code (with the verifier, and the client secret when there is one) at the token
endpoint, checks the ID token (issuer's signature, Mosaic's client id, expiry, this sign-in's nonce), keeps the
person's account up to date with the claims, and opens a browser session like a password sign-in does.
Every outcome is audited as a sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from mosaic.governance.audit import AuditAction, AuditEntry
from mosaic.governance.identity import AuthenticationFailed
from mosaic.governance.policy import ANONYMOUS
from mosaic.http.auth import SESSION_COOKIE, principal_of
from mosaic.http.origin import client_origin
from mosaic.web.pages import page

if TYPE_CHECKING:
    from mosaic.config import OidcSettings, SecuritySettings
    from mosaic.governance.identity import IdentityService

FLOW_COOKIE = "mosaic_oidc"
FLOW_SECONDS = 600
CALLBACK = "/login/oidc/callback"


class _Provider:
    """The provider's endpoints: configured, or read once from its discovery document."""

    def __init__(self, oidc: OidcSettings) -> None:
        self.oidc = oidc
        self._endpoints: tuple[str, str] | None = None
        self._lock = threading.Lock()

    def endpoints(self) -> tuple[str, str]:
        """(authorization endpoint, token endpoint)."""
        with self._lock:
            if self._endpoints is None:
                authorization, token = self.oidc.authorization_endpoint, self.oidc.token_endpoint
                if not (authorization and token):
                    assert self.oidc.issuer is not None
                    discovery = self.oidc.issuer.rstrip("/") + "/.well-known/openid-configuration"
                    document = _get_json(discovery)
                    authorization = authorization or str(document["authorization_endpoint"])
                    token = token or str(document["token_endpoint"])
                self._endpoints = (authorization, token)
            return self._endpoints


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=15) as response:  # the configured issuer
        return dict(json.loads(response.read()))


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _callback_url(request: Request) -> str:
    """Where the identity provider sends the browser back: never built from a forged Host header."""
    return client_origin(request) + CALLBACK


def create_oidc_router(identity: IdentityService, security: SecuritySettings, https: bool,
                       safe_next: Callable[[str], str]) -> APIRouter:
    router = APIRouter()
    oidc = security.oidc
    provider = _Provider(oidc)
    secure = security.secure_cookies or https

    def refused(request: Request, reason: str, claimed: str = "") -> Response:
        principal = principal_of(request)
        request.state.audit = AuditEntry(action=AuditAction.LOGIN, outcome="denied", actor=claimed[:128] or "(sso)",
                                         actor_kind="user", address=principal.address, interface="http",
                                         detail={"via": "oidc", "reason": reason})
        response = page(request, ANONYMOUS, "sign_in_failed.html", status_code=401, title="Sign-in failed",
                        heading="Sign-in failed", message=f"{reason[:1].upper()}{reason[1:]}.")
        response.delete_cookie(FLOW_COOKIE, path="/login/oidc")
        return response

    @router.get("/login/oidc")
    def start(request: Request, next: str = "/") -> Response:
        try:
            authorization, _token = provider.endpoints()
        except (OSError, ValueError, KeyError) as exc:
            return page(request, ANONYMOUS, "sign_in_failed.html", status_code=502, title="Sign in",
                        heading="Single sign-on is unavailable",
                        message=f"The identity provider cannot be reached: {exc}.")
        flow = {"state": secrets.token_urlsafe(24), "nonce": secrets.token_urlsafe(24),
                "verifier": secrets.token_urlsafe(48), "next": safe_next(next)}
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": oidc.client_id, "redirect_uri": _callback_url(request),
            "scope": " ".join(oidc.scopes), "state": flow["state"], "nonce": flow["nonce"],
            "code_challenge": _challenge(flow["verifier"]), "code_challenge_method": "S256"})
        response = RedirectResponse(f"{authorization}{'&' if '?' in authorization else '?'}{query}", status_code=303)
        response.set_cookie(FLOW_COOKIE, base64.urlsafe_b64encode(json.dumps(flow).encode()).decode(),
                            max_age=FLOW_SECONDS, httponly=True, samesite="lax", secure=secure, path="/login/oidc")
        return response

    @router.get(CALLBACK)
    async def callback(request: Request, code: str = "", state: str = "", error: str = "",
                       error_description: str = "") -> Response:
        try:
            flow = json.loads(base64.urlsafe_b64decode(request.cookies.get(FLOW_COOKIE, "")))
        except ValueError:
            flow = {}
        if error:
            return refused(request, f"the identity provider refused: {error} {error_description}".strip())
        if not flow or not state or not secrets.compare_digest(str(flow.get("state", "")), state):
            return refused(request, "this sign-in was not started here or has expired (state mismatch)")
        if not code:
            return refused(request, "the identity provider sent no authorization code")
        try:
            id_token = await run_in_threadpool(exchange, request, code, str(flow["verifier"]))
            claimed, display_name = await run_in_threadpool(identity.check_id_token, id_token,
                                                            str(flow["nonce"]))
            user = await run_in_threadpool(identity.single_sign_on, claimed, display_name)
        except AuthenticationFailed as exc:
            return refused(request, str(exc))
        session_id, _csrf = await run_in_threadpool(identity.open_session, user.name)
        address = principal_of(request).address
        request.state.audit = AuditEntry.of(user.at(address=address, interface="http"), AuditAction.LOGIN,
                                            "success", detail={"via": "oidc"})
        response = RedirectResponse(safe_next(str(flow.get("next", "/"))), status_code=303)
        response.set_cookie(SESSION_COOKIE, session_id, max_age=int(security.session_hours * 3600),
                            httponly=True, samesite="lax", secure=secure, path="/")
        response.delete_cookie(FLOW_COOKIE, path="/login/oidc")
        return response

    def exchange(request: Request, code: str, verifier: str) -> str:
        """The authorization code for the ID token, at the token endpoint."""
        _authorization, token_endpoint = provider.endpoints()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": _callback_url(request),
                "client_id": oidc.client_id or "", "code_verifier": verifier}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if oidc.client_secret:
            pair = f"{urllib.parse.quote(oidc.client_id or '')}:{urllib.parse.quote(oidc.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        call = urllib.request.Request(token_endpoint, data=urllib.parse.urlencode(form).encode(), headers=headers,
                                      method="POST")
        try:
            with urllib.request.urlopen(call, timeout=15) as response:  # the configured provider
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise AuthenticationFailed(f"the token endpoint refused the code ({exc.code}): {detail}") from None
        except (OSError, ValueError) as exc:
            raise AuthenticationFailed(f"the token endpoint cannot be reached: {exc}") from None
        token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(token, str):
            raise AuthenticationFailed("the token endpoint answered without an ID token")
        return token

    return router
