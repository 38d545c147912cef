"""Processes of this host, as files and rows that outlive them name them (``host:pid``, ``host-pid``)."""

from __future__ import annotations

import os


def running(pid: int) -> bool:
    """Whether a process with this id exists on this host (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
