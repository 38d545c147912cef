"""Every change Mosaic makes to pynetdicom, in one place, applied by :func:`apply` when a listener starts or an
SCU first calls; importing a Mosaic module changes nothing in pynetdicom.

* configuration: C-STORE data sets are received into a file (``STORE_RECV_CHUNKED_DATASET``), a path given to
  ``send_c_store`` is sent from its file as it is (``STORE_SEND_CHUNKED_DATASET``), identifiers and handler
  exceptions are not logged by pynetdicom (patient data; Mosaic logs its own);
* the receive path bounded as the streaming receiver's is, and sockets polled with poll(2)
  (:mod:`mosaic.dimse.pynetdicom_bounds`);
* the file a C-STORE data set is received into: in the listener's spool folder (on the blob file system, so the
  filesystem backend hard-links it into place), remembering a failed write instead of aborting the association;
* acceptor negotiation that follows a C-GET receiver's preferred transfer syntaxes
  (:func:`mosaic.dimse.contexts.negotiate_with_receiver_preference`);
* ``Association.send_c_store`` sending a stored instance from its file (:mod:`mosaic.dimse.egress`).

The changes hold for the whole process (pynetdicom has no per-association hooks for them).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from pynetdicom import _config, acse, dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from mosaic.dimse import pynetdicom_bounds as bounds
from mosaic.dimse.contexts import negotiate_with_receiver_preference
from mosaic.dimse.egress import _send_c_store_from_file

_lock = threading.Lock()
_applied = False


def apply(receive_folder: Path | None = None) -> None:
    """Make the changes (once per process); ``receive_folder``: where pynetdicom's C-STORE data sets are written
    from now on (a listener's spool folder; by default the system's temporary folder)."""
    global _applied
    with _lock:
        if not _applied:
            _config.STORE_RECV_CHUNKED_DATASET = True
            _config.STORE_SEND_CHUNKED_DATASET = True
            _config.LOG_REQUEST_IDENTIFIERS = False
            _config.LOG_RESPONSE_IDENTIFIERS = False
            _config.LOG_HANDLER_LEVEL = "none"
            DULServiceProvider._read_pdu_data = bounds.read_pdu_data  # type: ignore[method-assign]
            DIMSEServiceProvider.receive_primitive = bounds.receive_bounded_primitive  # type: ignore[method-assign]
            AssociationSocket.ready = property(bounds.ready)  # type: ignore[method-assign,assignment]
            dimse_messages.NamedTemporaryFile = bounds.SpoolFile  # type: ignore[attr-defined,assignment]
            acse.negotiate_as_acceptor = negotiate_with_receiver_preference  # type: ignore[attr-defined]
            Association.send_c_store = _send_c_store_from_file  # type: ignore[method-assign]
            _applied = True
        if receive_folder is not None:
            receive_folder.mkdir(parents=True, exist_ok=True)
            dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[attr-defined,assignment]
                bounds.SpoolFile, dir=str(receive_folder))
