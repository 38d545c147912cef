"""The DICOM listener: Mosaic's application entity on its port (and its TLS port), serving many associations.

Lifecycle, TLS and the port shared by DICOM worker processes live here; what each association may do is
:mod:`mosaic.dimse.access`, and each service class has its module: :mod:`~mosaic.dimse.verification` (C-ECHO),
:mod:`~mosaic.dimse.storage` (C-STORE), :mod:`~mosaic.dimse.query` (C-FIND), :mod:`~mosaic.dimse.retrieve`
(C-MOVE, C-GET), :mod:`~mosaic.dimse.commitment` (Storage Commitment). Storage and C-FIND associations are served
by the streaming receiver (:mod:`mosaic.dimse.streaming`), every other by pynetdicom; both call the same handlers.
pynetdicom is adjusted (:mod:`mosaic.dimse.adjustments`) when the listener starts.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from mosaic.config import DicomSettings
from mosaic.dimse import adjustments, verification
from mosaic.dimse.access import AssociationAccess, address_of
from mosaic.dimse.commitment import StorageCommitmentSCP
from mosaic.dimse.contexts import add_scp_contexts
from mosaic.dimse.door import (
    LOCAL_LIMIT_EXCEEDED,
    PYNETDICOM_MAX_PDU,
    AssociationSlots,
    ConnectionLimit,
    raise_descriptor_limit,
    set_nodelay,
)
from mosaic.dimse.mpps import PerformedStepSCP
from mosaic.dimse.query import QuerySCP
from mosaic.dimse.retrieve import RetrieveSCP
from mosaic.dimse.storage import StorageSCP
from mosaic.dimse.streaming import StreamingContext, StreamingRequestHandler
from mosaic.dimse.tls import (
    SharedPort,
    SharedPortTlsServer,
    TlsAssociationServer,
    TlsRequestHandler,
    client_context,
    server_context,
)
from mosaic.governance.audit import AuditTrail
from mosaic.governance.identity import IdentityService
from mosaic.governance.policy import AccessPolicy
from mosaic.services.commitment import CommitmentService
from mosaic.services.ingest import IngestService
from mosaic.services.query import QueryService
from mosaic.services.retrieve import RetrieveService
from mosaic.services.worklist import WorklistService
from mosaic.storage.spool import Spool

log = logging.getLogger("mosaic.dimse")


class DicomServer:
    """Mosaic's DIMSE application entity, serving many associations at once."""

    def __init__(self, settings: DicomSettings, ingest: IngestService, query: QueryService,
                 retrieve: RetrieveService, spool: Spool | None = None, *, policy: AccessPolicy,
                 audit: AuditTrail, commitments: CommitmentService,
                 identity: IdentityService | None = None, worklist: WorklistService | None = None) -> None:
        self.settings = settings
        self.spool = spool or Spool()
        self.access = AssociationAccess(settings, policy, audit, identity)
        self.client_tls = client_context(settings.tls) if any(peer.tls for peer in settings.peers) else None
        """How Mosaic calls peers configured with ``tls`` (its dicom.tls certificate, theirs checked)."""
        self.storage = StorageSCP(self.access, ingest, settings.ae_title)
        self.find = QuerySCP(self.access, query, audit, worklist)
        self.mpps = PerformedStepSCP(self.access, worklist, audit) if worklist is not None else None
        self.retrieve = RetrieveSCP(self.access, retrieve, audit, self.client_tls)
        self.commitment = StorageCommitmentSCP(commitments, settings, scope_of=self.access.commitment_scope,
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

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the DICOM listener is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        adjustments.apply(self.spool.folder)
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, verification.on_c_echo),
            (evt.EVT_C_STORE, self.storage.on_c_store),
            (evt.EVT_C_FIND, self.find.on_c_find),
            (evt.EVT_C_MOVE, self.retrieve.on_c_move),
            (evt.EVT_C_GET, self.retrieve.on_c_get),
            (evt.EVT_N_ACTION, self.commitment.on_n_action),
            *([(evt.EVT_N_CREATE, self.mpps.on_n_create), (evt.EVT_N_SET, self.mpps.on_n_set)]
              if self.mpps is not None else []),
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_REQUESTED, self.on_requested),
        ]
        if self.access.identity is not None:
            handlers.append((evt.EVT_USER_ID, self.access.on_user_identity))
        raise_descriptor_limit()
        server_class = _SharedPortServer if self.settings.workers > 1 else _Listener
        server = cast(_Listener, self.ae.make_server((self.settings.host, self.settings.port), evt_handlers=handlers,
                                                     server_class=server_class,
                                                     request_handler=StreamingRequestHandler))
        server.max_connections = self.max_connections
        server.max_connections_per_address = self.max_connections_per_address
        if self.settings.streaming_store:
            server.store_context = StreamingContext(  # type: ignore[attr-defined]
                ae_title=self.settings.ae_title, maximum_length=self.settings.max_pdu_size,
                network_timeout=self.settings.network_timeout,
                implementation_class_uid=str(self.ae.implementation_class_uid),
                implementation_version_name=str(self.ae.implementation_version_name or "MOSAIC"),
                spool=self.spool, calling_allowed=self.access.may_associate,
                store=self.storage.store_received, find=self.find.find_encoded, slots=self.slots)
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
        server.on_refused = self.access.audit_tls_refused
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

    def stop(self) -> None:
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
                server.server_close()
                cast(ConnectionLimit, server).close_connections()
        self._server = self._tls_server = None
        self.commitment.stop()

    def on_requested(self, event: Event) -> None:
        """The association check of the pynetdicom listeners (plain and TLS), as the streaming path makes it:
        a caller the policy gives no rights (an unknown AE, a known one from another address or without its
        certificate) is rejected, "calling AE title not recognised", before anything is negotiated, and audited
        once."""
        request = event.assoc.requestor.primitive  # the A-ASSOCIATE-RQ: requestor.ae_title is set only later
        calling = str(getattr(request, "calling_ae_title", "") or "").strip()
        if not self.access.may_associate(calling, address_of(event)):
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # sets is_rejected: pynetdicom negotiates nothing more
            event.assoc.kill()
            return
        if not self.slots.reserve(event.assoc):  # held until the association's thread ends
            log.warning("association from %r rejected: dicom.max_associations reached", calling)
            event.assoc.acse.send_reject(*LOCAL_LIMIT_EXCEEDED)
            event.assoc.kill()


class _Listener(ConnectionLimit, ThreadedAssociationServer):
    """The plain listener: pynetdicom's threaded server admitting at most ``max_connections`` at once."""


class _SharedPortServer(SharedPort, _Listener):
    """The plain listener shared with the other DICOM worker processes."""
