"""Storage Commitment Push Model SCP (PS3.4 Annex J).

The N-ACTION request is answered at once; the outcome, checked against the index (each referenced
instance must be stored with the same SOP class), is sent as an N-EVENT-REPORT: on the same
association while it is open, otherwise on a new association to the requestor when it is a
configured peer. Every request and result is recorded (:class:`mosaic.services.commitment.CommitmentService`
owns the answer and the rows). A peer limited to some facilities or departments gets "no such object" for
instances outside them, as if they were not stored (asking must not reveal that another site's instance exists).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from queue import Empty, Queue
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel

from mosaic.config import DicomSettings
from mosaic.core.status import CommitmentStatus
from mosaic.index.query import Scope
from mosaic.services.commitment import CommitmentService

log = logging.getLogger("mosaic.dimse.commitment")

STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


class StorageCommitmentSCP:
    def __init__(self, commitments: CommitmentService, settings: DicomSettings,
                 scope_of: Callable[[str, str], Scope | None] | None = None,
                 client_tls: ssl.SSLContext | None = None) -> None:
        self.commitments = commitments
        self.settings = settings
        self.client_tls = client_tls
        """How results go to a peer configured with ``tls`` (the listener's context, built once)."""
        self.scope_of = scope_of or (lambda _calling, _address: Scope.everything())
        """(calling AE, peer address) → what it may see, or None when it may not store (commitment belongs to
        storage): the listener's access check."""
        self._queue: Queue[tuple[Any, str, Dataset, Scope] | None] = Queue()
        self._worker = threading.Thread(target=self._run, name="storage-commitment", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._queue.put(None)

    def on_n_action(self, event: Event) -> tuple[int, Dataset | None]:
        request = event.action_information
        if getattr(event.request, "ActionTypeID", None) != 1 or "TransactionUID" not in request:
            return CommitmentStatus.NO_SUCH_ACTION_TYPE, None
        calling = event.assoc.requestor.ae_title.strip()
        scope = self.scope_of(calling, str(event.assoc.requestor.address or ""))
        if scope is None:
            # commitment belongs to storage: a peer that may not store may not ask
            return CommitmentStatus.NOT_AUTHORIZED, None
        self.commitments.record_request(request, calling)
        self._queue.put((event.assoc, calling, request, scope))
        return CommitmentStatus.SUCCESS, None

    def outcome(self, request: Dataset, scope: Scope) -> tuple[int, Dataset]:
        return self.commitments.outcome(request, scope)

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1)
            except Empty:
                continue
            if item is None:
                return
            association, calling, request, scope = item
            try:
                self._report(association, calling, request, scope)
            except Exception:
                log.exception("storage commitment %s: event report failed", request.get("TransactionUID"))

    def _report(self, association: Any, calling: str, request: Dataset, scope: Scope) -> None:
        event_type, report = self.outcome(request, scope)
        transaction = str(request.TransactionUID)
        delivered = False
        time.sleep(0.05)  # let the N-ACTION response go out first
        if association.is_established:
            status, _reply = association.send_n_event_report(
                report, event_type, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
            delivered = bool(status) and status.get("Status", 0xFFFF) == 0
        if not delivered:
            delivered = self._report_on_new_association(calling, report, event_type)
        self.commitments.record_result(
            transaction, ("COMMITTED" if event_type == 1 else "FAILED") if delivered else "UNDELIVERED", report)
        log.info("storage commitment %s for %r: event type %d, delivered=%s", transaction, calling, event_type,
                 delivered)

    def _report_on_new_association(self, calling: str, report: Dataset, event_type: int) -> bool:
        peer = next((peer for peer in self.settings.peers if peer.ae_title == calling), None)
        if peer is None:
            log.warning("storage commitment result for unknown AE %r cannot be delivered", calling)
            return False
        ae = AE(ae_title=self.settings.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        # Mosaic sends the N-EVENT-REPORT, so it proposes the SCP role of the SOP class (PS3.4 J.3.3)
        tls_args = (self.client_tls, peer.host) if peer.tls and self.client_tls is not None else None
        association = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args,
                                   ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
        if not association.is_established:
            return False
        try:
            status, _reply = association.send_n_event_report(
                report, event_type, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
            return bool(status) and status.get("Status", 0xFFFF) == 0
        finally:
            association.release()
