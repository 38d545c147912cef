"""A small OpenID Connect identity provider on loopback for the single sign-on tests (no tests here): discovery,
authorize, token and JWKS, standing in for Keycloak or Entra ID, which cannot run on this machine. It checks what
a real one checks of Mosaic: the registered client and secret, the redirect URI, and the PKCE verifier against
the challenge. The person who signs in next is whoever the test says (``person``); ``tamper`` spoils the next
answer on purpose.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from mosaic.config import OidcSettings
from tests.helpers import LOCALHOST

CLIENT_ID = "mosaic-web"
CLIENT_SECRET = "s3cret-of-the-client"


class IdentityProvider:
    """Discovery, authorization (the person is already signed in: it answers at once), token and JWKS."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.person: dict[str, Any] = {}
        """The claims of whoever signs in next."""
        self.tamper: dict[str, Any] = {}
        """How the next ID token goes wrong: nonce, key, aud, expires_in, error."""
        self.codes: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, str]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/.well-known/openid-configuration":
                    self.answer(200, {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks.json",
                                      "authorization_endpoint": provider.issuer + "/authorize",
                                      "token_endpoint": provider.issuer + "/token"})
                elif url.path == "/jwks.json":
                    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(provider.key.public_key()))
                    self.answer(200, {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})
                elif url.path == "/authorize":
                    provider.requests.append(query)
                    self.send_response(302)
                    self.send_header("Location", provider.authorize(query))
                    self.end_headers()
                else:
                    self.answer(404, {"error": "not_found"})

            def do_POST(self) -> None:
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                status, body = provider.token(form, self.headers.get("Authorization", ""))
                self.answer(status, body)

            def answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.issuer = f"http://{LOCALHOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def authorize(self, query: dict[str, str]) -> str:
        redirect = query["redirect_uri"]
        if self.tamper.get("error"):
            return f"{redirect}?{urllib.parse.urlencode({'error': 'access_denied', 'state': query['state']})}"
        assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
        assert query["code_challenge_method"] == "S256" and "openid" in query["scope"].split()
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"query": query, "person": dict(self.person), "tamper": dict(self.tamper)}
        return f"{redirect}?{urllib.parse.urlencode({'code': code, 'state': query['state']})}"

    def token(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if authorization != expected:
            return 401, {"error": "invalid_client"}
        grant = self.codes.pop(form.get("code", ""), None)  # a code is good once
        if grant is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        query = grant["query"]
        challenge = base64.urlsafe_b64encode(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
        if challenge.rstrip(b"=").decode() != query["code_challenge"] or form.get("redirect_uri") != \
                query["redirect_uri"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verifier or redirect URI mismatch"}
        tamper, now = grant["tamper"], int(time.time())
        claims = {"iss": self.issuer, "aud": tamper.get("aud", CLIENT_ID), "sub": "sub-" + grant["person"]["name"],
                  "iat": now, "exp": now + tamper.get("expires_in", 300), "nonce": tamper.get("nonce", query["nonce"]),
                  "preferred_username": grant["person"]["name"], **grant["person"].get("claims", {})}
        token = jwt.encode(claims, tamper.get("key", self.key), algorithm="RS256", headers={"kid": "k1"})
        return 200, {"id_token": token, "access_token": "opaque", "token_type": "Bearer", "expires_in": 300}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def settings(self, provider_name: str = "St. Elsewhere sign-in") -> OidcSettings:
        """Mosaic's security.oidc for this provider."""
        # no jwks_url: Mosaic finds the keys through discovery (they are not at <issuer>/.well-known/jwks.json)
        return OidcSettings(issuer=self.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,  # type: ignore[call-arg]
                            provider_name=provider_name)
