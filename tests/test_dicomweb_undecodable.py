"""Objects Mosaic stores but cannot decode: every rendition route says why (406/422), never a 500."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import httpx
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings
from tests.auth_support import auth_headers
from tests.factory import make_instance, to_bytes


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("undecodable"), http=HttpSettings(port=0),
                             dicom=DicomSettings(port=0)))
    mosaic.start()
    yield mosaic
    mosaic.stop()


def _encapsulated(syntax: str, fragment: bytes, **extra: object) -> bytes:
    dataset = make_instance(**extra)
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelData = encapsulate([fragment])
    dataset["PixelData"].VR = "OB"
    return to_bytes(dataset)


def corrupt_jpeg() -> bytes:
    """A JPEG baseline frame: start of image, a broken header, end of image."""
    return _encapsulated(JPEGBaseline8Bit, b"\xff\xd8\xff\xdb\x00\x43" + b"\x07" * 60 + b"\xff\xd9")


def corrupt_rle() -> bytes:
    """An RLE header that claims 15 segments at offsets past the fragment's end."""
    header = struct.pack("<16L", 15, *range(64_000, 64_000 + 15 * 1000, 1000))
    return _encapsulated(RLELossless, header + b"\x01" * 64)


def unknown_vr() -> bytes:
    """A native image with one element of VR 'ZZ' (no such VR) before the pixel data."""
    data = to_bytes(make_instance())
    at = data.index(b"\xe0\x7f\x10\x00")  # Pixel Data
    return data[:at] + b"\x09\x00\x10\x10ZZ\x04\x00abcd" + data[at:]


def zeroed_tail() -> bytes:
    """A native image whose pixel data ends in zeros that run past its length (the tail of a zeroed disk)."""
    return to_bytes(make_instance()) + b"\x00" * 4096


OBJECTS = {"corrupt-jpeg": corrupt_jpeg, "corrupt-rle": corrupt_rle, "unknown-vr": unknown_vr,
           "zeroed-tail": zeroed_tail}


@pytest.mark.parametrize("kind", sorted(OBJECTS))
def test_every_rendition_route_answers_with_a_reason_not_500(node: Mosaic, kind: str) -> None:
    data = OBJECTS[kind]()
    result = node.ingest.store(data, door="test")
    root = f"http://127.0.0.1:{node.http_port}"
    series = f"{root}/dicom-web/studies/{result.study_instance_uid}/series/{result.series_instance_uid}"
    instance = f"{series}/instances/{result.sop_instance_uid}"
    routes = {
        "transcoded": (instance, {"Accept": 'multipart/related; type="application/dicom"; '
                                            'transfer-syntax=1.2.840.10008.1.2.1'}),
        "rendered": (f"{instance}/rendered", {"Accept": "image/jpeg"}),
        "frame rendered": (f"{instance}/frames/1/rendered", {"Accept": "image/png"}),
        "thumbnail": (f"{instance}/thumbnail", {}),
        "series thumbnail": (f"{series}/thumbnail", {}),
        "frames decoded": (f"{instance}/frames/1", {"Accept": "multipart/related; type=application/octet-stream; "
                                                              "transfer-syntax=1.2.840.10008.1.2.1"}),
        "frames as stored": (f"{instance}/frames/1", {"Accept": "multipart/related; type=application/octet-stream;"
                                                                " transfer-syntax=*"}),
        "pixel bulk data": (f"{instance}/bulkdata/7FE00010", {}),
        "metadata": (f"{instance}/metadata", {}),
        "stored": (instance, {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}),
        "WADO-URI jpeg": (f"{root}/wado?requestType=WADO&studyUID={result.study_instance_uid}&seriesUID="
                          f"{result.series_instance_uid}&objectUID={result.sop_instance_uid}", {}),
        "WADO-URI dicom": (f"{root}/wado?requestType=WADO&studyUID={result.study_instance_uid}&seriesUID="
                           f"{result.series_instance_uid}&objectUID={result.sop_instance_uid}"
                           "&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2.1", {}),
    }
    statuses = {}
    with httpx.Client(headers=auth_headers(node), timeout=60) as client:
        for name, (url, headers) in routes.items():
            answer = client.get(url, headers=headers)
            statuses[name] = answer.status_code
            if answer.status_code >= 400:
                assert answer.status_code in (406, 422), (name, answer.status_code, answer.text)
                assert result.sop_instance_uid in answer.json()["error"], (name, answer.text)
    assert statuses["stored"] == 200 and statuses["metadata"] == 200, statuses  # the bytes as sent stay available
