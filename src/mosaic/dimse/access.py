"""Who may associate and use which DIMSE service: the one access check of both receive paths and both doors.

At association (the streaming receiver's ``calling_allowed``, pynetdicom's ``EVT_REQUESTED``): a caller the policy
gives no rights is rejected and audited once. Per service (:meth:`AssociationAccess.authorise`): may this calling
AE, from this address (and the person signed in on the association, if any), use C-STORE, C-FIND, C-MOVE or
C-GET; storage commitment counts as store.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from pynetdicom.events import Event

from mosaic.config import DicomPeer, DicomSettings
from mosaic.dimse.tls import peer_names
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail
from mosaic.governance.identity import AuthenticationFailed, IdentityService
from mosaic.governance.policy import ALL, AccessPolicy, Permission, Principal
from mosaic.index.query import Scope

log = logging.getLogger("mosaic.dimse")

_SERVICE_PERMISSION = {"store": Permission.STORE, "find": Permission.QUERY, "move": Permission.READ,
                       "get": Permission.READ}
_SERVICE_ACTION = {"store": AuditAction.STORE, "find": AuditAction.QUERY, "move": AuditAction.READ,
                   "get": AuditAction.READ}


class AssociationAccess:
    """The calling peers (dicom.peers) and people signed in on associations, as the access policy sees them."""

    def __init__(self, settings: DicomSettings, policy: AccessPolicy, audit: AuditTrail,
                 identity: IdentityService | None = None) -> None:
        self.settings = settings
        self._peers = {peer.ae_title: peer for peer in settings.peers}
        self.policy = policy
        self.audit = audit
        self.identity = identity
        self._users: weakref.WeakKeyDictionary[Any, Principal] = weakref.WeakKeyDictionary()
        """The person signed in on an association (user identity negotiation), by its pynetdicom thread."""

    def peer(self, ae_title: str) -> DicomPeer | None:
        return self._peers.get(ae_title)

    def principal(self, calling: str, address: str = "") -> Principal:
        """The calling peer as the access policy sees it (unknown AEs and wrong addresses have no rights); when a
        person signed in on this association (user identity negotiation), that person, within what the AE
        may do and see."""
        peer = self.policy.peer_principal(self.peer(calling), calling, address,
                                          allow_unknown=self.settings.allow_unknown_calling_aes,
                                          certificate_names=_certificate_names())
        user = self._users.get(threading.current_thread())
        if user is None:
            return peer
        return Principal(name=user.name, kind=user.kind, roles=user.roles,
                         permissions=peer.permissions & user.permissions,
                         facilities=_narrowest(peer.facilities, user.facilities),
                         departments=_narrowest(peer.departments, user.departments),
                         address=address, interface="dimse")

    def may_associate(self, calling: str, address: str) -> bool:
        """Whether ``calling`` at ``address`` may associate at all: a caller with no rights is refused (and audited
        as a failed sign-in of a DICOM node)."""
        principal = self.principal(calling, address)
        if not principal.permissions:
            self._audit_rejected(principal)
        return bool(principal.permissions)

    def _audit_rejected(self, principal: Principal) -> None:
        """A refused association is a failed sign-in of a DICOM node (PS3.15 'User Authentication')."""
        peer = self.peer(principal.name)
        names = _certificate_names()
        reason = "association rejected: not a known peer at this address"
        if peer is not None and peer.certificate_names:
            reason = ("association rejected: this peer must call on the TLS listener with its certificate"
                      if names is None else "association rejected: the TLS certificate does not name this peer")
        self.audit.record(AuditEntry.of(principal, AuditAction.LOGIN, "denied", detail={"reason": reason}))

    def audit_tls_refused(self, address: str, reason: str) -> None:
        """A caller that could not authenticate its node (PS3.15 'User Authentication', failed)."""
        self.audit.record(AuditEntry(action=AuditAction.LOGIN, outcome="denied", actor="(TLS)", actor_kind="ae",
                                     address=address, interface="dimse", detail={"reason": reason}))

    def on_user_identity(self, event: Event) -> tuple[bool, bytes | None]:
        """User identity negotiation (PS3.7 D.3.3.7): a user name and passcode of a Mosaic account, or a JWT
        of the OpenID Connect issuer. A wrong one rejects the association; either way it is audited."""
        assert self.identity is not None
        calling, address = event.assoc.requestor.ae_title.strip(), address_of(event)
        negotiation: Any = event  # pynetdicom adds these attributes to the EVT_USER_ID event
        kind = int(negotiation.user_id_type)
        primary = bytes(negotiation.primary_field or b"").decode("utf-8", "replace")
        claimed = primary if kind in (1, 2) else "jwt" if kind == 5 else f"identity type {kind}"
        try:
            if kind == 2:
                user = self.identity.check_password(primary, bytes(negotiation.secondary_field or b"").decode("utf-8"),
                                                    address=address)
            elif kind == 5:
                user = self.identity.check_jwt(primary)
            else:
                raise AuthenticationFailed(f"user identity type {kind} is not accepted: send a user name with "
                                           "a passcode (2) or a JSON Web Token (5)")
        except AuthenticationFailed as exc:
            log.warning("association from %r at %s: user identity refused: %s", calling, address, exc)
            self.audit.record(AuditEntry(action=AuditAction.LOGIN, outcome="denied", actor=claimed[:128],
                                         actor_kind="user", address=address, interface="dimse",
                                         detail={"ae": calling, "reason": str(exc)}))
            return False, None
        self._users[event.assoc] = user
        self.audit.record(AuditEntry.of(user.at(address=address, interface="dimse"), AuditAction.LOGIN, "success",
                                        detail={"ae": calling}))
        return True, None

    def authorise(self, calling: str, service: str, address: str = "") -> Principal | None:
        """The one access check of every DIMSE service on both receive paths: may ``calling`` use ``service``
        (store, find, move, get)? Asked of the access policy; known peers by their ``may_*`` flags and
        addresses, others only when dicom.allow_unknown_calling_aes. The principal to act as, or None
        (refusals are audited)."""
        principal = self.principal(calling, address)
        peer = self.peer(calling)
        if _SERVICE_PERMISSION[service] in principal.permissions and (
                peer is None or bool(getattr(peer, f"may_{service}"))):
            return principal
        log.warning("refused %s from AE %r at %s: not permitted by dicom.peers", service.upper(), calling,
                    address or "?")
        self.audit.record(AuditEntry.of(principal, _SERVICE_ACTION[service], "denied",
                                        detail={"service": f"C-{service.upper()}"}))
        return None

    def authorise_event(self, event: Event, service: str) -> Principal | None:
        return self.authorise(event.assoc.requestor.ae_title.strip(), service, address_of(event))

    def commitment_scope(self, calling: str, address: str) -> Scope | None:
        """What a storage commitment requester may be told about: its scope, or None when it may not store."""
        principal = self.authorise(calling, "store", address)
        return None if principal is None else self.policy.scope(principal)


def address_of(event: Event) -> str:
    """The calling node's IP address."""
    return str(event.assoc.requestor.address or "")


def _narrowest(first: frozenset[str], second: frozenset[str]) -> frozenset[str]:
    """What both an AE's and a person's scope allow ('*' allows anything)."""
    if ALL in first:
        return second
    if ALL in second:
        return first
    return first & second


def _certificate_names() -> frozenset[str] | None:
    """The TLS client certificate names of the association this thread serves; None when it is not over TLS.
    pynetdicom runs handlers on the association's own thread (the streaming receiver never serves TLS)."""
    dul = getattr(threading.current_thread(), "dul", None)
    return peer_names(getattr(getattr(dul, "socket", None), "socket", None))
