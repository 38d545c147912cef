"""Identity: local accounts (argon2id passwords), API tokens, browser sessions and OpenID Connect bearers.

Every credential becomes a :class:`~mosaic.governance.policy.Principal`. Secrets are never stored: API
tokens and session identifiers are kept as their SHA-256, passwords as argon2id hashes. Checked
credentials are trusted for ``security.credential_cache_seconds`` so a viewer's hundreds of frame
requests do not each hit the index (or argon2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
import unicodedata
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select

from mosaic.config import SecuritySettings
from mosaic.core.times import as_utc
from mosaic.governance.policy import ALL, AccessPolicy, Principal
from mosaic.index.database import Database
from mosaic.index.schema import ApiToken, UserAccount, WebSession

log = logging.getLogger("mosaic.identity")

TOKEN_PREFIX = "mosaic_"
_hasher = PasswordHasher()


class AuthenticationFailed(Exception):
    """Credentials were given but are wrong, expired or revoked; the message says which (never the secret)."""


class AccountError(Exception):
    """An account operation cannot be done (unknown user, unknown role, name taken…)."""


@dataclass(frozen=True)
class Account:
    username: str
    display_name: str
    roles: list[str]
    facilities: list[str]
    departments: list[str]
    active: bool
    has_password: bool
    source: str = "local"
    """local, or oidc (kept from the identity provider's claims at each single sign-on)."""


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(text: str) -> frozenset[str]:
    return frozenset(item.strip() for item in text.split(",") if item.strip())


class SignInRefused(AuthenticationFailed):
    """A password sign-in refused before its password was checked: too many failures from its client (HTTP 429),
    or no free slot to check it (503). ``retry_after``: whole seconds until a try can succeed."""

    def __init__(self, message: str, *, retry_after: float, status: int = 429) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))
        self.status = status


class _SignInThrottle:
    """Wrong passwords, counted per node in memory (a restart forgets them). Each (user name, client address)
    pair has FREE_FAILURES tries, then waits ``delay``, twice, four times… that (at most ``max_delay``) before
    each next one; and a client address may fail ``per_minute`` times a minute across user names. So a
    stranger's guesses slow the stranger down, never the real user signing in from elsewhere; only an
    administrator disables an account (``active``)."""

    FREE_FAILURES = 5
    WINDOW = 60.0
    SIZE = 100_000

    def __init__(self, delay: float, max_delay: float, per_minute: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.delay, self.max_delay, self.per_minute, self.clock = delay, max_delay, per_minute, clock
        self._pairs: dict[tuple[str, str], tuple[int, float]] = {}
        """(user name, address) → (failures in a row, waiting until)."""
        self._clients: dict[str, deque[float]] = {}
        """address → moments of its failures within the last WINDOW."""
        self._lock = threading.Lock()

    def wait_after(self, failures: int) -> float:
        """Seconds a pair waits after its ``failures``-th wrong password in a row."""
        if failures < self.FREE_FAILURES:
            return 0.0
        return min(self.delay * 2.0 ** min(failures - self.FREE_FAILURES, 64), self.max_delay)

    def check(self, username: str, address: str) -> None:
        """Raise :class:`SignInRefused` when this client, or this user name from this client, must wait."""
        now = self.clock()
        client = address or "this client"
        with self._lock:
            failures = self._recent(address, now)
            if len(failures) >= self.per_minute:
                wait = failures[0] + self.WINDOW - now
                raise SignInRefused(f"too many failed sign-ins from {client}: try again in {math.ceil(wait)} s",
                                    retry_after=wait)
            _count, until = self._pairs.get((username, address), (0, 0.0))
            if until > now:
                raise SignInRefused(f"too many wrong passwords for {username!r} from {client}: try again in "
                                    f"{math.ceil(until - now)} s (other addresses are not held back), or ask an "
                                    "administrator (`mosaic user passwd`)", retry_after=until - now)

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            self._recent(address, now).append(now)
            count, until = self._pairs.get((username, address), (0, 0.0))
            if now >= until + self.max_delay:
                count = 0  # quiet for a while since its last wait: a fresh start
            self._pairs[(username, address)] = (count + 1, now + self.wait_after(count + 1))
            if len(self._pairs) > self.SIZE or len(self._clients) > self.SIZE:
                self._prune(now)

    def succeeded(self, username: str, address: str) -> None:
        with self._lock:
            self._pairs.pop((username, address), None)

    def forget(self, username: str) -> None:
        """An administrator set a new password: every client may try it at once."""
        with self._lock:
            for key in [key for key in self._pairs if key[0] == username]:
                del self._pairs[key]

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._clients.setdefault(address, deque())
        while failures and now - failures[0] >= self.WINDOW:
            failures.popleft()
        return failures

    def _prune(self, now: float) -> None:
        """Bounded memory: drop what no longer holds anyone back, then (a spray of names) the oldest half."""
        self._clients = {address: moments for address, moments in self._clients.items()
                         if moments and now - moments[-1] < self.WINDOW}
        self._pairs = {key: pair for key, pair in self._pairs.items() if now < pair[1] + self.max_delay}
        if len(self._pairs) > self.SIZE:
            kept = sorted(self._pairs.items(), key=lambda item: item[1][1])[len(self._pairs) // 2:]
            self._pairs = dict(kept)
        if len(self._clients) > self.SIZE:
            self._clients = dict(sorted(self._clients.items(), key=lambda item: item[1][-1])[self.SIZE // 2:])


class _PasswordGate:
    """At most ``slots`` argon2id checks at a time on this node, so a flood of sign-ins cannot take every core
    from the archive; a check that finds no free slot within ``wait`` seconds is refused, not queued."""

    def __init__(self, slots: int, wait: float = 1.0) -> None:
        self.slots = slots
        self.wait = wait
        self._semaphore = threading.BoundedSemaphore(slots)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if not self._semaphore.acquire(timeout=self.wait):
            raise SignInRefused(f"the server is busy checking other sign-ins ({self.slots} at a time): try again "
                                "in a moment", retry_after=1, status=503)
        try:
            yield
        finally:
            self._semaphore.release()


class _TimedCache:
    """A small thread-safe cache of checked credentials, each trusted for ``ttl`` seconds."""

    def __init__(self, ttl: float, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self._items: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        if self.ttl <= 0:
            return None
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] < time.monotonic():
                return None
            return item[1]

    def put(self, key: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._items) >= self.size:
                self._items.clear()
            self._items[key] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


class IdentityService:
    """Accounts, tokens and sessions in the index; OpenID Connect bearers checked against the issuer's keys."""

    def __init__(self, database: Database, settings: SecuritySettings, policy: AccessPolicy) -> None:
        self.database = database
        self.settings = settings
        self.policy = policy
        self._cache = _TimedCache(settings.credential_cache_seconds)
        self._throttle = _SignInThrottle(settings.sign_in_delay_seconds, settings.sign_in_max_delay_seconds,
                                         settings.failed_sign_ins_per_client_minute)
        self._gate = _PasswordGate(settings.concurrent_password_checks or max(1, (os.cpu_count() or 2) // 2))
        self._jwks: Any = None

    # --- accounts ---------------------------------------------------------------------------

    def ensure_administrator(self) -> str | None:
        """At the first start (no account at all), create ``admin``; returns its password to say once."""
        with self.database.session(write=True) as session:
            if session.scalar(select(func.count()).select_from(UserAccount)):
                return None
            password = self.settings.initial_admin_password or secrets.token_urlsafe(12)
            now = datetime.now(UTC)
            session.add(UserAccount(username="admin", display_name="Administrator",
                                    password_hash=_hasher.hash(password), roles="administrator",
                                    facilities=ALL, departments=ALL, active=True, created_at=now, updated_at=now))
        log.warning("created the administrator account 'admin' (change its password with `mosaic user passwd "
                    "admin`)")
        return password

    def add_user(self, username: str, *, roles: list[str], password: str | None = None, display_name: str = "",
                 facilities: list[str] | None = None, departments: list[str] | None = None) -> Account:
        username = username.strip()
        if not username or len(username) > 128 or "," in username:
            raise AccountError(f"user name {username!r} must be 1-128 characters without commas")
        unknown = self.policy.unknown_roles(frozenset(roles))
        if unknown:
            raise AccountError(f"unknown role(s) {', '.join(unknown)}; known: {', '.join(sorted(self.policy.roles))}")
        now = datetime.now(UTC)
        with self.database.session(write=True) as session:
            if session.scalar(select(UserAccount.pk).where(UserAccount.username == username)) is not None:
                raise AccountError(f"user {username!r} already exists")
            account = UserAccount(
                username=username, display_name=display_name[:256], password_hash=_password_hash(password),
                roles=",".join(roles), facilities=",".join(facilities or [ALL]),
                departments=",".join(departments or [ALL]), active=True, created_at=now, updated_at=now)
            session.add(account)
        return self._account(account)

    def update_user(self, username: str, *, roles: list[str] | None = None, facilities: list[str] | None = None,
                    departments: list[str] | None = None, active: bool | None = None,
                    password: str | None = None) -> Account:
        """Every given change, or (on any error) none: checked first, then applied in one transaction."""
        if roles is not None and (unknown := self.policy.unknown_roles(frozenset(roles))):
            raise AccountError(f"unknown role(s) {', '.join(unknown)}")
        password_hash = _password_hash(password) if password is not None else None
        with self.database.session(write=True) as session:
            account = self._find(session, username)
            if password_hash is not None:
                account.password_hash = password_hash
                session.execute(delete(WebSession).where(WebSession.user_pk == account.pk))
            if roles is not None:
                account.roles = ",".join(roles)
            if facilities is not None:
                account.facilities = ",".join(facilities)
            if departments is not None:
                account.departments = ",".join(departments)
            if active is not None:
                account.active = active
            account.updated_at = datetime.now(UTC)
        self._cache.clear()
        return self._account(account)

    def set_password(self, username: str, password: str) -> None:
        """A new password (at least 8 characters); the account's browser sessions end."""
        self.update_user(username, password=password)
        self._throttle.forget(username)

    def users(self) -> list[Account]:
        with self.database.session() as session:
            return [self._account(row) for row in session.scalars(select(UserAccount).order_by(UserAccount.username))]

    @staticmethod
    def _find(session: Any, username: str) -> UserAccount:
        account = session.scalar(select(UserAccount).where(UserAccount.username == username))
        if account is None:
            raise AccountError(f"no user named {username!r}")
        return account  # type: ignore[no-any-return]

    @staticmethod
    def _account(row: UserAccount) -> Account:
        return Account(row.username, row.display_name, sorted(_split(row.roles)), sorted(_split(row.facilities)),
                       sorted(_split(row.departments)), row.active, bool(row.password_hash), row.source)

    def principal_for(self, username: str, *, kind: str = "user") -> Principal | None:
        """The account ``username`` as it stands now, acting on its own behalf (a FHIR Subscription's notifications
        are sent with its owner's current rights); None when it is gone or inactive."""
        with self.database.session() as session:
            row = session.scalar(select(UserAccount).where(UserAccount.username == username))
            if row is None or not row.active:
                return None
            return self._principal(row, kind)

    def account_now(self, username: str) -> Principal | bool | None:
        """The local account ``username`` as it stands now (a Principal), False when it is disabled, None when
        there is no such account (a single sign-on user has none): what a share link's creator check asks."""
        with self.database.session() as session:
            row = session.scalar(select(UserAccount).where(UserAccount.username == username))
            if row is None:
                return None
            return self._principal(row, "user") if row.active else False

    def _principal(self, row: UserAccount, kind: str, csrf_token: str = "") -> Principal:
        roles = _split(row.roles)
        return Principal(name=row.username, kind=kind, roles=roles, permissions=self.policy.permissions_of(roles),
                         facilities=_split(row.facilities), departments=_split(row.departments), csrf_token=csrf_token)

    # --- passwords --------------------------------------------------------------------------

    def check_password(self, username: str, password: str, *, address: str = "") -> Principal:
        """The account's principal when the password is right (raises :class:`AuthenticationFailed`, or
        :class:`SignInRefused` when ``address``, the client, must wait after wrong passwords)."""
        cache_key = "password:" + _sha256(f"{username}\x00{password}")  # what remembered() looks up
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        self._throttle.check(username, address)
        with self.database.session() as session:
            row = session.scalar(select(UserAccount).where(UserAccount.username == username))
        with self._gate.slot():
            if row is None or not row.password_hash:
                _equalise_timing(password)
                right = False
            else:
                try:
                    right = _hasher.verify(row.password_hash, password)
                except (VerificationError, InvalidHashError):
                    right = False
        if row is None or not right:
            self._throttle.failed(username, address)
            raise AuthenticationFailed(f"unknown user or wrong password for {username!r}")
        self._throttle.succeeded(username, address)
        if not row.active:
            raise AuthenticationFailed(f"account {username!r} is disabled")
        principal = self._principal(row, "user")
        self._cache.put(cache_key, principal)
        return principal

    def sign_in_allowed(self, username: str, address: str) -> None:
        """Raise :class:`SignInRefused` when a password sign-in of ``username`` from ``address`` must wait: asked
        before a thread is spent on it (cheap, in memory)."""
        self._throttle.check(username, address)

    # --- API tokens -------------------------------------------------------------------------

    def issue_token(self, username: str, *, name: str = "", days: float | None = None) -> str:
        """A new API token acting as ``username``; the secret is returned once and never stored."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.database.session(write=True) as session:
            account = self._find(session, username)
            session.add(ApiToken(user_pk=account.pk, name=name, token_sha256=_sha256(secret), created_at=now,
                                 expires_at=now + timedelta(days=days) if days else None))
        return secret

    def revoke_tokens(self, username: str) -> int:
        now = datetime.now(UTC)
        with self.database.session(write=True) as session:
            account = self._find(session, username)
            tokens = session.scalars(select(ApiToken).where(ApiToken.user_pk == account.pk,
                                                            ApiToken.revoked_at.is_(None))).all()
            for token in tokens:
                token.revoked_at = now
        self._cache.clear()
        return len(tokens)

    def check_token(self, secret: str) -> Principal:
        digest = _sha256(secret)
        cached = self._cache.get("token:" + digest)
        if cached is not None:
            return cached
        with self.database.session() as session:
            row = session.execute(select(ApiToken, UserAccount).join(UserAccount, ApiToken.user_pk == UserAccount.pk)
                                  .where(ApiToken.token_sha256 == digest)).first()
        if row is None:
            raise AuthenticationFailed("unknown API token")
        token, account = row
        if token.revoked_at is not None:
            raise AuthenticationFailed(f"API token of {account.username!r} was revoked")
        if token.expires_at is not None and as_utc(token.expires_at) < datetime.now(UTC):
            raise AuthenticationFailed(f"API token of {account.username!r} has expired")
        if not account.active:
            raise AuthenticationFailed(f"account {account.username!r} is disabled")
        principal = self._principal(account, "token")
        self._cache.put("token:" + digest, principal)
        return principal

    # --- browser sessions -------------------------------------------------------------------

    def open_session(self, username: str) -> tuple[str, str]:
        """(session identifier for the cookie, CSRF token) for a user who just signed in."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        now = datetime.now(UTC)
        with self.database.session(write=True) as session:
            account = self._find(session, username)
            session.execute(delete(WebSession).where(WebSession.expires_at < now))
            session.add(WebSession(session_sha256=_sha256(session_id), user_pk=account.pk, csrf_token=csrf,
                                   created_at=now, expires_at=now + timedelta(hours=self.settings.session_hours)))
        return session_id, csrf

    def close_session(self, session_id: str) -> None:
        with self.database.session(write=True) as session:
            session.execute(delete(WebSession).where(WebSession.session_sha256 == _sha256(session_id)))
        self._cache.forget("session:" + _sha256(session_id))  # only this session: everyone else stays cached

    def check_session(self, session_id: str) -> Principal:
        digest = _sha256(session_id)
        cached = self._cache.get("session:" + digest)
        if cached is not None:
            return cached
        with self.database.session() as session:
            row = session.execute(select(WebSession, UserAccount)
                                  .join(UserAccount, WebSession.user_pk == UserAccount.pk)
                                  .where(WebSession.session_sha256 == digest)).first()
        if row is None:
            raise AuthenticationFailed("the session has ended; sign in again")
        web_session, account = row
        if as_utc(web_session.expires_at) < datetime.now(UTC):
            raise AuthenticationFailed("the session has expired; sign in again")
        if not account.active:
            raise AuthenticationFailed(f"account {account.username!r} is disabled")
        principal = self._principal(account, "oidc" if account.source == "oidc" else "user",
                                    csrf_token=web_session.csrf_token)
        self._cache.put("session:" + digest, principal)
        return principal

    # --- OpenID Connect ---------------------------------------------------------------------

    def check_jwt(self, token: str) -> Principal:
        """A bearer JWT from the configured issuer: signature against its JWKS, issuer, audience, expiry."""
        cached = self._cache.get("jwt:" + _sha256(token))
        if cached is not None:
            return cached
        claims = self._verified_claims(token, self.settings.oidc.audience, "bearer token")
        principal = self._claims_principal(claims, "bearer token")
        with self.database.session() as session:
            account = _provider_account(session, principal.name)  # the same rules as single sign-on
            if account is not None:
                principal = replace(principal, name=account.username)
        self._cache.put("jwt:" + _sha256(token), principal)
        return principal

    def check_id_token(self, token: str, nonce: str) -> tuple[Principal, str]:
        """An ID token from single sign-on (OpenID Connect Core 3.1.3.7): signed by the issuer, for Mosaic's
        client id, not expired, carrying the nonce of this sign-in. (principal, display name)."""
        oidc = self.settings.oidc
        if not oidc.client_id:
            raise AuthenticationFailed("single sign-on is not configured (security.oidc.client_id)")
        claims = self._verified_claims(token, oidc.client_id, "ID token", require=("exp", "iss", "aud", "nonce"))
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise AuthenticationFailed("the ID token was not issued for this sign-in (nonce mismatch)")
        return self._claims_principal(claims, "ID token"), str(claims.get("name") or "")

    def _verified_claims(self, token: str, audience: str, what: str,
                         require: tuple[str, ...] = ("exp", "iss", "aud")) -> dict[str, Any]:
        import jwt

        oidc = self.settings.oidc
        if oidc.issuer is None:
            raise AuthenticationFailed("OpenID Connect is not configured (security.oidc.issuer)")
        if self._jwks is None:
            self._jwks = jwt.PyJWKClient(self._jwks_url(), cache_keys=True, lifespan=300)
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=oidc.algorithms, audience=audience,
                                                issuer=oidc.issuer, leeway=oidc.leeway_seconds,
                                                options={"require": list(require)})
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed(f"the {what} has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationFailed(f"the {what} is not for audience {audience!r}") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationFailed(f"the {what} was not issued by {oidc.issuer}") from None
        except jwt.PyJWKClientError as exc:
            raise AuthenticationFailed(f"the {what}'s signing key is not the issuer's: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise AuthenticationFailed(f"the {what} is invalid: {exc}") from None
        return claims

    def _jwks_url(self) -> str:
        """``security.oidc.jwks_url``, else the ``jwks_uri`` of the issuer's discovery document (Keycloak, Entra ID
        and others keep their keys elsewhere than <issuer>/.well-known/jwks.json, the last resort)."""
        oidc = self.settings.oidc
        if oidc.jwks_url:
            return oidc.jwks_url
        base = (oidc.issuer or "").rstrip("/")
        try:
            with urllib.request.urlopen(base + "/.well-known/openid-configuration", timeout=10) as response:
                return str(json.loads(response.read())["jwks_uri"])  # the configured issuer
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("OpenID Connect discovery at %s failed (%s); trying %s/.well-known/jwks.json", base, exc,
                        base)
            return base + "/.well-known/jwks.json"

    def _claims_principal(self, claims: dict[str, Any], what: str) -> Principal:
        oidc = self.settings.oidc
        name = provider_username(str(claims.get(oidc.username_claim) or claims.get("sub") or ""))
        if not name or len(name) > 128:
            raise AuthenticationFailed(f"the {what} names no user (or one longer than 128 characters)")
        roles = frozenset(_claim_list(claims.get(oidc.roles_claim)))
        facilities = _claim_list(claims.get(oidc.facilities_claim)) if oidc.facilities_claim in claims else [ALL]
        departments = _claim_list(claims.get(oidc.departments_claim)) if oidc.departments_claim in claims else [ALL]
        return Principal(name=name, kind="oidc", roles=roles, permissions=self.policy.permissions_of(roles),
                         facilities=frozenset(facilities), departments=frozenset(departments))

    def single_sign_on(self, principal: Principal, display_name: str = "") -> Principal:
        """Keep the account of a person who signed in at the provider: created at the first sign-in, its roles and
        scope taken from the claims at every sign-in (the provider decides them). A local account of the same
        name (in any case) is never taken over, and an administrator can still disable the person here. The
        principal to open the session for: named as the account is (one created before user names were
        normalised keeps its spelling)."""
        now = datetime.now(UTC)
        roles = sorted(principal.roles - set(self.policy.unknown_roles(principal.roles)))
        with self.database.session(write=True) as session:
            account = _provider_account(session, principal.name)
            if account is None:
                session.add(UserAccount(username=principal.name, display_name=display_name[:256],
                                        password_hash="", roles=",".join(roles),
                                        facilities=",".join(sorted(principal.facilities)),
                                        departments=",".join(sorted(principal.departments)), active=True,
                                        source="oidc", created_at=now, updated_at=now))
                return principal
            account.roles, account.updated_at = ",".join(roles), now
            account.facilities = ",".join(sorted(principal.facilities))
            account.departments = ",".join(sorted(principal.departments))
            account.display_name = display_name[:256] or account.display_name
            username = account.username
        self._cache.clear()
        return replace(principal, name=username)

    # --- one entry point for the HTTP door --------------------------------------------------

    def remembered(self, kind: str, secret: str) -> Principal | None:
        """The principal of a credential checked within the cache's time, without touching the index or
        argon2 (``kind``: token, session, jwt or password; a password's secret is ``user\x00password``)."""
        return self._cache.get(f"{kind}:{_sha256(secret)}")

    def authenticate_bearer(self, token: str) -> Principal:
        """An ``Authorization: Bearer`` credential: Mosaic API token, or a JWT from the OIDC issuer."""
        if token.startswith(TOKEN_PREFIX):
            return self.check_token(token)
        if token.count(".") == 2:
            return self.check_jwt(token)
        raise AuthenticationFailed("the bearer token is neither a Mosaic API token nor a JWT")

    def development_principal(self) -> Principal:
        roles = frozenset({"administrator"})
        return Principal(name="developer", kind="user", roles=roles, permissions=self.policy.permissions_of(roles))


def _password_hash(password: str | None) -> str:
    """The argon2id hash of a new password (at least 8 characters); "" for an account without one."""
    if password is None or password == "":
        return ""
    if not isinstance(password, str) or len(password) < 8:
        raise AccountError("a password needs at least 8 characters")
    return _hasher.hash(password)


def provider_username(name: str) -> str:
    """The identity provider's user name as Mosaic keeps it: NFKC, without surrounding spaces, lower case, so
    "CLIN.A", "clin.a " and its full-width spelling are one person, not three accounts."""
    return unicodedata.normalize("NFKC", name).strip().lower()


def _provider_account(session: Any, name: str) -> UserAccount | None:
    """The account a person of the identity provider (``name`` already :func:`provider_username`) signs in as
    (None: not yet created). Matched without regard to case or spaces, so an account created before names were
    normalised is still the person's (the oldest, if several). The provider may not speak for a local Mosaic
    account of the same name in any case, nor for one an administrator disabled here: both refused, for single
    sign-on and bearer JWTs alike."""
    account: UserAccount | None = session.scalar(select(UserAccount).where(UserAccount.username == name))
    if account is None:
        folded = func.lower(func.trim(UserAccount.username))  # ASCII case only on SQLite; checked again below
        candidates = [row for row in session.scalars(select(UserAccount).where(folded == name)
                                                     .order_by(UserAccount.pk))
                      if provider_username(row.username) == name]
        local = [row for row in candidates if row.source != "oidc"]
        account = local[0] if local else candidates[0] if candidates else None
        if len(candidates) > 1:
            log.warning("accounts %s are one person of the identity provider (%r): %r is used; disable the others",
                        ", ".join(repr(row.username) for row in candidates), name, account and account.username)
    if account is None:
        return None
    if account.source != "oidc":
        raise AuthenticationFailed(f"{account.username!r} is a local Mosaic account: it signs in with its "
                                   "password, not through the identity provider")
    if not account.active:
        raise AuthenticationFailed(f"account {account.username!r} is disabled in Mosaic")
    return account


def _claim_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [item for item in value.replace(",", " ").split() if item]
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    return [str(value)]


_DUMMY_HASH = _hasher.hash("mosaic-timing-equaliser")


def _equalise_timing(password: str) -> None:
    """Spend what a real check costs, so an unknown user name is not told apart by the answer's speed."""
    with contextlib.suppress(VerificationError):
        _hasher.verify(_DUMMY_HASH, password + "\x00")
