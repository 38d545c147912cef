"""The DICOM listener: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET and Storage Commitment SCPs.

Handlers are thin: they check the calling AE's permissions, call a service and turn its answer
or its error into a DIMSE status. Incoming C-STORE data sets are received into a temporary file
(never held whole in memory) and handed to the ingest service as a file.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from mosaic.config import DicomPeer, DicomSettings
from mosaic.core.errors import InstanceMismatch, InvalidObject, QueryError
from mosaic.dimse.commitment import StorageCommitmentSCP
from mosaic.dimse.contexts import PATIENT_ROOT_FIND, add_scp_contexts
from mosaic.dimse.door import (
    LOCAL_LIMIT_EXCEEDED,
    PYNETDICOM_MAX_PDU,
    AssociationSlots,
    ConnectionLimit,
    raise_descriptor_limit,
)
from mosaic.dimse.egress import EgressTally, StoredFileDataset, move_contexts
from mosaic.dimse.fast_store import StoreContext, StoreRequestHandler
from mosaic.dimse.pynetdicom_bounds import spool_failure
from mosaic.dimse.tls import (
    SharedPort,
    SharedPortTlsServer,
    TlsAssociationServer,
    TlsRequestHandler,
    client_context,
    peer_names,
    server_context,
)
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail, query_detail
from mosaic.governance.identity import AuthenticationFailed, IdentityService
from mosaic.governance.policy import ALL, AccessPolicy, Permission, Principal
from mosaic.index.query import Scope
from mosaic.services.ingest import OUT_OF_RESOURCES, IngestService, out_of_resources
from mosaic.services.metrics import RETRIEVE_TOTAL
from mosaic.services.query import QueryService
from mosaic.services.retrieve import RetrieveService, StoredInstance
from mosaic.storage.spool import Spool

log = logging.getLogger("mosaic.dimse")

_config.STORE_RECV_CHUNKED_DATASET = True
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
_config.LOG_HANDLER_LEVEL = "none"

NOT_AUTHORISED = 0x0124
UNABLE_TO_PROCESS = 0xC001
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
PENDING = 0xFF00
CANCEL = 0xFE00


class DicomServer:
    """Mosaic's DIMSE application entity, serving many associations at once."""

    def __init__(self, settings: DicomSettings, ingest: IngestService, query: QueryService,
                 retrieve: RetrieveService, spool: Spool | None = None, *, policy: AccessPolicy,
                 audit: AuditTrail, identity: IdentityService | None = None) -> None:
        self.settings = settings
        self._peers = {peer.ae_title: peer for peer in settings.peers}
        self.policy = policy
        self.audit = audit
        self.identity = identity
        self._users: weakref.WeakKeyDictionary[Any, Principal] = weakref.WeakKeyDictionary()
        """The person signed in on an association (user identity negotiation), by its pynetdicom thread."""
        self.spool = spool or Spool()
        self.ingest = ingest
        self.query = query
        self.retrieve = retrieve
        self.client_tls = client_context(settings.tls) if any(peer.tls for peer in settings.peers) else None
        """How Mosaic calls peers configured with ``tls`` (its dicom.tls certificate, theirs checked)."""
        self.commitment = StorageCommitmentSCP(retrieve, settings, scope_of=self._commitment_scope,
                                               client_tls=self.client_tls)
        self.ae = AE(ae_title=settings.ae_title)
        self.slots = AssociationSlots(settings.max_associations)
        """The one count of associations of both receive paths and both doors (dicom.max_associations)."""
        # pynetdicom's own count (its association threads, even those still waiting for a request) never decides
        self.ae.maximum_associations = 1 << 30
        # pynetdicom holds a whole PDU in memory: it advertises a bounded Maximum Length even when Mosaic has none
        self.ae.maximum_pdu_size = settings.max_pdu_size or PYNETDICOM_MAX_PDU
        self.ae.network_timeout = settings.network_timeout
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = settings.network_timeout
        add_scp_contexts(self.ae)
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: TlsAssociationServer | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the DICOM listener is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self.on_c_echo),
            (evt.EVT_C_STORE, self.on_c_store),
            (evt.EVT_C_FIND, self.on_c_find),
            (evt.EVT_C_MOVE, self.on_c_move),
            (evt.EVT_C_GET, self.on_c_get),
            (evt.EVT_N_ACTION, self.commitment.on_n_action),
            (evt.EVT_CONN_OPEN, _set_nodelay),
            (evt.EVT_REQUESTED, self.on_requested),
        ]
        if self.identity is not None:
            handlers.append((evt.EVT_USER_ID, self.on_user_identity))
        raise_descriptor_limit()
        server_class = _SharedPortServer if self.settings.workers > 1 else _Listener
        server = cast(_Listener, self.ae.make_server((self.settings.host, self.settings.port), evt_handlers=handlers,
                                                     server_class=server_class, request_handler=StoreRequestHandler))
        server.max_connections = self.max_connections
        server.max_connections_per_address = self.max_connections_per_address
        if self.settings.streaming_store:
            server.store_context = StoreContext(  # type: ignore[attr-defined]
                ae_title=self.settings.ae_title, maximum_length=self.settings.max_pdu_size,
                network_timeout=self.settings.network_timeout,
                implementation_class_uid=str(self.ae.implementation_class_uid),
                implementation_version_name=str(self.ae.implementation_version_name or "MOSAIC"),
                spool=self.spool, calling_allowed=self._may_associate,
                store=self.store_received, find=self.find_encoded, slots=self.slots)
        self.ae._servers.append(server)
        # a short poll interval: stop() (server.shutdown) returns within 50 ms instead of 500 ms
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="dicom-listener",
                         daemon=True).start()
        self._server = server
        log.info("DICOM listener %s on %s:%d", self.settings.ae_title, self.settings.host, self.port)
        if self.settings.tls.enabled:
            self._start_tls(handlers)

    def _start_tls(self, handlers: list[Any]) -> None:
        """The TLS listener: every association on it is pynetdicom's (after the handshake)."""
        tls = self.settings.tls
        server = cast(TlsAssociationServer, self.ae.make_server(
            (self.settings.host, tls.port), evt_handlers=handlers,
            server_class=SharedPortTlsServer if self.settings.workers > 1 else TlsAssociationServer,
            ssl_context=server_context(tls), request_handler=TlsRequestHandler))
        server.handshake_timeout = self.settings.network_timeout
        server.max_connections = self.max_connections
        server.max_connections_per_address = self.max_connections_per_address
        server.on_refused = self._audit_tls_refused
        self.ae._servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="dicom-tls-listener",
                         daemon=True).start()
        self._tls_server = server
        log.info("DICOM TLS listener %s on %s:%d", self.settings.ae_title, self.settings.host, self.tls_port)

    @property
    def max_connections(self) -> int:
        """Connections each door admits at once (dicom.max_connections; 0: four per association slot)."""
        return self.settings.max_connections or 4 * self.settings.max_associations

    @property
    def max_connections_per_address(self) -> int:
        """Of those, from one IP address (dicom.max_connections_per_address; 0: a quarter of the door's, and at
        least as many as there are association slots)."""
        return self.settings.max_connections_per_address or max(self.max_connections // 4,
                                                                self.settings.max_associations)

    @property
    def tls_port(self) -> int:
        if self._tls_server is None:
            raise RuntimeError("the DICOM TLS listener is not running (dicom.tls.enabled)")
        return int(self._tls_server.server_address[1])

    def _audit_tls_refused(self, address: str, reason: str) -> None:
        """A caller that could not authenticate its node (PS3.15 'User Authentication', failed)."""
        self.audit.record(AuditEntry(action=AuditAction.LOGIN, outcome="denied", actor="(TLS)", actor_kind="ae",
                                     address=address, interface="dimse", detail={"reason": reason}))

    def stop(self) -> None:
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
                server.server_close()
                cast(ConnectionLimit, server).close_connections()
        self._server = self._tls_server = None
        self.commitment.stop()

    # --- access -----------------------------------------------------------------------------

    def _peer(self, ae_title: str) -> DicomPeer | None:
        return self._peers.get(ae_title)

    def principal(self, calling: str, address: str = "") -> Principal:
        """The calling peer as the access policy sees it (unknown AEs and wrong addresses have no rights); when a
        person signed in on this association (user identity negotiation), that person, within what the AE
        may do and see."""
        peer = self.policy.peer_principal(self._peer(calling), calling, address,
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

    def on_user_identity(self, event: Event) -> tuple[bool, bytes | None]:
        """User identity negotiation (PS3.7 D.3.3.7): a user name and passcode of a Mosaic account, or a JWT
        of the OpenID Connect issuer. A wrong one rejects the association; either way it is audited."""
        assert self.identity is not None
        calling, address = event.assoc.requestor.ae_title.strip(), _address(event)
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
        peer = self._peer(calling)
        if _SERVICE_PERMISSION[service] in principal.permissions and (
                peer is None or bool(getattr(peer, f"may_{service}"))):
            return principal
        log.warning("refused %s from AE %r at %s: not permitted by dicom.peers", service.upper(), calling,
                    address or "?")
        self.audit.record(AuditEntry.of(principal, _SERVICE_ACTION[service], "denied",
                                        detail={"service": f"C-{service.upper()}"}))
        return None

    def _commitment_scope(self, calling: str, address: str) -> Scope | None:
        """What a storage commitment requester may be told about: its scope, or None when it may not store."""
        principal = self.authorise(calling, "store", address)
        return None if principal is None else self.policy.scope(principal)

    def _authorise_event(self, event: Event, service: str) -> Principal | None:
        return self.authorise(event.assoc.requestor.ae_title.strip(), service, _address(event))

    # --- handlers ---------------------------------------------------------------------------

    def on_c_echo(self, event: Event) -> int:
        return 0x0000

    def on_c_store(self, event: Event) -> int | Dataset:
        request: Any = event.request
        calling = event.assoc.requestor.ae_title.strip()
        failure = spool_failure(request)
        if failure is not None:  # the data set could not be written (full disk): nothing is stored
            log.error("C-STORE of %s from %r refused with 0xA700: cannot write the received data set: %s",
                      request.AffectedSOPInstanceUID, calling, failure)
            return _status(OUT_OF_RESOURCES, out_of_resources(failure) or str(failure))
        status, comment = self.store_received(Path(event.dataset_path), calling, str(request.AffectedSOPClassUID),
                                              str(request.AffectedSOPInstanceUID), None, _address(event))
        return _status(status, comment) if comment else status

    def _may_associate(self, calling: str, address: str) -> bool:
        principal = self.principal(calling, address)
        if not principal.permissions:
            self._audit_rejected(principal)
        return bool(principal.permissions)

    def on_requested(self, event: Event) -> None:
        """The association check of the pynetdicom listeners (plain and TLS), as the streaming path makes it:
        a caller the policy gives no rights (an unknown AE, a known one from another address or without its
        certificate) is rejected, "calling AE title not recognised", before anything is negotiated, and audited
        once."""
        request = event.assoc.requestor.primitive  # the A-ASSOCIATE-RQ: requestor.ae_title is set only later
        calling = str(getattr(request, "calling_ae_title", "") or "").strip()
        if not self._may_associate(calling, _address(event)):
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # sets is_rejected: pynetdicom negotiates nothing more
            event.assoc.kill()
            return
        if not self.slots.reserve(event.assoc):  # held until the association's thread ends
            log.warning("association from %r rejected: dicom.max_associations reached", calling)
            event.assoc.acse.send_reject(*LOCAL_LIMIT_EXCEEDED)
            event.assoc.kill()

    def _audit_rejected(self, principal: Principal) -> None:
        """A refused association is a failed sign-in of a DICOM node (PS3.15 'User Authentication')."""
        peer = self._peer(principal.name)
        names = _certificate_names()
        reason = "association rejected: not a known peer at this address"
        if peer is not None and peer.certificate_names:
            reason = ("association rejected: this peer must call on the TLS listener with its certificate"
                      if names is None else "association rejected: the TLS certificate does not name this peer")
        self.audit.record(AuditEntry.of(principal, AuditAction.LOGIN, "denied", detail={"reason": reason}))

    def store_received(self, path: Path, calling: str, sop_class_uid: str, sop_instance_uid: str,
                       sha256: str | None = None, address: str = "") -> tuple[int, str | None]:
        """The one C-STORE handler of both receive paths: (DIMSE status, error comment)."""
        principal = self.authorise(calling, "store", address)
        if principal is None:
            return NOT_AUTHORISED, f"AE {calling} may not store"
        peer = self._peer(calling)
        try:
            result = self.ingest.store(path, door="dimse", source_ae_title=calling,
                                       expected_sop_class_uid=sop_class_uid,
                                       expected_sop_instance_uid=sop_instance_uid, sha256=sha256,
                                       facility=peer.facility if peer else "",
                                       department=peer.department if peer else "",
                                       may_add_to=self.policy.store_check(principal))
        except InvalidObject as exc:
            self.audit.record(AuditEntry.of(principal, AuditAction.STORE, "failure", SOPInstanceUID=sop_instance_uid,
                                            detail={"reason": exc.reason}))
            # the data set may not even name itself: the request's Affected SOP Instance UID does
            log.warning("C-STORE of %s (%s) from %r refused with 0x%04X: %s", sop_instance_uid, sop_class_uid,
                        calling, exc.status, exc.reason)
            if isinstance(exc, InstanceMismatch):  # the response names the request's UID, the comment the other
                comment = f"data set is {exc.found}"
                return exc.status, comment if len(comment) <= 64 else exc.found  # ErrorComment is LO: 64 chars
            return exc.status, str(exc)
        except Exception as exc:
            # a failure status for this object (the SCU may retry it), not an aborted association
            reason = out_of_resources(exc)  # a full disk, the index down: as STOW-RS classifies them
            if reason is not None:
                log.error("C-STORE of %s from %r refused with 0xA700: %s", sop_instance_uid, calling, reason)
                return OUT_OF_RESOURCES, reason
            log.exception("C-STORE of %s from %r failed", sop_instance_uid, calling)
            return OUT_OF_RESOURCES, f"{type(exc).__name__}: {exc}"
        self.audit.record(AuditEntry.of(
            principal, AuditAction.STORE, "success", PatientID=result.patient_id,
            IssuerOfPatientID=result.issuer_of_patient_id, StudyInstanceUID=result.study_instance_uid,
            SeriesInstanceUID=result.series_instance_uid, SOPInstanceUID=result.sop_instance_uid,
            detail={"outcome": result.outcome.value}))
        return 0x0000, None

    def on_c_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        calling = event.assoc.requestor.ae_title.strip()
        for status, response, comment in self.find_responses(event.identifier, calling,
                                                              str(event.request.AffectedSOPClassUID),
                                                              address=_address(event)):
            if status == PENDING:
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                yield PENDING, response
            elif status != 0x0000:
                yield (_status(status, comment) if comment else status), None

    def find_encoded(self, identifier: Dataset, calling: str, sop_class_uid: str,
                     implicit: bool, address: str = "") -> Iterator[tuple[int, Any, str | None]]:
        return self.find_responses(identifier, calling, sop_class_uid, encoded_implicit=implicit, address=address)

    def find_responses(self, identifier: Dataset, calling: str, sop_class_uid: str, *,
                       encoded_implicit: bool | None = None,
                       address: str = "") -> Iterator[tuple[int, Any, str | None]]:
        """The one C-FIND handler of both receive paths: (status, response, comment) in order, pending
        responses first, then the final status. Responses are Datasets, or already-encoded bytes when
        ``encoded_implicit`` says which VR encoding the wire uses. Only studies in the peer's scope match."""
        principal = self.authorise(calling, "find", address)
        if principal is None:
            yield NOT_AUTHORISED, None, f"AE {calling} may not query"
            return
        scope = self.policy.scope(principal)
        root = "PATIENT" if sop_class_uid == PATIENT_ROOT_FIND else "STUDY"
        audit = AuditEntry.of(principal, AuditAction.QUERY, "success", PatientID=str(identifier.get("PatientID", "")
                                                                                     or "")[:64],
                              detail={"service": "C-FIND", "level": str(identifier.get("QueryRetrieveLevel", "")),
                                      **query_detail(identifier, sop_class_uid)})
        try:
            responses: list[Any]
            if encoded_implicit is None:
                responses = list(self.query.c_find(identifier, root=root, scope=scope, audit=audit.detail))
            else:
                responses = list(self.query.c_find_encoded(identifier, root=root, implicit=encoded_implicit,
                                                           scope=scope, audit=audit.detail))
        except QueryError as exc:
            log.warning("C-FIND from %r refused: %s", calling, exc)
            audit.outcome, audit.detail["reason"] = "failure", str(exc)
            self.audit.record(audit)
            yield IDENTIFIER_DOES_NOT_MATCH, None, str(exc)
            return
        except Exception as exc:
            log.exception("C-FIND failed")
            yield UNABLE_TO_PROCESS, None, f"{type(exc).__name__}: {exc}"
            return
        self.audit.record(audit)
        for response in responses:
            yield PENDING, response, None
        yield 0x0000, None, None

    def on_c_move(self, event: Event) -> Iterator[Any]:
        principal = self._authorise_event(event, "move")
        if principal is None:
            yield None, None
            return
        destination = event.move_destination.strip() if event.move_destination else ""
        peer = self._peer(destination)
        if peer is None:
            log.warning("C-MOVE to unknown destination %r refused", destination)
            self._audit_refused_retrieve(principal, "C-MOVE", f"move destination {destination!r} is not a peer")
            yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
            return
        try:
            instances = self.retrieve.instances_for_identifier(event.identifier, scope=self.policy.scope(principal))
        except QueryError as exc:
            # not "success, nothing to move": raised before the first yield, pynetdicom answers with a
            # failure (0xC514, unable to process) without opening an association to the destination
            log.warning("C-MOVE from %r refused: %s", event.assoc.requestor.ae_title.strip(), exc)
            self._audit_refused_retrieve(principal, "C-MOVE", str(exc))
            raise
        # the association to the destination proposes the stored SOP classes and transfer syntaxes
        contexts = move_contexts([(stored.SOPClassUID, stored.TransferSyntaxUID) for stored in instances])
        yield peer.host, peer.port, {"ae_title": peer.ae_title, "contexts": contexts or None,
                                     "evt_handlers": [(evt.EVT_CONN_OPEN, _set_nodelay)],
                                     **({"tls_args": (self.client_tls, peer.host)} if peer.tls else {})}
        yield from self._sub_operations(event, "C-MOVE", principal, instances)

    def on_c_get(self, event: Event) -> Iterator[Any]:
        principal = self._authorise_event(event, "get")
        if principal is None:
            # refused, not "success, nothing matched": pynetdicom only takes a status after a count
            yield 1
            yield _status(NOT_AUTHORISED, "this AE may not retrieve with C-GET"), None
            return
        yield from self._sub_operations(event, "C-GET", principal)

    def _sub_operations(self, event: Event, service: str, principal: Principal,
                        instances: list[StoredInstance] | None = None) -> Iterator[Any]:
        if instances is None:
            try:
                instances = self.retrieve.instances_for_identifier(event.identifier,
                                                                   scope=self.policy.scope(principal))
            except QueryError as exc:
                log.warning("%s from %r refused: %s", service, event.assoc.requestor.ae_title.strip(), exc)
                self._audit_refused_retrieve(principal, service, str(exc))
                yield 1  # a failure status is only taken after a count
                yield _status(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
                return
        offered: set[str] = set()
        unreadable: set[str] = set()
        tally = EgressTally()
        try:
            yield len(instances)
            for instance in instances:
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                with ExitStack() as stack:
                    try:
                        path = stack.enter_context(self.retrieve.local_file(instance))
                    except Exception as exc:
                        log.error("%s: cannot read stored instance %s: %s", service, instance.SOPInstanceUID, exc)
                        unreadable.add(instance.SOPInstanceUID)
                        yield OUT_OF_RESOURCES, None
                        continue
                    RETRIEVE_TOTAL.labels("dimse").inc()
                    offered.add(instance.SOPInstanceUID)
                    # sent from the stored file, bytes as received (see mosaic.dimse.egress)
                    yield PENDING, StoredFileDataset(path, instance.SOPClassUID, instance.SOPInstanceUID,
                                                     instance.TransferSyntaxUID, tally)
        finally:  # also when pynetdicom stops early (no association to the destination, aborted)
            self._audit_retrieve(event, service, principal, instances, offered, unreadable)
            self._log_retrieve(event, service, instances, unreadable, tally)

    @staticmethod
    def _log_retrieve(event: Event, service: str, instances: list[StoredInstance], unreadable: set[str],
                      tally: EgressTally) -> None:
        """One INFO line per C-MOVE/C-GET: who asked, what for whom, how many went out how, and the outcome."""
        destination = f" to {event.move_destination.strip()!r}" if service == "C-MOVE" and event.move_destination \
            else ""
        studies = len({instance.StudyInstanceUID for instance in instances})
        sent = tally.statuses.get("success", 0) + tally.statuses.get("warning", 0)
        outcome = "success" if sent == len(instances) else "partial" if sent else "failure"
        log.info("%s from %r at %s%s: %d instances of %d studies; %d sent as stored, %d converted, %d refused or "
                 "unanswered, %d unreadable, %d not sent; %s", service, event.assoc.requestor.ae_title.strip(),
                 _address(event), destination, len(instances), studies, tally.as_stored, tally.converted,
                 tally.failed, len(unreadable), len(instances) - tally.as_stored - tally.converted - len(unreadable),
                 outcome if instances else "nothing matched")

    def _audit_retrieve(self, event: Event, service: str, principal: Principal, instances: list[StoredInstance],
                        offered: set[str], unreadable: set[str]) -> None:
        """One record per study, once the sub-operations are over (PS3.15 'DICOM Instances Transferred' is per
        study too): success when every instance of the study went out, failure with the counts otherwise."""
        destination = event.move_destination.strip() if service == "C-MOVE" and event.move_destination else ""
        by_study: dict[str, list[StoredInstance]] = {}
        for instance in instances:
            by_study.setdefault(instance.StudyInstanceUID, []).append(instance)
        for study, members in by_study.items():
            sent = sum(member.SOPInstanceUID in offered for member in members)
            missing = sum(member.SOPInstanceUID in unreadable for member in members)
            self.audit.record(AuditEntry.of(
                principal, AuditAction.READ, "success" if sent == len(members) else "failure",
                PatientID=members[0].PatientID, IssuerOfPatientID=members[0].IssuerOfPatientID,
                StudyInstanceUID=study,
                detail={"service": service, "instances": len(members), "sent": sent,
                        **({"unreadable": missing} if missing else {}),
                        **({"destination": destination} if destination else {})}))

    def _audit_refused_retrieve(self, principal: Principal, service: str, reason: str) -> None:
        self.audit.record(AuditEntry.of(principal, AuditAction.READ, "failure",
                                        detail={"service": service, "reason": reason[:500]}))


_SERVICE_PERMISSION = {"store": Permission.STORE, "find": Permission.QUERY, "move": Permission.READ,
                       "get": Permission.READ}
_SERVICE_ACTION = {"store": AuditAction.STORE, "find": AuditAction.QUERY, "move": AuditAction.READ,
                   "get": AuditAction.READ}


def _narrowest(first: frozenset[str], second: frozenset[str]) -> frozenset[str]:
    """What both an AE's and a person's scope allow ('*' allows anything)."""
    if ALL in first:
        return second
    if ALL in second:
        return first
    return first & second


def _certificate_names() -> frozenset[str] | None:
    """The TLS client certificate names of the association this thread serves; None when it is not over TLS.
    pynetdicom runs handlers on the association's own thread (the fast path never serves TLS)."""
    dul = getattr(threading.current_thread(), "dul", None)
    return peer_names(getattr(getattr(dul, "socket", None), "socket", None))


def _address(event: Event) -> str:
    return str(event.assoc.requestor.address or "")


class _Listener(ConnectionLimit, ThreadedAssociationServer):
    """The plain listener: pynetdicom's threaded server admitting at most ``max_connections`` at once."""


class _SharedPortServer(SharedPort, _Listener):
    """The plain listener shared with the other DICOM worker processes."""


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def _set_nodelay(event: Event) -> None:
    import socket

    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
