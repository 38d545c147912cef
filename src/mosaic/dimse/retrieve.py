"""Query/Retrieve service class, C-MOVE and C-GET (PS3.4 C.4.2, C.4.3): the matching instances sent as stored
(:mod:`mosaic.dimse.egress`), audited per study once the sub-operations are over. pynetdicom's associations only.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from pynetdicom import evt
from pynetdicom.events import Event

from mosaic.core.errors import QueryError
from mosaic.dimse.access import AssociationAccess, address_of
from mosaic.dimse.door import set_nodelay
from mosaic.dimse.egress import EgressTally, StoredFileDataset, move_contexts
from mosaic.dimse.status import RetrieveStatus, with_comment
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail
from mosaic.governance.policy import Principal
from mosaic.services.egress import EgressContext
from mosaic.services.metrics import RETRIEVE_TOTAL
from mosaic.services.retrieve import RetrieveService, StoredInstance

log = logging.getLogger("mosaic.dimse")


class RetrieveSCP:
    """C-MOVE (to a configured peer only) and C-GET of the instances in the caller's scope."""

    def __init__(self, access: AssociationAccess, retrieve: RetrieveService, audit: AuditTrail,
                 client_tls: ssl.SSLContext | None = None) -> None:
        self.access = access
        self.retrieve = retrieve
        self.audit = audit
        self.client_tls = client_tls
        """How Mosaic calls a move destination configured with ``tls``."""

    def on_c_move(self, event: Event) -> Iterator[Any]:
        """pynetdicom's ``EVT_C_MOVE`` handler: the destination, then the sub-operations."""
        principal = self.access.authorise_event(event, "move")
        if principal is None:
            yield None, None
            return
        destination = event.move_destination.strip() if event.move_destination else ""
        peer = self.access.peer(destination)
        if peer is None:
            log.warning("C-MOVE to unknown destination %r refused", destination)
            self._audit_refused_retrieve(principal, "C-MOVE", f"move destination {destination!r} is not a peer")
            yield None, None  # pynetdicom answers RetrieveStatus.MOVE_DESTINATION_UNKNOWN
            return
        try:
            instances = self.retrieve.instances_for_identifier(event.identifier,
                                                               scope=self.access.policy.scope(principal))
        except QueryError as exc:
            # not "success, nothing to move": raised before the first yield, pynetdicom answers with a
            # failure (RetrieveStatus.UNABLE_TO_PROCESS) without opening an association to the destination
            log.warning("C-MOVE from %r refused: %s", event.assoc.requestor.ae_title.strip(), exc)
            self._audit_refused_retrieve(principal, "C-MOVE", str(exc))
            raise
        # the association to the destination proposes the stored SOP classes and transfer syntaxes
        contexts = move_contexts([(stored.SOPClassUID, stored.TransferSyntaxUID) for stored in instances])
        yield peer.host, peer.port, {"ae_title": peer.ae_title, "contexts": contexts or None,
                                     "evt_handlers": [(evt.EVT_CONN_OPEN, set_nodelay)],
                                     **({"tls_args": (self.client_tls, peer.host)} if peer.tls else {})}
        yield from self._sub_operations(event, "C-MOVE", principal, instances)

    def on_c_get(self, event: Event) -> Iterator[Any]:
        """pynetdicom's ``EVT_C_GET`` handler: the sub-operations on the requestor's own association."""
        principal = self.access.authorise_event(event, "get")
        if principal is None:
            # refused, not "success, nothing matched": pynetdicom only takes a status after a count
            yield 1
            yield with_comment(RetrieveStatus.NOT_AUTHORIZED, "this AE may not retrieve with C-GET"), None
            return
        yield from self._sub_operations(event, "C-GET", principal)

    def _sub_operations(self, event: Event, service: str, principal: Principal,
                        instances: list[StoredInstance] | None = None) -> Iterator[Any]:
        if instances is None:
            try:
                instances = self.retrieve.instances_for_identifier(event.identifier,
                                                                   scope=self.access.policy.scope(principal))
            except QueryError as exc:
                log.warning("%s from %r refused: %s", service, event.assoc.requestor.ae_title.strip(), exc)
                self._audit_refused_retrieve(principal, service, str(exc))
                yield 1  # a failure status is only taken after a count
                yield with_comment(RetrieveStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None
                return
        offered: set[str] = set()
        unreadable: set[str] = set()
        tally = EgressTally()
        receiver = (event.move_destination.strip() if service == "C-MOVE" and event.move_destination
                    else event.assoc.requestor.ae_title.strip())
        context = EgressContext("dimse", str(receiver), principal.name)
        try:
            yield len(instances)
            for instance in instances:
                if event.is_cancelled:
                    yield RetrieveStatus.CANCEL, None
                    return
                with ExitStack() as stack:
                    try:
                        path = stack.enter_context(self.retrieve.egress(instance, context))
                    except Exception as exc:
                        log.error("%s: cannot read stored instance %s: %s", service, instance.SOPInstanceUID, exc)
                        unreadable.add(instance.SOPInstanceUID)
                        yield RetrieveStatus.SUB_OPERATION_REFUSED_OUT_OF_RESOURCES, None
                        continue
                    RETRIEVE_TOTAL.labels("dimse").inc()
                    offered.add(instance.SOPInstanceUID)
                    # sent from the file egress gives (the stored one, bytes as received, unless a coercion
                    # applies), converted only if the peer accepted no context for it (see mosaic.dimse.egress)
                    yield RetrieveStatus.PENDING, StoredFileDataset(path, instance.SOPClassUID,
                                                                    instance.SOPInstanceUID,
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
                 address_of(event), destination, len(instances), studies, tally.as_stored, tally.converted,
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
