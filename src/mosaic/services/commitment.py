"""Storage commitment (PS3.4 Annex J) as a service: which referenced instances are safely stored, within the
requestor's scope, and the record of every request and its result (the ``storage_commitment`` table). The
DIMSE door (:mod:`mosaic.dimse.commitment`) speaks the protocol; this owns the answer and the rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydicom.dataset import Dataset

from mosaic.core.status import CommitmentStatus
from mosaic.index.database import Database
from mosaic.index.query import Scope
from mosaic.index.schema import StorageCommitment
from mosaic.services.retrieve import RetrieveService


class CommitmentService:
    def __init__(self, database: Database, retrieve: RetrieveService) -> None:
        self.database = database
        self.retrieve = retrieve

    def record_request(self, request: Dataset, requestor_ae_title: str) -> None:
        """Keep an N-ACTION request before it is answered (its result follows in :meth:`record_result`)."""
        with self.database.session(write=True) as session:
            session.add(StorageCommitment(
                TransactionUID=str(request.TransactionUID), requestor_ae_title=requestor_ae_title[:16],
                request_json=json.dumps(request.to_json_dict()), created_at=datetime.now(UTC)))

    def outcome(self, request: Dataset, scope: Scope) -> tuple[int, Dataset]:
        """The event report for a request: type 1 (all committed) or 2 (some failed); an instance outside
        ``scope`` fails as not stored."""
        references = list(request.get("ReferencedSOPSequence", []))
        stored = self.retrieve.instances_by_uid([str(item.ReferencedSOPInstanceUID) for item in references],
                                                scope=scope)
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        committed, failed = [], []
        for item in references:
            reference = Dataset()
            reference.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            reference.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            instance = stored.get(str(item.ReferencedSOPInstanceUID))
            if instance is None:
                reference.FailureReason = CommitmentStatus.NO_SUCH_OBJECT_INSTANCE
                failed.append(reference)
            elif instance.SOPClassUID != str(item.ReferencedSOPClassUID):
                reference.FailureReason = CommitmentStatus.CLASS_INSTANCE_CONFLICT
                failed.append(reference)
            else:
                committed.append(reference)
        report.ReferencedSOPSequence = committed
        if failed:
            report.FailedSOPSequence = failed
        return (2 if failed else 1), report

    def record_result(self, transaction_uid: str, state: str, report: Dataset) -> None:
        """``state``: COMMITTED, FAILED (some instances not committed) or UNDELIVERED (the report did not reach
        the requestor)."""
        with self.database.session(write=True) as session:
            row = session.query(StorageCommitment).filter_by(TransactionUID=transaction_uid).one()
            row.state = state
            row.result_json = json.dumps(report.to_json_dict())
