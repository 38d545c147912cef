"""Is a matching key's value one the matching rules can use? (PS3.4 C.2.2.2, PS3.5 6.2 value formats)

A value that cannot be matched as its VR says (``StudyDate=notadate``, a UID list with a bad UID, a
modality in lower case) would otherwise match nothing, or everything, silently: the caller would take
an empty answer for "no such study". Both doors refuse it instead, naming the attribute and the value:
QIDO-RS with 400, C-FIND with 0xA900 and an ErrorComment (both through :class:`QueryError`).
"""

from __future__ import annotations

import re
from datetime import date

from mosaic.core.errors import QueryError
from mosaic.core.uids import uid_problem

_DA = re.compile(r"\d{8}")
_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")
_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?")
_IS = re.compile(r"[+-]?\d{1,12}")
_DS = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
"""C0 controls no text value holds (TAB, LF, FF, CR and ESC may appear in decoded texts); PostgreSQL refuses
NUL in any string, so one would end as a server error instead of an answer."""

_SHOWN = 64
"""At most this many characters of a refused value are repeated in the error."""


def check_matching_key(keyword: str, vr: str, value: str) -> None:
    """Raise :class:`QueryError` naming ``keyword`` and ``value`` when the value is no valid matching value
    of its VR; universal matching (an empty value) is always valid.

    The message names the offending item of a list, never the whole list, and shows no backslash: it becomes
    a C-FIND ErrorComment, a LO, where a backslash would split it into several values."""
    if not value:
        return
    control = _CONTROL.search(value)
    if control:
        raise QueryError(f"{keyword} value contains control character U+{ord(control.group()):04X}")
    for option in value.split("\\"):
        problem = _problem(vr, option.strip())
        if problem:
            shown = option.strip() if len(option.strip()) <= _SHOWN else option.strip()[:_SHOWN] + "…"
            raise QueryError(f"{keyword} {shown!r} {problem}")


def _problem(vr: str, option: str) -> str | None:
    """Why one item of a (backslash-separated) matching value cannot be matched as ``vr``, None when it can."""
    if vr in ("DA", "TM", "DT"):
        return _temporal_problem(vr, option)
    if vr == "UI":
        if "*" in option or "?" in option:
            return "is not a UID: UIDs match as single values or lists, never with wildcards"
        if uid_problem(option):
            return "is not a UID (digits and dots, at most 64 characters; lists are separated by backslashes)"
    elif vr == "IS" and not _IS.fullmatch(option):
        return "is not an integer"
    elif vr == "DS" and (not _DS.fullmatch(option) or len(option) > 16):
        return "is not a decimal number"
    return None


_FORMATS = {"DA": "a date YYYYMMDD", "TM": "a time HH[MM[SS[.FFFFFF]]]",
            "DT": "a date-time YYYY[MM[DD[HH[MM[SS[.FFFFFF]]]]]][&ZZXX]"}


def _temporal_problem(vr: str, option: str) -> str | None:
    """Single value or range (``a-b``, ``-b``, ``a-``: PS3.4 C.2.2.2.5) of DA, TM or DT."""
    expected = f"is not {_FORMATS[vr]} or a range of them (a-b, -b, a-)"
    if _temporal(vr, option):
        return None  # a single value (a DT with a negative UTC offset contains a '-' too)
    if "-" not in option:
        return expected
    # a range: the '-' that splits it into two valid values (or one and nothing)
    for position in [index for index, char in enumerate(option) if char == "-"]:
        low, high = option[:position].strip(), option[position + 1:].strip()
        if (low or high) and (not low or _temporal(vr, low)) and (not high or _temporal(vr, high)):
            if low and high and vr == "DA" and low > high:
                return "is a range that starts after it ends"
            return None
    return expected


def _temporal(vr: str, text: str) -> bool:
    if vr == "DA":
        return bool(_DA.fullmatch(text)) and _real_date(int(text[:4]), int(text[4:6]), int(text[6:]))
    if vr == "TM":
        time = _TM.fullmatch(text)
        return time is not None and _clock(time.group(1), time.group(2), time.group(3))
    match = _DT.fullmatch(text)
    if not match:
        return False
    year, month, day, hour, minute, second = match.groups()[:6]
    if month and not 1 <= int(month) <= 12:
        return False
    if day and not _real_date(int(year), int(month), int(day)):
        return False
    if match.group(8) and not (int(match.group(8)[1:3]) <= 14 and int(match.group(8)[3:]) < 60):
        return False
    return _clock(hour or "00", minute, second)


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def _clock(hour: str, minute: str | None, second: str | None) -> bool:
    return int(hour) < 24 and (minute is None or int(minute) < 60) and (second is None or int(second) <= 60)
