"""DICOM JSON (PS3.18 F.2) as QIDO-RS and WADO-RS metadata answer it: one implementation for both."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from mosaic.index.query import Match

MEDIA_TYPE = "application/dicom+json"
_DROP = ("00080052", "00080054")  # QueryRetrieveLevel and RetrieveAETitle are DIMSE-only


_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})


def plain_json(values: list[tuple[str, int, str, Any, dict[str, Any] | None]], match: Match, retrieve_url: str, *,
               include_all: bool = False) -> dict[str, Any]:
    """A QIDO-RS result object (C-FIND-style attributes plus RetrieveURL, everything stored when asked),
    built from indexed values without pydicom (tests/test_qido_json.py checks it against pydicom's JSON).

    ``values`` holds (keyword, tag, VR, indexed value or None, stored metadata element or None).
    """
    result: dict[str, Any] = {}
    if include_all and match.metadata:
        for tag_text, stored_element in match.metadata.items():
            if "BulkDataURI" not in stored_element and "InlineBinary" not in stored_element:
                result[tag_text] = stored_element
    for _keyword, tag, vr, value, stored in values:
        key = f"{tag:08X}"
        if value is None:
            result[key] = stored if stored is not None else {"vr": vr}
            continue
        element: dict[str, Any] = {"vr": vr}
        items = _json_items(vr, value)
        if items:
            element["Value"] = items
        result[key] = element
    for tag_text in _DROP:
        result.pop(tag_text, None)
    result["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    return dict(sorted(result.items()))


def _json_items(vr: str, value: Any) -> list[Any]:
    if value == "" or value is None:
        return []
    if isinstance(value, list | tuple):
        texts = [str(item) for item in value]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return [value if vr != "DS" else float(value)]
    elif vr in _SINGLE_VALUED:
        texts = [str(value)]
    else:
        texts = str(value).split("\\")
    if vr == "PN":
        return [_person_name(text) for text in texts]
    if vr == "IS":
        return [int(float(text)) if text.strip() else None for text in texts]
    if vr == "DS":
        return [float(text) if text.strip() else None for text in texts]
    if vr in ("US", "UL", "SS", "SL"):
        return [int(text) for text in texts]
    return texts


def _person_name(text: str) -> dict[str, str]:
    groups = text.split("=")
    name: dict[str, str] = {}
    for label, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            name[label] = group
    return name


def instance_metadata(metadata_json: str, instance_url: str) -> str:
    """Stored DICOM JSON with each BulkDataURI made absolute (text substitution: the JSON is not re-parsed)."""
    return metadata_json.replace('"BulkDataURI":"bulkdata/', f'"BulkDataURI":"{instance_url}/bulkdata/')


def json_array(objects: Iterable[str]) -> bytes:
    return ("[" + ",".join(objects) + "]").encode("utf-8")


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
