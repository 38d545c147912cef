"""Modality Performed Procedure Step SCP (PS3.4 F.7): N-CREATE (IN PROGRESS) and N-SET (more attributes,
COMPLETED, DISCONTINUED), refused once a step is no longer IN PROGRESS; the scheduled step on the worklist moves
with it. A peer needs ``may_store`` (what it reports belongs to the images it stores); it moves only steps of its
own scope, and only the peer that created an MPPS may change it."""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.events import Event

from mosaic.dimse.access import AssociationAccess
from mosaic.dimse.status import ProcedureStepStatus, with_comment
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail
from mosaic.services.worklist import PerformedStepError, WorklistService

log = logging.getLogger("mosaic.dimse.mpps")


class PerformedStepSCP:
    def __init__(self, access: AssociationAccess, worklist: WorklistService, audit: AuditTrail) -> None:
        self.access = access
        self.worklist = worklist
        self.audit = audit

    def on_n_create(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        principal = self.access.authorise_event(event, "store")
        if principal is None:
            return ProcedureStepStatus.NOT_AUTHORIZED, None
        attributes = event.attribute_list
        request: Any = event.request
        uid = str(getattr(request, "AffectedSOPInstanceUID", "") or "") or generate_uid()
        entry = AuditEntry.of(principal, AuditAction.MODIFY, "success",
                              PatientID=str(attributes.get("PatientID", "") or "")[:64],
                              detail={"service": "MPPS N-CREATE", "mpps": uid})
        try:
            self.worklist.create_performed(uid, attributes, performed_by=principal.name,
                                           scope=self.access.policy.scope(principal))
        except PerformedStepError as exc:
            entry.outcome, entry.detail["reason"] = "failure", str(exc)
            self.audit.record(entry)
            return with_comment(exc.status, str(exc)), None
        self.audit.record(entry)
        if not getattr(request, "AffectedSOPInstanceUID", None):
            request.AffectedSOPInstanceUID = uid  # pynetdicom answers with the UID Mosaic gave it
        return ProcedureStepStatus.SUCCESS, attributes

    def on_n_set(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        principal = self.access.authorise_event(event, "store")
        if principal is None:
            return ProcedureStepStatus.NOT_AUTHORIZED, None
        request: Any = event.request
        uid = str(request.RequestedSOPInstanceUID)
        modifications = event.modification_list
        entry = AuditEntry.of(principal, AuditAction.MODIFY, "success", detail={"service": "MPPS N-SET", "mpps": uid})
        try:
            entry.detail["status"] = self.worklist.set_performed(uid, modifications, performed_by=principal.name)
        except PerformedStepError as exc:
            entry.outcome, entry.detail["reason"] = "failure", str(exc)
            self.audit.record(entry)
            return with_comment(exc.status, str(exc)), None
        self.audit.record(entry)
        return ProcedureStepStatus.SUCCESS, modifications
