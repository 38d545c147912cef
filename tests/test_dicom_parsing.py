"""Parsing at the door: large values are never read into memory, and truncation is still detected."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mosaic.core.dicom import metadata_json, parse_instance
from mosaic.core.errors import InvalidObject
from tests.factory import make_instance


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    dataset = make_instance(rows=512, columns=512)
    dataset.NumberOfFrames = 40
    dataset.PixelData = np.zeros((40, 512, 512), dtype=np.uint16).tobytes()  # 20 MB of pixel data
    path = tmp_path / "big.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_parsing_and_metadata_do_not_read_the_pixel_data(big_file: Path) -> None:
    tracemalloc.start()
    try:
        parsed = parse_instance(big_file)
        metadata = metadata_json(parsed.dataset, 1024)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"parsing allocated {peak / 1e6:.1f} MB for a 20 MB instance"
    assert metadata["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
    assert metadata["00280008"]["Value"] == [40]


def test_a_big_file_cut_short_is_still_truncated(big_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(big_file.read_bytes()[:-1000])
    with pytest.raises(InvalidObject, match="truncated"):
        parse_instance(cut)
