"""UID syntax (PS3.5 9.1) and well-known UIDs."""

from __future__ import annotations

import re

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def uid_problem(value: object) -> str | None:
    """Return why ``value`` is not a valid UID, or None when it is one."""
    if value is None or value == "":
        return "is missing"
    if not isinstance(value, str):
        return f"is not a string ({type(value).__name__})"
    if len(value) > 64:
        return f"is {len(value)} characters long (at most 64)"
    if not _UID_RE.match(value):
        return f"{value!r} is not a UID (digits and dots, no leading zeros)"
    return None
