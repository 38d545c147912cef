"""The indexed metadata is exactly what pydicom's DICOM JSON would be, over the whole test corpus."""

from __future__ import annotations

import warnings
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

from mosaic.core.dicom import BULK_TAGS, bulk_data_uri, metadata_json

THRESHOLD = 1024


def pydicom_metadata(dataset: Dataset) -> dict[str, Any]:
    """The reference: every element through pydicom's own to_json_dict."""
    result: dict[str, Any] = {}
    for element in dataset:
        if element.tag.group == 0x0002:
            continue
        if element.tag in BULK_TAGS:
            result[f"{element.tag:08X}"] = {"vr": element.VR, "BulkDataURI": bulk_data_uri(element.tag)}
            continue
        try:
            result[f"{element.tag:08X}"] = element.to_json_dict(
                bulk_data_element_handler=lambda elem: bulk_data_uri(elem.tag), bulk_data_threshold=THRESHOLD)
        except Exception:
            continue
    return result


def corpus() -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [path for path in get_testdata_files() if path.endswith((".dcm", ".DCM")) or "charset" in path]


@pytest.mark.parametrize("path", corpus(), ids=lambda path: path.rsplit("/", 1)[-1])
def test_metadata_equals_pydicom_json(path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fast_source = pydicom.dcmread(path, defer_size=64 * 1024)
            reference_source = pydicom.dcmread(path)
        except Exception:
            pytest.skip("not readable by pydicom")
        fast = metadata_json(fast_source, THRESHOLD)
        reference = pydicom_metadata(reference_source)
    for tag, element in reference.items():
        if "BulkDataURI" in element or "BulkDataURI" in fast.get(tag, {}):
            continue  # large values: both say "bulk data", by size rules that differ only in the threshold edge
        assert fast.get(tag) == element, f"{tag}: {fast.get(tag)} != {element}"
