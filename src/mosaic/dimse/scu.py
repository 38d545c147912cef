"""SCU clients: verification (C-ECHO) to a peer."""

from __future__ import annotations

import re
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification

_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


def parse_peer(text: str) -> tuple[str, str, int]:
    """Parse ``AE@HOST:PORT``."""
    match = _PEER.match(text.strip())
    if not match:
        raise ValueError(f"peer {text!r} is not AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
    return match["ae"], match["host"], int(match["port"])


def verify_peer(own_ae_title: str, ae_title: str, host: str, port: int) -> tuple[int | None, float]:
    """C-ECHO the peer: (status or None when no association, seconds taken)."""
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
