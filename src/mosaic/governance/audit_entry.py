"""What the audit trail records: the actions (:class:`AuditAction`) and one entry (:class:`AuditEntry`).

Plain values, so every door, the journal and the writers can build and read them without the trail itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mosaic.governance.policy import Principal


class AuditAction:
    """The actions recorded (PS3.15 A.5 event types are derived from them on export)."""

    QUERY = "query"
    READ = "read"
    """Retrieve: DICOM instances, metadata, frames, rendered images, viewer loads."""
    STORE = "store"
    MODIFY = "modify"
    DELETE = "delete"
    EXPORT = "export"
    LOGIN = "login"
    LOGOUT = "logout"
    BREAK_GLASS = "break-glass"
    POLICY_CHANGE = "policy-change"
    LEGAL_HOLD = "legal-hold"
    AUDIT_READ = "audit-read"


@dataclass
class AuditEntry:
    """One thing that happened: who, what, when, from where, through which door, and how it ended."""

    action: str
    outcome: str
    """success, denied, failure."""
    actor: str
    actor_kind: str = ""
    roles: str = ""
    address: str = ""
    interface: str = ""
    PatientID: str = ""
    IssuerOfPatientID: str = ""
    StudyInstanceUID: str = ""
    SeriesInstanceUID: str = ""
    SOPInstanceUID: str = ""
    break_glass: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    recorded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def of(cls, principal: Principal, action: str, outcome: str, **values: Any) -> AuditEntry:
        return cls(action=action, outcome=outcome, actor=principal.name, actor_kind=principal.kind,
                   roles=",".join(sorted(principal.roles)), address=principal.address,
                   interface=principal.interface, **values)
