"""DICOM JSON (PS3.18 F.2) as QIDO-RS and WADO-RS metadata answer it: one implementation for both."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset

from mosaic.index.query import Match

MEDIA_TYPE = "application/dicom+json"
_DROP = ("00080052", "00080054")  # QueryRetrieveLevel and RetrieveAETitle are DIMSE-only


def match_json(response: Dataset, match: Match, retrieve_url: str, *,
               include_all: bool = False) -> dict[str, Any]:
    """A QIDO-RS result object: the C-FIND-style response plus RetrieveURL (and everything when asked)."""
    result: dict[str, Any] = {}
    if include_all and match.metadata:
        for tag, element in match.metadata.items():
            if "BulkDataURI" not in element and "InlineBinary" not in element:
                result[tag] = element
    result.update(response.to_json_dict(bulk_data_threshold=1 << 20))
    for tag in _DROP:
        result.pop(tag, None)
    result["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    return dict(sorted(result.items()))


def instance_metadata(metadata_json: str, instance_url: str) -> str:
    """Stored DICOM JSON with each BulkDataURI made absolute (text substitution: the JSON is not re-parsed)."""
    return metadata_json.replace('"BulkDataURI":"bulkdata/', f'"BulkDataURI":"{instance_url}/bulkdata/')


def json_array(objects: Iterable[str]) -> bytes:
    return ("[" + ",".join(objects) + "]").encode("utf-8")


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
