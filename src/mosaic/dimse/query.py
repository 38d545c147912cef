"""Query/Retrieve service class, C-FIND (PS3.4 C.4.1): the one C-FIND handler of both receive paths, and the
encoding of its responses for the wire.

The query service answers with matches; here they become pynetdicom Datasets, or, for the streaming receiver,
bytes already encoded in the association's transfer syntax (straight from the indexed values when they are all
plain, through pydicom otherwise: the same bytes either way).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode
from pynetdicom.events import Event

from mosaic.core.errors import QueryError
from mosaic.core.identifier import NotPlain, encode_identifier
from mosaic.dimse.access import AssociationAccess, address_of
from mosaic.dimse.contexts import MODALITY_WORKLIST_FIND, PATIENT_ROOT_FIND
from mosaic.dimse.status import QueryStatus, with_comment
from mosaic.governance.audit import AuditAction, AuditEntry, AuditTrail, query_detail
from mosaic.index.query import Match, Query, Scope
from mosaic.services.query import QueryService
from mosaic.services.worklist import WorklistService

log = logging.getLogger("mosaic.dimse")


class QuerySCP:
    """C-FIND on the Patient Root and Study Root models (only studies in the caller's scope match) and on the
    Modality Worklist model (scheduled steps of the caller's facilities, PS3.4 K)."""

    def __init__(self, access: AssociationAccess, query: QueryService, audit: AuditTrail,
                 worklist: WorklistService | None = None) -> None:
        self.access = access
        self.query = query
        self.audit = audit
        self.worklist = worklist

    def on_c_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """pynetdicom's ``EVT_C_FIND`` handler (C-CANCEL answered between responses)."""
        calling = event.assoc.requestor.ae_title.strip()
        for status, response, comment in self.find_responses(event.identifier, calling,
                                                              str(event.request.AffectedSOPClassUID),
                                                              address=address_of(event)):
            if status == QueryStatus.PENDING:
                if event.is_cancelled:
                    yield QueryStatus.CANCEL, None
                    return
                yield QueryStatus.PENDING, response
            elif status != QueryStatus.SUCCESS:
                yield (with_comment(status, comment) if comment else status), None

    def find_encoded(self, identifier: Dataset, calling: str, sop_class_uid: str,
                     implicit: bool, address: str = "") -> Iterator[tuple[int, Any, str | None]]:
        """The streaming receiver's C-FIND: responses encoded for its wire (implicit or explicit VR)."""
        return self.find_responses(identifier, calling, sop_class_uid, encoded_implicit=implicit, address=address)

    def find_responses(self, identifier: Dataset, calling: str, sop_class_uid: str, *,
                       encoded_implicit: bool | None = None,
                       address: str = "") -> Iterator[tuple[int, Any, str | None]]:
        """The one C-FIND handler of both receive paths: (status, response, comment) in order, pending
        responses first, then the final status. Responses are Datasets, or already-encoded bytes when
        ``encoded_implicit`` says which VR encoding the wire uses. Only studies in the peer's scope match."""
        principal = self.access.authorise(calling, "find", address)
        if principal is None:
            yield QueryStatus.NOT_AUTHORIZED, None, f"AE {calling} may not query"
            return
        scope = self.access.policy.scope(principal)
        root = "PATIENT" if sop_class_uid == PATIENT_ROOT_FIND else "STUDY"
        audit = AuditEntry.of(principal, AuditAction.QUERY, "success", PatientID=str(identifier.get("PatientID", "")
                                                                                     or "")[:64],
                              detail={"service": "C-FIND", "level": str(identifier.get("QueryRetrieveLevel", "")),
                                      **query_detail(identifier, sop_class_uid)})
        try:
            responses: list[Any]
            if sop_class_uid == MODALITY_WORKLIST_FIND:
                if self.worklist is None:
                    raise QueryError("this node keeps no worklist")
                audit.detail["worklist"] = True
                responses = self.worklist.find(identifier, scope=scope, audit=audit.detail)
                if encoded_implicit is not None:  # the streaming receiver's wire
                    responses = [_encoded(response, encoded_implicit) for response in responses]
            elif encoded_implicit is None:
                responses = list(self.query.c_find(identifier, root=root, scope=scope, audit=audit.detail))
            else:
                responses = list(encoded_responses(self.query, identifier, root=root, implicit=encoded_implicit,
                                                   scope=scope, audit=audit.detail))
        except QueryError as exc:
            log.warning("C-FIND from %r refused: %s", calling, exc)
            audit.outcome, audit.detail["reason"] = "failure", str(exc)
            self.audit.record(audit)
            yield QueryStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None, str(exc)
            return
        except Exception as exc:
            log.exception("C-FIND failed")
            yield QueryStatus.UNABLE_TO_PROCESS, None, f"{type(exc).__name__}: {exc}"
            return
        self.audit.record(audit)
        for response in responses:
            yield QueryStatus.PENDING, response, None
        yield QueryStatus.SUCCESS, None, None


def _encoded(response: Dataset, implicit: bool) -> bytes:
    data = encode(response, implicit, True)
    if data is None:
        raise QueryError("a worklist response could not be encoded")
    return data


def encoded_responses(query: QueryService, identifier: Dataset, *, root: str, implicit: bool,
                      scope: Scope, audit: dict[str, Any] | None = None) -> Iterator[bytes]:
    """C-FIND responses encoded for the wire (raises QueryError when the identifier is malformed): straight from
    the indexed values when they are all plain, through pydicom otherwise (same bytes either way)."""
    matched, matches = query.c_find_matches(identifier, root=root, scope=scope, audit=audit)
    for match in matches:
        try:
            yield encode_identifier(_plain_values(query, match, matched, root=root), implicit=implicit)
        except NotPlain:
            data = encode(query.response(match, matched, root=root), implicit, True)
            if data is None:
                raise QueryError("a response could not be encoded") from None
            yield data


def _plain_values(query: QueryService, match: Match, matched: Query, *, root: str) -> list[tuple[str, Any]]:
    values: list[tuple[str, Any]] = [("QueryRetrieveLevel", matched.level), ("RetrieveAETitle", query.ae_title)]
    for keyword, _tag, _vr, value, stored in query.indexed_values(match, matched, root=root):
        if value is None and stored is not None:
            raise NotPlain(keyword)  # only the stored metadata has it: pydicom encodes
        values.append((keyword, "" if value is None else value))
    return values
