"""Storage service class (PS3.4 Annex B): the C-STORE SCP of both receive paths.

An incoming data set arrives as a file (the streaming receiver's spool file, or pynetdicom's in the spool
folder), never whole in memory; it is handed to the ingest service with its origin (this association's calling
AE, address and principal), which checks and audits the store. The handler turns the outcome into a status.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from mosaic.core.errors import InstanceMismatch, InvalidObject
from mosaic.dimse.access import AssociationAccess, address_of
from mosaic.dimse.pynetdicom_bounds import spool_failure
from mosaic.dimse.status import StorageStatus, with_comment
from mosaic.services.ingest import IngestService, out_of_resources
from mosaic.services.origin import Door, IngestOrigin

log = logging.getLogger("mosaic.dimse")


class StorageSCP:
    """C-STORE: the calling AE's store right checked, the data set stored by ingest, a status answered."""

    def __init__(self, access: AssociationAccess, ingest: IngestService, ae_title: str) -> None:
        self.access = access
        self.ingest = ingest
        self.ae_title = ae_title

    def on_c_store(self, event: Event) -> int | Dataset:
        """pynetdicom's ``EVT_C_STORE`` handler (the data set is in ``event.dataset_path``)."""
        request: Any = event.request
        calling = event.assoc.requestor.ae_title.strip()
        failure = spool_failure(request)
        if failure is not None:  # the data set could not be written (full disk): nothing is stored
            log.error("C-STORE of %s from %r refused with 0xA700: cannot write the received data set: %s",
                      request.AffectedSOPInstanceUID, calling, failure)
            return with_comment(StorageStatus.REFUSED_OUT_OF_RESOURCES, out_of_resources(failure) or str(failure))
        status, comment = self.store_received(Path(event.dataset_path), calling, str(request.AffectedSOPClassUID),
                                              str(request.AffectedSOPInstanceUID), None, address_of(event))
        return with_comment(status, comment) if comment else status

    def store_received(self, path: Path, calling: str, sop_class_uid: str, sop_instance_uid: str,
                       sha256: str | None = None, address: str = "") -> tuple[int, str | None]:
        """The one C-STORE handler of both receive paths: (DIMSE status, error comment)."""
        principal = self.access.authorise(calling, "store", address)
        if principal is None:
            return StorageStatus.NOT_AUTHORIZED, f"AE {calling} may not store"
        peer = self.access.peer(calling)
        origin = IngestOrigin(door=Door.DIMSE, principal=principal, calling_ae_title=calling,
                              called_ae_title=self.ae_title, address=address,
                              facility=peer.facility if peer else "", department=peer.department if peer else "")
        try:
            self.ingest.store(path, origin, expected_sop_class_uid=sop_class_uid,
                              expected_sop_instance_uid=sop_instance_uid, sha256=sha256)
        except InvalidObject as exc:  # audited by ingest
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
                return StorageStatus.REFUSED_OUT_OF_RESOURCES, reason
            log.exception("C-STORE of %s from %r failed", sop_instance_uid, calling)
            return StorageStatus.REFUSED_OUT_OF_RESOURCES, f"{type(exc).__name__}: {exc}"
        return StorageStatus.SUCCESS, None
