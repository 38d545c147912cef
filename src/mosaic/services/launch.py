"""EHR launches of the portal and viewer: what a launch names (studies by UID or accession, a patient by its CX
identifier), looked up within the caller's scope, and the signed launch links EHRs send.

**Lookups** (:class:`LaunchService`): every answer is within the caller's
:class:`~mosaic.index.query.Scope`; an unknown and an out-of-scope study or patient are both simply not found.

**Signed launch links** (:class:`LaunchTokens`). An EHR configured in ``launch.ehrs`` builds::

    /IHEInvokeImageDisplay?requestType=STUDY&studyUID=1.2.3&user=jdoe&expires=1767225600&nonce=<random>&signature=<hex>

``signature`` is the lower-case hex HMAC-SHA256, keyed with the EHR's shared secret (the first line of its
``secret_file``, as UTF-8 bytes), of the link's *canonical query*: every parameter but ``signature``, as
``name=value`` with name and value percent-encoded as RFC 3986 unreserved-only (Python
``urllib.parse.quote(text, safe="-_.~")``: space is ``%20``, ``^`` is ``%5E``, ``&`` is ``%26``), sorted by name
then value, joined with ``&`` (:func:`canonical_query`, :func:`sign`). Required: ``user`` (a Mosaic account the
EHR may launch as), ``expires`` (Unix seconds, UTC), ``nonce`` (16 to 128 of ``A-Z a-z 0-9 - _``, new for each
link); optional ``ehr`` (the EHR's name: without it each configured secret is tried).

A link is refused (:class:`LaunchRefused`, each reason said) when its signature matches no secret (compared in
constant time), it has expired (``launch.clock_skew_seconds`` allowed), its ``expires`` is further ahead than
the EHR's ``max_lifetime_seconds`` (plus the skew), its nonce was used before, or the account is not one the EHR
may launch as, unknown or disabled. Refused links count, per client address, like wrong passwords at ``/login``
(the same throttle and the same ``security.sign_in_*`` settings, counted separately): a client that keeps
sending them is refused (429) before its links are checked.

**Single use is kept in this process's memory**: each used nonce is remembered until its link expires (plus the
skew), so a link is refused a second time by this process, and a restart forgets nothing that could still be
used only if the restart takes longer than the links live. Several HTTP processes or nodes behind one address
(a PostgreSQL deployment) do not share this memory: there, a used nonce needs a table all of them write to
(``launch_nonce``: EHR, nonce, expires; a unique key), which this module does not have yet.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from sqlalchemy import Select, func, select

from mosaic.config import LaunchSettings, SecuritySettings, StartupError
from mosaic.governance.identity import SignInRefused, _SignInThrottle
from mosaic.governance.policy import Permission
from mosaic.index.database import Database
from mosaic.index.query import Scope
from mosaic.index.schema import Patient, Study
from mosaic.services.patients import resolve

if TYPE_CHECKING:
    from mosaic.governance.identity import IdentityService
    from mosaic.governance.policy import Principal

TOKEN_PARAMETERS = frozenset({"user", "expires", "nonce", "signature", "ehr"})
"""The parameters of a signed launch (never carried into the page it opens)."""
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_MIN_SECRET_BYTES = 32
_THROTTLE_NAME = "(signed launch)"


# --- lookups ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundStudy:
    StudyInstanceUID: str
    StudyDate: str
    AccessionNumber: str
    patient_pk: int
    PatientID: str
    IssuerOfPatientID: str


@dataclass(frozen=True)
class FoundPatient:
    pk: int
    PatientID: str
    IssuerOfPatientID: str


class LaunchService:
    """What a launch names, as the caller may see it."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def studies(self, uids: Sequence[str], *, scope: Scope) -> list[FoundStudy]:
        """The studies of ``uids`` the caller may see, in the order asked (the others left out alike)."""
        with self.database.session() as session:
            rows = {row.StudyInstanceUID: row for row in session.execute(
                self._select().where(Study.StudyInstanceUID.in_(list(uids)), scope.study_condition()))}
        return [_found(rows[uid]) for uid in dict.fromkeys(uids) if uid in rows]

    def studies_by_accession(self, accessions: Sequence[str], *, scope: Scope,
                             patient: FoundPatient | None = None) -> list[FoundStudy]:
        """The caller's studies with one of these accession numbers (of ``patient`` when given), newest first."""
        statement = self._select().where(Study.AccessionNumber.in_(list(accessions)), scope.study_condition())
        if patient is not None:
            statement = statement.where(Study.patient_pk == patient.pk)
        with self.database.session() as session:
            rows = session.execute(statement.order_by(Study.StudyDate.desc(), Study.StudyTime.desc(),
                                                      Study.pk.desc()).limit(100))
            return [_found(row) for row in rows]

    def patient(self, patient_id: str, issuers: Sequence[str], *, scope: Scope) -> FoundPatient | None:
        """The patient with this ID under the first of ``issuers`` that names one (a merged-away identity finds
        its survivor), when the caller may see at least one of its studies (anyone unrestricted: any patient)."""
        with self.database.session() as session:
            for issuer in issuers:
                row = resolve(session, patient_id, issuer)
                if row is None:
                    continue
                if not scope.unrestricted:
                    visible = session.scalar(select(func.count()).select_from(Study).where(
                        Study.patient_pk == row.pk, scope.study_condition())) or 0
                    if not visible:
                        return None
                return FoundPatient(row.pk, row.PatientID, row.IssuerOfPatientID)
        return None

    def patient_by_pk(self, patient_pk: int, *, scope: Scope) -> FoundPatient | None:
        with self.database.session() as session:
            row = session.get(Patient, patient_pk)
            if row is None:
                return None
            if not scope.unrestricted and not session.scalar(select(func.count()).select_from(Study).where(
                    Study.patient_pk == row.pk, scope.study_condition())):
                return None
            return FoundPatient(row.pk, row.PatientID, row.IssuerOfPatientID)

    def recent_studies(self, patient: FoundPatient, *, scope: Scope, since: str = "", until: str = "",
                       limit: int = 100) -> list[FoundStudy]:
        """The caller's studies of ``patient``, newest first, dated within ``since``…``until`` (YYYYMMDD, both
        inclusive; an undated study only when neither is given), at most ``limit``."""
        statement = self._select().where(Study.patient_pk == patient.pk, scope.study_condition())
        if since:
            statement = statement.where(Study.StudyDate >= since)
        if until:
            statement = statement.where(Study.StudyDate <= until, Study.StudyDate != "")
        with self.database.session() as session:
            rows = session.execute(statement.order_by(Study.StudyDate.desc(), Study.StudyTime.desc(),
                                                      Study.pk.desc()).limit(limit))
            return [_found(row) for row in rows]

    @staticmethod
    def _select() -> Select[str, str, str, int, str, str]:
        return (select(Study.StudyInstanceUID, Study.StudyDate, Study.AccessionNumber, Study.patient_pk,
                       Patient.PatientID, Patient.IssuerOfPatientID)
                .join(Patient, Study.patient_pk == Patient.pk))


def _found(row: object) -> FoundStudy:
    values = row._mapping  # type: ignore[attr-defined]
    return FoundStudy(values["StudyInstanceUID"], values["StudyDate"] or "", values["AccessionNumber"] or "",
                      int(values["patient_pk"]), values["PatientID"], values["IssuerOfPatientID"] or "")


# --- signed launch links --------------------------------------------------------------------


class LaunchRefused(Exception):
    """A signed launch link is not accepted; the message says why (never a secret). ``status``: 403, or 429
    when its client must wait (``retry_after`` seconds)."""

    def __init__(self, reason: str, *, ehr: str = "", user: str = "", status: int = 403,
                 retry_after: int = 0) -> None:
        super().__init__(reason)
        self.ehr, self.user, self.status, self.retry_after = ehr, user, status, retry_after


@dataclass(frozen=True)
class SignedLaunch:
    ehr: str
    user: str
    nonce: str
    expires: int


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def canonical_query(items: Iterable[tuple[str, str]]) -> str:
    """What a launch link's signature is computed over: every parameter but ``signature``, percent-encoded
    (unreserved characters only left as they are), sorted by name then value, joined with ``&``."""
    pairs = sorted((_encode(name), _encode(value)) for name, value in items if name != "signature")
    return "&".join(f"{name}={value}" for name, value in pairs)


def sign(secret: bytes, items: Iterable[tuple[str, str]]) -> str:
    """The ``signature`` of a launch link's parameters (what an EHR computes; the tests too)."""
    return hmac.new(secret, canonical_query(items).encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class _Ehr:
    name: str
    secret: bytes
    users: frozenset[str]
    max_lifetime: int


def read_secret(path: Path, name: str) -> bytes:
    """The first line of an EHR's ``secret_file``; :class:`StartupError` when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"launch.ehrs {name!r}: cannot read its secret_file {path}: {exc}") from exc
    secret = (text.splitlines() or [""])[0].strip().encode("utf-8")
    if len(secret) < _MIN_SECRET_BYTES:
        raise StartupError(f"launch.ehrs {name!r}: the secret in {path} is shorter than {_MIN_SECRET_BYTES} bytes")
    return secret


class LaunchTokens:
    """Checks signed launch links (see the module's description) and remembers used nonces in memory."""

    SIZE = 100_000
    """Used nonces kept at most (beyond it, links are refused until some expire: never forgotten early)."""

    def __init__(self, settings: LaunchSettings, security: SecuritySettings, identity: IdentityService, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.ehrs = [_Ehr(ehr.name, read_secret(ehr.secret_file, ehr.name), frozenset(ehr.users_may_be),
                          ehr.max_lifetime_seconds) for ehr in settings.ehrs]
        self.skew = settings.clock_skew_seconds
        self.identity = identity
        self.clock = clock
        self.throttle = _SignInThrottle(security.sign_in_delay_seconds, security.sign_in_max_delay_seconds,
                                        security.failed_sign_ins_per_client_minute)
        self._used: dict[tuple[str, str], float] = {}
        """(EHR, nonce) → the moment it may be forgotten (its link's expiry plus the skew)."""
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.ehrs)

    def verify(self, items: Sequence[tuple[str, str]], *, address: str) -> tuple[SignedLaunch, Principal]:
        """The link's launch and the account it opens, or :class:`LaunchRefused`; a refusal counts against
        ``address`` (the client)."""
        claimed = _single(items, "user")[:128]
        try:
            self.throttle.check(_THROTTLE_NAME, address)
        except SignInRefused as exc:
            raise LaunchRefused(f"too many refused launch links from {address or 'this client'}: try again "
                                f"in {exc.retry_after} s", user=claimed, status=429,
                                retry_after=exc.retry_after) from None
        try:
            return self._verify(items, claimed)
        except LaunchRefused:
            self.throttle.failed(_THROTTLE_NAME, address)
            raise

    def _verify(self, items: Sequence[tuple[str, str]], claimed: str) -> tuple[SignedLaunch, Principal]:
        if not self.ehrs:
            raise LaunchRefused("this node accepts no signed launch links (launch.ehrs is empty)", user=claimed)
        for required in ("user", "expires", "nonce", "signature"):
            if len([value for name, value in items if name == required]) != 1:
                raise LaunchRefused(f"a signed launch link needs exactly one {required!r} parameter", user=claimed)
        named = [value for name, value in items if name == "ehr"]
        if len(named) > 1:
            raise LaunchRefused("a signed launch link names at most one 'ehr'", user=claimed)
        candidates = [ehr for ehr in self.ehrs if not named or hmac.compare_digest(ehr.name, named[0])]
        if not candidates:
            raise LaunchRefused(f"no EHR named {named[0][:48]!r} is configured (launch.ehrs)", user=claimed)
        given = _single(items, "signature").strip().lower().encode("ascii", "replace")
        message = canonical_query(items).encode("utf-8")
        ehr = None
        for candidate in candidates:  # every candidate is computed and compared: no early exit tells them apart
            expected = hmac.new(candidate.secret, message, hashlib.sha256).hexdigest().encode("ascii")
            if hmac.compare_digest(expected, given) and ehr is None:
                ehr = candidate
        if ehr is None:
            raise LaunchRefused("the signature does not match the link (wrong secret, or the link was changed)",
                                ehr=named[0] if named else "", user=claimed)
        try:
            expires = int(_single(items, "expires"))
        except ValueError:
            raise LaunchRefused("'expires' is not a whole number of Unix seconds", ehr=ehr.name,
                                user=claimed) from None
        now = self.clock()
        if expires + self.skew < now:
            raise LaunchRefused(f"the link expired {int(now - expires)} s ago", ehr=ehr.name, user=claimed)
        if expires > now + ehr.max_lifetime + self.skew:
            raise LaunchRefused(f"the link's expiry is {int(expires - now)} s ahead, more than the "
                                f"{ehr.max_lifetime} s a link of {ehr.name} may live", ehr=ehr.name, user=claimed)
        nonce = _single(items, "nonce")
        if not _NONCE.match(nonce):
            raise LaunchRefused("'nonce' must be 16 to 128 letters, digits, '-' or '_'", ehr=ehr.name, user=claimed)
        self._use(ehr.name, nonce, expires + self.skew, now, claimed)
        if "*" not in ehr.users and claimed not in ehr.users:
            raise LaunchRefused(f"{ehr.name} may not launch as {claimed!r} (launch.ehrs users_may_be)",
                                ehr=ehr.name, user=claimed)
        principal = self.identity.principal_for(claimed)
        if principal is None:
            raise LaunchRefused(f"no enabled account named {claimed!r}", ehr=ehr.name, user=claimed)
        if claimed not in ehr.users and Permission.ADMINISTER in principal.permissions:
            # "*" is the EHR's clinicians: an administrator signs in themselves, never through a shared secret
            raise LaunchRefused(f"{ehr.name} may launch as {claimed!r} only by name (an administrator's account "
                                "is never covered by users_may_be = [\"*\"])", ehr=ehr.name, user=claimed)
        return SignedLaunch(ehr.name, claimed, nonce, expires), principal

    def _use(self, ehr: str, nonce: str, forget_at: float, now: float, claimed: str) -> None:
        with self._lock:
            if len(self._used) >= self.SIZE:
                self._used = {key: until for key, until in self._used.items() if until >= now}
            if (ehr, nonce) in self._used:
                raise LaunchRefused("this link was used already (its nonce is single-use)", ehr=ehr, user=claimed)
            if len(self._used) >= self.SIZE:
                raise LaunchRefused("too many launch links are in use at once; try again in a few minutes",
                                    ehr=ehr, user=claimed)
            self._used[(ehr, nonce)] = forget_at


def _single(items: Sequence[tuple[str, str]], name: str) -> str:
    return next((value for key, value in items if key == name), "")
