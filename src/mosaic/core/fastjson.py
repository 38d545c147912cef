"""DICOM JSON for simple elements straight from their raw bytes, without pydicom's per-element conversion.

Building the indexed metadata was the largest single cost of ingest (pydicom converts every raw element
into a DataElement, then into JSON). For the value representations whose JSON form is a plain decode of
the bytes this module produces the same result directly; :func:`raw_to_json` returns None for anything
else (sequences, person names, text in a specific character set, private or unknown tags) and the caller
uses pydicom. ``tests/test_fastjson.py`` checks the output equals pydicom's over the whole test corpus.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement

_SPLIT_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "LO", "SH", "UC"})
_SINGLE_TEXT = frozenset({"LT", "ST", "UT", "UR"})
_CHARSET_TEXT = frozenset({"LO", "SH", "UC", "LT", "ST", "UT"})
"""Text VRs decoded with the Specific Character Set (the others are always ASCII)."""
_BINARY = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_INLINE = frozenset({"OB", "OW", "OD", "OF", "OL", "OV"})
_SIMPLE_CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 192": "utf-8", "ISO_IR 100": "latin-1"}


def charset_codec(specific_character_set: Any) -> str | None:
    """The Python codec for a single-valued, non-ISO-2022 Specific Character Set, else None."""
    if specific_character_set is None:
        return "ascii"
    if isinstance(specific_character_set, str):
        return _SIMPLE_CHARSETS.get(specific_character_set.strip())
    values = [str(value).strip() for value in specific_character_set]
    if len(values) == 1:
        return _SIMPLE_CHARSETS.get(values[0])
    return None


def raw_to_json(raw: RawDataElement, codec: str | None) -> dict[str, Any] | None:
    """The DICOM JSON of ``raw``, or None when pydicom must convert it."""
    tag = raw.tag
    if tag.is_private or raw.value is None:
        return None
    vr = raw.VR
    if vr is None or vr == "UN":
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            return None
        if vr == "UN" or " " in vr:
            return None
    value: bytes = raw.value
    if vr == "SQ":
        return None
    if not value:
        return {"vr": vr}
    if vr in _SPLIT_TEXT or vr in _SINGLE_TEXT:
        text_codec = codec if vr in _CHARSET_TEXT else "ascii"
        if text_codec is None:
            return None
        try:
            text = value.decode(text_codec)
        except UnicodeDecodeError:
            return None
        if vr in _SINGLE_TEXT:
            stripped = text.rstrip(" \x00") if vr != "UR" else text.strip(" \x00")
            return {"vr": vr, "Value": [stripped]} if stripped else {"vr": vr}
        # like pydicom: the padding of the whole value goes, spaces inside a multi-value item stay
        items = text.rstrip(" \x00").split("\\")
        if len(items) == 1 and not items[0]:
            return {"vr": vr}
        return {"vr": vr, "Value": items}
    if vr in ("IS", "DS"):
        return _numbers(vr, value)
    fmt = _BINARY.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        if len(value) % size:
            return None
        endian = "<" if raw.is_little_endian else ">"
        numbers = list(struct.unpack(f"{endian}{len(value) // size}{fmt}", value))
        if vr in ("FL", "FD") and any(number != number or number in (float("inf"), float("-inf"))
                                      for number in numbers):
            return None  # NaN/infinity: let pydicom decide how to say it
        return {"vr": vr, "Value": numbers}
    if vr == "AT":
        if len(value) % 4:
            return None
        endian = "<" if raw.is_little_endian else ">"
        pairs = struct.unpack(f"{endian}{len(value) // 2}H", value)
        return {"vr": vr, "Value": [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]}
    if vr in _INLINE:
        if not raw.is_little_endian and vr != "OB":
            return None
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    return None


def _numbers(vr: str, value: bytes) -> dict[str, Any] | None:
    try:
        items = value.decode("ascii").split("\\")
    except UnicodeDecodeError:
        return None
    numbers: list[Any] = []
    for item in items:
        item = item.strip(" \x00")
        if not item:
            return None  # empty items inside a number list: pydicom's rules apply
        try:
            if vr == "IS":
                number = float(item)
                if number != int(number):
                    return None
                numbers.append(int(number))
            else:
                number = float(item)
                if number != number or number in (float("inf"), float("-inf")):
                    return None
                numbers.append(number)
        except ValueError:
            return None
    return {"vr": vr, "Value": numbers}
