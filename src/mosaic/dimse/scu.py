"""SCU clients: verification (C-ECHO) to a peer, C-STORE of files to a peer."""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from mosaic.core.status import StorageStatus
from mosaic.dimse import adjustments

_STORED = (StorageStatus.SUCCESS, StorageStatus.WARNING_COERCION_OF_DATA_ELEMENTS,
           StorageStatus.WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS, StorageStatus.WARNING_ELEMENTS_DISCARDED)
"""What a peer answers for an object it kept (success and the warnings)."""
_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


def parse_peer(text: str) -> tuple[str, str, int]:
    """Parse ``AE@HOST:PORT``."""
    match = _PEER.match(text.strip())
    if not match:
        raise ValueError(f"peer {text!r} is not AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
    return match["ae"], match["host"], int(match["port"])


def verify_peer(own_ae_title: str, ae_title: str, host: str, port: int) -> tuple[int | None, float]:
    """C-ECHO the peer: (status or None when no association, seconds taken)."""
    adjustments.apply()  # bounded PDUs and poll(2) for the SCUs too
    ae = AE(ae_title=own_ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = 10
    ae.network_timeout = 10
    started = time.perf_counter()
    association = ae.associate(host, port, ae_title=ae_title)
    if not association.is_established:
        return None, time.perf_counter() - started
    try:
        response = association.send_c_echo()
        status = int(response.Status) if response and "Status" in response else None
    finally:
        association.release()
    return status, time.perf_counter() - started


def store_files(own_ae_title: str, ae_title: str, host: str, port: int, paths: list[Path],
                progress: Callable[[int], None] | None = None, tls: ssl.SSLContext | None = None
                ) -> list[tuple[Path, str | None]]:
    """C-STORE Part 10 files to a peer over one association: (file, None on success or the reason). Only the
    headers are read up front (for the presentation contexts); each file is read when it is sent.
    ``progress`` is called with the number of files sent so far."""
    from pydicom import dcmread

    adjustments.apply()
    if not paths:
        return []
    pairs: dict[Path, tuple[str, str]] = {}
    results: list[tuple[Path, str | None]] = []
    for path in paths:
        try:
            header = dcmread(path, stop_before_pixels=True)
            pairs[path] = (str(header.SOPClassUID), str(header.file_meta.TransferSyntaxUID))
        except Exception as exc:  # pydicom raises many types on a bad file
            results.append((path, f"not a readable DICOM file: {exc}"))
    ae = AE(ae_title=own_ae_title)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 60
    contexts = sorted(set(pairs.values()))
    for sop_class, syntax in contexts[:128]:
        ae.add_requested_context(sop_class, [syntax])
    association = ae.associate(host, port, ae_title=ae_title, tls_args=(tls, host) if tls else None)
    if not association.is_established:
        return results + [(path, f"association with {ae_title}@{host}:{port} refused or failed") for path in pairs]
    try:
        for count, path in enumerate(pairs, start=1):
            try:
                response = association.send_c_store(dcmread(path))
            except (ValueError, RuntimeError) as exc:  # e.g. no accepted presentation context for it
                results.append((path, f"not sent: {exc}"))
                continue
            status = int(response.Status) if response and "Status" in response else None
            results.append((path, None if status in _STORED else
                            f"C-STORE status {status:#06x}" if status is not None else "no C-STORE response"))
            if progress is not None:
                progress(count)
    finally:
        association.release()
    return results
