"""Where an object offered for storage comes from: one value every door hands :class:`IngestService.store`.

After dcm4chee-arc's store session and Orthanc's ``DicomInstanceOrigin``: which door, who sends (the principal the
access policy and the audit trail know), the calling and called AE titles or the client's address, and the
facility and department a new study is labelled with. Ingest asks the access policy of it and writes the store's
audit record from it, so a new door (HL7, FHIR, a portal upload) only has to say who is at the door.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mosaic.governance.policy import Principal


class Door(enum.StrEnum):
    """How an object arrived (``Instance.received_via``, the ``door`` label of the ingest metrics)."""

    DIMSE = "dimse"
    DICOMWEB = "dicomweb"
    """STOW-RS."""
    HL7 = "hl7"
    """A report (ORU^R01, MDM^T02) built into a DICOM object by :mod:`mosaic.services.reports`."""
    PORTAL = "portal"
    """Content captured in the portal (photos, video, PDFs uploaded by a clinician)."""
    IMPORT = "import"
    """``mosaic import`` of files and folders."""
    REPAIR = "repair"
    """``mosaic verify --repair`` indexing an orphan blob: the archive's own bytes, nobody at a door."""


@dataclass
class StoreBatch:
    """The objects stored for a door that audits many stores as one record: STOW-RS, whose one record per HTTP
    request (written by the HTTP middleware with the answer's outcome) names the instances stored. Ingest adds
    to it instead of recording each store; the door puts it into its record."""

    stored: list[str] = field(default_factory=list)
    """SOP Instance UIDs stored (or found already stored), in order."""


@dataclass(frozen=True)
class IngestOrigin:
    """Who offers an object for storage, through which door, from where."""

    door: str
    """A :class:`Door` (a test may name its own)."""
    principal: Principal | None = None
    """Who sends, as the access policy sees them: checked (may store, may add to the study, may create a study with
    these labels) and audited. None: the archive itself (repair) or a test seeding an archive, neither checked nor
    audited."""
    calling_ae_title: str = ""
    called_ae_title: str = ""
    address: str = ""
    """The sender's network address (the HTTP client's, the calling node's)."""
    facility: str = ""
    """The label of a study this sender creates (a DICOM peer's configured one); empty: the object's
    InstitutionName."""
    department: str = ""
    """Likewise; empty: its InstitutionalDepartmentName."""
    audit_refusals: bool = True
    """Whether an object refused (:class:`~mosaic.core.errors.InvalidObject`) is audited as a failed store. False
    for ``mosaic import``, which shows the operator every refused file instead."""
    batch: StoreBatch | None = None
    """Given by a door that audits its stores as one record (:class:`StoreBatch`)."""

    @property
    def source_ae_title(self) -> str:
        """What the instance row records as its sender: the calling AE title; over HTTP the client's address."""
        return self.address[:16] if self.door == Door.DICOMWEB else self.calling_ae_title
