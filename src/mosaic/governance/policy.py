"""The access policy: one engine for every door (HTTP, DIMSE, later HL7 and FHIR).

A :class:`Principal` is whoever is asking — a signed-in user, an API token, an OpenID Connect bearer, a
DICOM peer — with the permissions of its roles and the facilities and departments it may see. The policy
answers two questions: may it do this (a :class:`Permission`), and which studies may it see (a
:class:`~mosaic.index.query.Scope`, applied in SQL so queries and counts never reveal the rest).
Break-glass: a user may open one out-of-scope study by giving a reason; the opening is time-limited,
flagged and audited.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from mosaic.config import DicomPeer, SecuritySettings
from mosaic.core.times import as_utc
from mosaic.index.database import Database
from mosaic.index.query import Scope
from mosaic.index.schema import BreakGlassGrant, Patient, Study

ALL = "*"


class Permission(enum.StrEnum):
    QUERY = "query"
    READ = "read"
    STORE = "store"
    MODIFY = "modify"
    DELETE = "delete"
    EXPORT = "export"
    ADMINISTER = "administer"
    READ_AUDIT = "read-audit"
    SHARE = "share"
    """Create links that share studies (of the creator's scope) with people outside the hospital."""


_P = Permission
DEFAULT_ROLES: dict[str, frozenset[Permission]] = {
    "administrator": frozenset(Permission),
    "radiologist": frozenset({_P.QUERY, _P.READ, _P.STORE, _P.MODIFY, _P.SHARE}),
    "clinician": frozenset({_P.QUERY, _P.READ, _P.SHARE}),
    "technologist": frozenset({_P.QUERY, _P.READ, _P.STORE, _P.MODIFY}),
    "researcher": frozenset({_P.EXPORT}),
    "auditor": frozenset({_P.READ_AUDIT}),
    "integration": frozenset({_P.QUERY, _P.READ, _P.STORE}),
}
"""Roles and what they may do; ``security.roles`` adds or redefines roles. Radiologists and clinicians may share
(a second opinion, the patient's own copy, an outside provider taking over care: the studies they may see
themselves); technologists, researchers (their way out is the de-identified export) and integrations may not."""


@dataclass(frozen=True)
class StudyAccess:
    allowed: bool
    break_glass: bool
    PatientID: str = ""
    IssuerOfPatientID: str = ""
    exists: bool = True
    """False for a study the index does not hold (``allowed`` is then True: there is nothing to protect)."""


@dataclass(frozen=True)
class BreakGlassOpening:
    """An open break-glass grant of a principal: the study, whose it is, and when the grant ends."""

    StudyInstanceUID: str
    PatientName: str
    PatientID: str
    expires_at: datetime


class AccessDenied(Exception):
    """The principal may not do this; the message says what was refused and why (never patient data)."""


@dataclass(frozen=True)
class Principal:
    """Who is asking, through which door, from where, and what they may do and see."""

    name: str
    kind: str
    """user (password or session), token, oidc, ae (a DICOM peer), share (the recipient of a share link: its
    scope is exactly the link's studies, as ``break_glass_studies`` with no facility or department), anonymous."""
    roles: frozenset[str] = frozenset()
    permissions: frozenset[Permission] = frozenset()
    facilities: frozenset[str] = frozenset({ALL})
    departments: frozenset[str] = frozenset({ALL})
    address: str = ""
    interface: str = ""
    csrf_token: str = ""
    """Set for browser sessions: unsafe requests must echo it."""
    break_glass_studies: frozenset[str] = field(default=frozenset())

    @property
    def authenticated(self) -> bool:
        return self.kind != "anonymous"

    def at(self, *, address: str, interface: str) -> Principal:
        return replace(self, address=address, interface=interface)


ANONYMOUS = Principal(name="anonymous", kind="anonymous", facilities=frozenset(), departments=frozenset())


class AccessPolicy:
    def __init__(self, database: Database, settings: SecuritySettings) -> None:
        self.database = database
        self.settings = settings
        self._facts: dict[str, tuple[float, tuple[str, str, str, str] | None]] = {}
        self._grants_of: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()
        self.ttl = settings.credential_cache_seconds
        """Study labels and break-glass grants are trusted this long (a viewer asks about one study per frame)."""
        self.roles: dict[str, frozenset[Permission]] = dict(DEFAULT_ROLES)
        for name, permissions in settings.roles.items():
            self.roles[name] = frozenset(Permission(permission) for permission in permissions)

    # --- who may do what --------------------------------------------------------------------

    def permissions_of(self, roles: frozenset[str]) -> frozenset[Permission]:
        granted: set[Permission] = set()
        for role in roles:
            granted |= self.roles.get(role, frozenset())
        return frozenset(granted)

    def unknown_roles(self, roles: frozenset[str]) -> list[str]:
        return sorted(role for role in roles if role not in self.roles)

    @staticmethod
    def permits(principal: Principal, permission: Permission) -> bool:
        return permission in principal.permissions

    @staticmethod
    def require(principal: Principal, permission: Permission) -> None:
        if permission not in principal.permissions:
            roles = ", ".join(sorted(principal.roles)) or "no role"
            raise AccessDenied(f"{principal.name} ({roles}) may not {permission.value}")

    def peer_principal(self, peer: DicomPeer | None, ae_title: str, address: str, *,
                       allow_unknown: bool, certificate_names: frozenset[str] | None = None) -> Principal:
        """A DICOM peer as a principal: its ``may_*`` flags as permissions, its scope as configured. A peer
        calling from an address it is not configured with, or (when it must show a certificate) over a connection
        without TLS or with a certificate of other names (``certificate_names``: None when not TLS), has no
        rights."""
        nobody = replace(ANONYMOUS, name=ae_title, kind="ae", address=address, interface="dimse")
        if peer is None:
            if not allow_unknown:
                return nobody
            return Principal(name=ae_title, kind="ae", permissions=frozenset({_P.STORE, _P.QUERY, _P.READ}),
                             address=address, interface="dimse")
        if peer.addresses and address and address not in peer.addresses:
            return nobody
        if peer.certificate_names and not (certificate_names or frozenset()) & set(peer.certificate_names):
            return nobody
        permissions = {permission for flag, permission in (("may_store", _P.STORE), ("may_find", _P.QUERY))
                       if getattr(peer, flag)}
        if peer.may_move or peer.may_get:
            permissions.add(_P.READ)
        return Principal(name=ae_title, kind="ae", permissions=frozenset(permissions),
                         facilities=frozenset(peer.scope_facilities), departments=frozenset(peer.scope_departments),
                         address=address, interface="dimse")

    # --- which studies ----------------------------------------------------------------------

    def scope(self, principal: Principal) -> Scope:
        """The studies ``principal`` may see, as a condition the index applies."""
        facilities = None if ALL in principal.facilities else principal.facilities
        departments = None if ALL in principal.departments else principal.departments
        if facilities is None and departments is None:
            return Scope.everything()
        return Scope(facilities, departments, self._grants(principal) | principal.break_glass_studies)

    def may_add_to(self, principal: Principal, study_instance_uid: str) -> bool:
        """May ``principal`` store into this study? A new study always; an existing one only within its scope
        (a store must not add to, or replace instances of, another site's study). No index lookup for callers
        who see everything."""
        return self.scope(principal).unrestricted or self.study_access(principal, study_instance_uid).allowed

    def store_check(self, principal: Principal) -> StoreCheck | None:
        """What ingest asks of each study an object would go into, and of the labels of a study it creates
        (``IngestService.store`` asks it of its origin's principal); None for callers who may store anywhere (nothing
        to ask, no index lookups on the hot path)."""
        if self.scope(principal).unrestricted:
            return None
        return StoreCheck(self, principal)

    def study_access(self, principal: Principal, study_instance_uid: str) -> StudyAccess:
        """May ``principal`` open this study, and is it through break-glass? An unknown study is allowed (the
        route answers 404), and a refused one must be answered the same way, so its existence stays hidden.

        The same work either way, so the time taken does not tell them apart: the caller's scope (grants
        included) is asked first, and only a study it may open is answered from the cache of study labels;
        a refusal, like an unknown study, always runs the one index lookup."""
        scope = self.scope(principal)
        facts = self._cached_facts(study_instance_uid)
        if facts is None or not self._opens(scope, facts, study_instance_uid):
            facts = self._study_facts(study_instance_uid)
        if facts is None:
            return StudyAccess(True, False, exists=False)
        facility, department, patient_id, issuer = facts
        if Scope(scope.facilities, scope.departments).permits(facility, department, study_instance_uid):
            return StudyAccess(True, False, patient_id, issuer)
        opened = study_instance_uid in scope.studies
        return StudyAccess(opened, opened and principal.kind != "share", patient_id, issuer)

    @staticmethod
    def _opens(scope: Scope, facts: tuple[str, str, str, str], study_instance_uid: str) -> bool:
        return scope.permits(facts[0], facts[1], study_instance_uid)

    def _cached_facts(self, study_instance_uid: str) -> tuple[str, str, str, str] | None:
        with self._lock:
            cached = self._facts.get(study_instance_uid)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return None

    def _study_facts(self, study_instance_uid: str) -> tuple[str, str, str, str] | None:
        """(facility, department, PatientID, IssuerOfPatientID) of a study, None when it is not stored; read
        from the index (and kept for ``ttl`` seconds when found)."""
        now = time.monotonic()
        with self.database.session() as session:
            row = session.execute(select(Study.facility, Study.department, Patient.PatientID,
                                         Patient.IssuerOfPatientID).join(Patient, Study.patient_pk == Patient.pk)
                                  .where(Study.StudyInstanceUID == study_instance_uid)).first()
        facts = None if row is None else (row[0], row[1], row[2], row[3])
        if facts is not None and self.ttl > 0:  # an unknown study is asked again: it may arrive any moment
            with self._lock:
                if len(self._facts) > 10_000:
                    self._facts.clear()
                self._facts[study_instance_uid] = (now + self.ttl, facts)
        return facts

    def _grants(self, principal: Principal) -> frozenset[str]:
        if principal.kind in ("ae", "share"):  # neither breaks the glass
            return frozenset()
        now = time.monotonic()
        with self._lock:
            cached = self._grants_of.get(principal.name)
        if cached is not None and cached[0] > now:
            return cached[1]
        with self.database.session() as session:
            rows = frozenset(session.scalars(select(BreakGlassGrant.StudyInstanceUID).where(
                BreakGlassGrant.username == principal.name, BreakGlassGrant.expires_at > datetime.now(UTC))).all())
        if self.ttl > 0:
            with self._lock:
                if len(self._grants_of) > 10_000:
                    self._grants_of.clear()
                self._grants_of[principal.name] = (now + self.ttl, rows)
        return rows

    def break_glass_openings(self, principal: Principal) -> list[BreakGlassOpening]:
        """The studies ``principal`` has opened by break-glass and may still see, the soonest to end first (one
        row per study: its latest grant), with the patient's name as the index holds it (the pages' badge)."""
        if principal.kind in ("ae", "anonymous"):
            return []
        with self.database.session() as session:
            rows = session.execute(
                select(BreakGlassGrant.StudyInstanceUID, Patient.PatientName, Patient.PatientID,
                       func.max(BreakGlassGrant.expires_at))
                .outerjoin(Study, Study.StudyInstanceUID == BreakGlassGrant.StudyInstanceUID)
                .outerjoin(Patient, Study.patient_pk == Patient.pk)
                .where(BreakGlassGrant.username == principal.name, BreakGlassGrant.expires_at > datetime.now(UTC))
                .group_by(BreakGlassGrant.StudyInstanceUID, Patient.PatientName, Patient.PatientID)).all()
        openings = [BreakGlassOpening(uid, name or "", patient_id or "", as_utc(expires))
                    for uid, name, patient_id, expires in rows]
        return sorted(openings, key=lambda opening: opening.expires_at)[:10]

    BREAK_GLASS_REASON_MINIMUM = 10
    """Characters besides spaces a break-glass reason needs (the /break-glass page asks the same)."""

    def break_glass(self, principal: Principal, study_instance_uid: str, reason: str) -> datetime:
        """Open an out-of-scope study for ``principal`` until the returned time. Needs a reason a reviewer can
        read (BREAK_GLASS_REASON_MINIMUM characters besides spaces) and the permission to read at all; the
        caller audits it."""
        if principal.kind in ("ae", "share"):
            raise AccessDenied("DICOM peers and share links cannot break the glass")
        given = len("".join(reason.split()))
        if given < self.BREAK_GLASS_REASON_MINIMUM:
            raise AccessDenied(f"break-glass needs a reason of at least {self.BREAK_GLASS_REASON_MINIMUM} "
                               f"characters besides spaces (this one has {given})")
        self.require(principal, Permission.READ)
        now = datetime.now(UTC)
        expires = now + timedelta(hours=self.settings.break_glass_hours)
        with self.database.session(write=True) as session:
            session.add(BreakGlassGrant(username=principal.name, StudyInstanceUID=study_instance_uid,
                                        reason=reason.strip()[:2000], granted_at=now, expires_at=expires))
        with self._lock:
            self._grants_of.pop(principal.name, None)  # the opening counts at once on this node
        return expires


class StoreCheck:
    """A scoped sender's store rights, as ingest asks them (``services.ingest.StoreGuard``)."""

    def __init__(self, policy: AccessPolicy, principal: Principal) -> None:
        self.policy = policy
        self.principal = principal

    def __call__(self, study_instance_uid: str) -> bool:
        """May the sender add to this (existing) study?"""
        return self.policy.may_add_to(self.principal, study_instance_uid)

    def labels(self, facility: str, department: str) -> tuple[str, str] | None:
        """The labels of a study the sender creates: those it gives (the peer's configured ones, else the object's
        InstitutionName / InstitutionalDepartmentName) when its scope holds them; when it gives none and its scope
        names exactly one, that one; otherwise None: a store may only create studies inside its own scope."""
        chosen = []
        for value, allowed in ((facility, self.principal.facilities), (department, self.principal.departments)):
            if ALL in allowed or value in allowed:
                chosen.append(value)
            elif not value and len(allowed) == 1:
                chosen.append(next(iter(allowed)))
            else:
                return None
        return chosen[0], chosen[1]

