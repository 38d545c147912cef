"""QIDO-RS JSON built from indexed values equals what pydicom's to_json_dict gives for the same answer."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

from mosaic.app import Mosaic
from mosaic.config import Settings
from mosaic.dicomweb.dicomjson import plain_json
from mosaic.dicomweb.qido import parse_qido
from mosaic.index.query import Match, Scope
from tests.factory import make_bytes

_DROP = ("00080052", "00080054")  # QueryRetrieveLevel and RetrieveAETitle are DIMSE-only


def match_json(response: Dataset, match: Match, retrieve_url: str, *,
               include_all: bool = False) -> dict[str, Any]:
    """The reference: the C-FIND-style response through pydicom's to_json_dict."""
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


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("qidojson")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files("*.dcm")[:60] + get_testdata_files("chr*"):
            try:
                mosaic.ingest.store(Path(path), door="test")
            except Exception:
                continue
    for name in ("Müller^Jürgen", "Yamada^Tarou=山田^太郎=やまだ^たろう", "^^^^"):
        mosaic.ingest.store(make_bytes(patient_name=name, charset="ISO_IR 192", PatientWeight="70.5",
                                       PatientSize="", SeriesNumber=3), door="test")
    yield mosaic
    mosaic.stop()


@pytest.mark.parametrize(
    ("level", "parameters"),
    [
        ("STUDY", []),
        ("STUDY", [("includefield", "all")]),
        ("STUDY", [("includefield", "00101030,00101020,00081030,00080060")]),
        ("SERIES", [("includefield", "all")]),
        ("IMAGE", [("includefield", "ImageType,PixelSpacing,WindowCenter")]),
    ],
    ids=["study-defaults", "study-all", "study-includefield", "series-all", "instance-fields"],
)
def test_plain_json_equals_pydicom_json(node: Mosaic, level: str, parameters: list[tuple[str, str]]) -> None:
    request = parse_qido(level, parameters, {})
    query = request.query
    query.with_metadata = request.include_all
    matches = node.query.find(query, door="test", scope=Scope.everything())
    assert len(matches) > 5
    for match in matches:
        reference = match_json(node.query.response(match, query, root="STUDY"), match, "u",
                               include_all=request.include_all)
        fast = plain_json(node.query.indexed_values(match, query, root="STUDY"), match, "u",
                          include_all=request.include_all)
        for answer in (reference, fast):  # SpecificCharacterSet: meaningless in JSON, either may carry one
            answer.pop("00080005", None)
        assert fast == reference
