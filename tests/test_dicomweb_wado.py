"""WADO-RS retrieve, frames, bulk data, rendered and thumbnails, WADO-URI, metadata gzip and STOW-RS bad input,
over HTTP against a running Mosaic node (uvicorn) holding copies of pydicom's test files and synthetic objects.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from mosaic.app import Mosaic
from mosaic.config import DicomSettings, HttpSettings, Settings, StorageSettings
from mosaic.dicomweb.multipart import media_type_parameters
from tests.auth_support import auth_headers
from tests.dimse_support import start_node
from tests.factory import PREFIX, make_instance, to_bytes

EXPLICIT_LE = "1.2.840.10008.1.2.1"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
ANY_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def multipart_parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related response: (headers with lower-case names, body)."""
    media_type, parameters = media_type_parameters(response.headers["content-type"])
    assert media_type == "multipart/related", response.headers["content-type"]
    delimiter = b"--" + parameters["boundary"].encode()
    body = response.content
    assert body.startswith(delimiter) and body.rstrip(b"\r\n").endswith(delimiter + b"--")
    parts = []
    for piece in body[len(delimiter):].split(b"\r\n" + delimiter)[:-1]:
        head, _, content = piece.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def image_of(response: httpx.Response) -> Image.Image:
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@dataclass
class Stored:
    path: Path
    dataset: Dataset
    study: str
    series: str
    sop: str

    @property
    def url(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@dataclass
class Archive:
    node: Mosaic
    study: str
    items: dict[str, Stored] = field(default_factory=dict)

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.fetch(f"http://127.0.0.1:{self.node.http_port}/dicom-web{path}", **kwargs)

    def fetch(self, url: str, *, headers: dict[str, str] | None = None, **kwargs: object) -> httpx.Response:
        """GET an absolute URL (a BulkDataURI) as the node's administrator."""
        return httpx.get(url, timeout=30, headers={**auth_headers(self.node), **(headers or {})},
                         **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, *, headers: dict[str, str] | None = None, **kwargs: object) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{self.node.http_port}/dicom-web{path}", timeout=30,
                          headers={**auth_headers(self.node), **(headers or {})}, **kwargs)  # type: ignore[arg-type]


BUNDLED = ["CT_small.dcm", "rtdose.dcm", "rtdose_expb.dcm", "examples_ybr_color.dcm", "JPEG2000.dcm",
           "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_gdcm.dcm",
           "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "test-SR.dcm", "waveform_ecg.dcm",
           "examples_rgb_color.dcm", "examples_palette.dcm", "image_dfl.dcm"]


def _save(dataset: Dataset, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(path, dataset, enforce_file_format=True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """A running node holding one study: a series per bundled file (copied with new UIDs) and synthetic ones."""
    work = tmp_path_factory.mktemp("wado")
    node = Mosaic(Settings(data_dir=work / "mosaic", http=HttpSettings(port=0),  # type: ignore[call-arg]
                           dicom=DicomSettings(port=0)))  # type: ignore[call-arg]
    node.start()
    study = generate_uid(prefix=PREFIX)
    archive = Archive(node, study)
    datasets: dict[str, Dataset] = {}
    for name in BUNDLED:
        bundled = get_testdata_file(name)
        assert isinstance(bundled, str), f"pydicom test file {name} is missing"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            datasets[name] = pydicom.dcmread(bundled)
    # synthetic: 3-frame 16-bit and 2-frame 8-bit RGB uncompressed, MONOCHROME1/2 pairs with a known ramp
    frames16 = make_instance(rows=4, columns=5, NumberOfFrames=3)
    frames16.PixelData = np.arange(3 * 4 * 5, dtype="<u2").tobytes()
    datasets["frames16"] = frames16
    rgb = make_instance(rows=3, columns=4, NumberOfFrames=2)
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation, rgb.PlanarConfiguration = 3, "RGB", 0
    rgb.BitsAllocated, rgb.BitsStored, rgb.HighBit = 8, 8, 7
    rgb.PixelData = (np.arange(2 * 3 * 4 * 3, dtype=np.uint8) * 3).tobytes()
    datasets["rgb2"] = rgb
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        ramp = make_instance(rows=16, columns=16, RescaleIntercept=-1000, RescaleSlope=1,
                             WindowCenter=-872, WindowWidth=256)
        ramp.PhotometricInterpretation = photometric
        ramp.PixelData = np.arange(256, dtype="<u2").tobytes()
        datasets[f"ramp-{photometric}"] = ramp
    try:
        for number, (name, dataset) in enumerate(datasets.items(), start=1):
            dataset.StudyInstanceUID = study
            dataset.SeriesInstanceUID = generate_uid(prefix=PREFIX)
            dataset.SeriesNumber = number
            dataset.SOPInstanceUID = generate_uid(prefix=PREFIX)
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            dataset.PatientID, dataset.PatientName = "WADO-1", "Wado^Test"
            path = work / f"{number:02d}-{name}"
            _save(dataset, path)
            result = node.ingest.store(path, door="test")
            assert result.sop_instance_uid == dataset.SOPInstanceUID
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                archive.items[name] = Stored(path, pydicom.dcmread(path), study, str(dataset.SeriesInstanceUID),
                                             str(dataset.SOPInstanceUID))
        yield archive
    finally:
        node.stop()


# --- instances -------------------------------------------------------------------------------------------


def test_instance_as_stored_is_byte_identical_with_etag_and_304(archive: Archive) -> None:
    item = archive.items["CT_small.dcm"]
    response = archive.get(item.url, headers={"Accept": ANY_DICOM})
    assert response.status_code == 200
    [(headers, body)] = multipart_parts(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert body == item.path.read_bytes()
    etag = response.headers["etag"]
    assert etag == f'"{hashlib.sha256(item.path.read_bytes()).hexdigest()}"'
    assert int(response.headers["content-length"]) == len(response.content)
    assert archive.get(item.url, headers={"Accept": ANY_DICOM, "If-None-Match": etag}).status_code == 304
    assert archive.get(item.url, headers={"Accept": ANY_DICOM, "If-None-Match": f"W/{etag}"}).status_code == 304
    assert archive.get(item.url, headers={"Accept": ANY_DICOM, "If-None-Match": '"other"'}).status_code == 200
    again = archive.get(item.url, headers={"Accept": ANY_DICOM})
    assert again.content == response.content  # the boundary comes from the ETag: repeatable bytes
    single = archive.get(item.url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert single.headers["content-type"].startswith("application/dicom")
    assert single.content == item.path.read_bytes()


def test_default_transfer_syntax_rule(archive: Archive) -> None:
    """No transfer-syntax: Explicit VR LE (transcoded if needed), except lossy objects, sent as stored."""
    lossy = archive.items["examples_ybr_color.dcm"]  # JPEG Baseline
    [(headers, body)] = multipart_parts(archive.get(lossy.url, headers={"Accept": "multipart/related; "
                                                                                  "type=application/dicom"}))
    assert headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.4.50")
    assert body == lossy.path.read_bytes()
    for name in ("MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm", "rtdose.dcm", "image_dfl.dcm"):
        item = archive.items[name]
        [(headers, body)] = multipart_parts(archive.get(item.url))  # no Accept at all
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}", name
        received = pydicom.dcmread(io.BytesIO(body))
        assert received.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert np.array_equal(received.pixel_array, item.dataset.pixel_array), name
        assert received.SOPInstanceUID == item.sop


def test_transcoding_a_jpeg_instance_to_explicit_le_matches_pydicom(archive: Archive) -> None:
    item = archive.items["examples_ybr_color.dcm"]
    response = archive.get(item.url, headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'})
    assert response.status_code == 200
    [(headers, body)] = multipart_parts(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    received = pydicom.dcmread(io.BytesIO(body))
    assert received.file_meta.TransferSyntaxUID == EXPLICIT_LE
    expected = pydicom.dcmread(item.path)
    expected.decompress()
    assert np.array_equal(received.pixel_array, expected.pixel_array)
    assert received.PhotometricInterpretation == expected.PhotometricInterpretation == "RGB"
    assert received.SOPInstanceUID == item.sop
    stored = archive.get(item.url, headers={"Accept": ANY_DICOM})
    assert response.headers["etag"] != stored.headers["etag"]  # another representation, another tag


def test_unsupported_transfer_syntax_is_406(archive: Archive) -> None:
    item = archive.items["CT_small.dcm"]
    response = archive.get(item.url, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'})
    assert response.status_code == 406
    assert item.sop in response.json()["error"] and "1.2.840.10008.1.2.4.50" in response.json()["error"]
    assert archive.get(item.url, headers={"Accept": "application/dicom+json"}).status_code == 406
    study = archive.get(f"/studies/{archive.study}", headers={"Accept": "application/dicom"})
    assert study.status_code == 406  # a study only goes as multipart


def test_study_and_series_retrieval_send_every_instance_as_stored(archive: Archive) -> None:
    response = archive.get(f"/studies/{archive.study}", headers={"Accept": ANY_DICOM})
    assert response.status_code == 200
    bodies = [body for _, body in multipart_parts(response)]
    assert sorted(bodies) == sorted(item.path.read_bytes() for item in archive.items.values())
    item = archive.items["rtdose.dcm"]
    [(_, body)] = multipart_parts(archive.get(f"/studies/{archive.study}/series/{item.series}",
                                              headers={"Accept": ANY_DICOM}))
    assert body == item.path.read_bytes()


def test_unknown_uids_are_404_naming_the_uid(archive: Archive) -> None:
    item = archive.items["CT_small.dcm"]
    cases = {
        "/studies/1.2.3.4": "study 1.2.3.4",
        f"/studies/{archive.study}/series/1.2.3.5": "series 1.2.3.5",
        f"/studies/{archive.study}/series/{item.series}/instances/1.2.3.6": "instance 1.2.3.6",
        f"/studies/{archive.study}/series/{item.series}/instances/1.2.3.6/frames/1": "instance 1.2.3.6",
        f"/studies/{archive.study}/series/{item.series}/instances/1.2.3.6/rendered": "instance 1.2.3.6",
        f"/studies/{archive.study}/series/{item.series}/instances/1.2.3.6/bulkdata/7FE00010": "instance 1.2.3.6",
        "/studies/1.2.3.7/thumbnail": "study 1.2.3.7",
        f"/studies/{archive.study}/series/1.2.3.8/thumbnail": "series 1.2.3.8",
    }
    for path, named in cases.items():
        response = archive.get(path)
        assert response.status_code == 404, path
        assert named in response.json()["error"], (path, response.text)


# --- frames ----------------------------------------------------------------------------------------------


def test_uncompressed_frames_are_the_computed_byte_ranges(archive: Archive) -> None:
    item = archive.items["frames16"]
    pixels = item.dataset.PixelData
    response = archive.get(f"{item.url}/frames/2", headers={"Accept": OHIF_FRAMES})
    assert response.status_code == 200
    [(headers, body)] = multipart_parts(response)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert body == pixels[40:80]
    parts = multipart_parts(archive.get(f"{item.url}/frames/3,1", headers={"Accept": OHIF_FRAMES}))
    assert [body for _, body in parts] == [pixels[80:120], pixels[0:40]]
    assert parts[0][0]["content-location"].endswith(f"{item.url}/frames/3")
    rgb = archive.items["rgb2"]
    [(_, body)] = multipart_parts(archive.get(f"{rgb.url}/frames/2"))
    assert body == rgb.dataset.PixelData[36:72]
    single = archive.get(f"{rgb.url}/frames/1", headers={"Accept": "application/octet-stream"})
    assert single.headers["content-type"].startswith("application/octet-stream")
    assert single.content == rgb.dataset.PixelData[:36]
    for name in ("rtdose.dcm", "rtdose_expb.dcm"):  # implicit VR; big endian comes back little endian
        dose = archive.items[name]
        expected = dose.dataset.pixel_array[14].astype("<u4").tobytes()
        [(_, body)] = multipart_parts(archive.get(f"{dose.url}/frames/15", headers={"Accept": OHIF_FRAMES}))
        assert body == expected, name


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_gdcm.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_frames_are_the_encapsulated_fragments_in_their_media_type(archive: Archive, name: str) -> None:
    item = archive.items[name]
    count = int(item.dataset.get("NumberOfFrames", 1) or 1)
    fragments = list(generate_frames(item.dataset.PixelData, number_of_frames=count))
    numbers = sorted({1, count, (count + 1) // 2})
    syntax = str(item.dataset.file_meta.TransferSyntaxUID)
    media_type = {"1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
                  "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.90": "image/jp2",
                  "1.2.840.10008.1.2.4.91": "image/jp2", "1.2.840.10008.1.2.5": "image/dicom-rle"}[syntax]
    response = archive.get(f"{item.url}/frames/{','.join(map(str, numbers))}", headers={"Accept": OHIF_FRAMES})
    assert response.status_code == 200
    assert media_type_parameters(response.headers["content-type"])[1]["type"] == media_type
    parts = multipart_parts(response)
    assert [headers["content-type"] for headers, _ in parts] == [f"{media_type}; transfer-syntax={syntax}"] * len(
        numbers)
    assert [body for _, body in parts] == [fragments[number - 1] for number in numbers]
    # the client that takes only uncompressed octets gets the frame decompressed (pydicom's decoding)
    raw = archive.get(f"{item.url}/frames/{count}", headers={"Accept": "multipart/related; "
                                                                       "type=application/octet-stream"})
    [(headers, body)] = multipart_parts(raw)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    pixels = item.dataset.pixel_array
    expected = pixels[count - 1] if count > 1 else pixels
    assert body == expected.astype(expected.dtype.newbyteorder("<")).tobytes()
    # its own media type, asked by name
    own = archive.get(f"{item.url}/frames/1", headers={"Accept": f'multipart/related; type="{media_type}"'})
    assert [body for _, body in multipart_parts(own)] == [fragments[0]]


def test_frame_errors(archive: Archive) -> None:
    item = archive.items["examples_ybr_color.dcm"]
    assert archive.get(f"{item.url}/frames/31").status_code == 404
    assert "30 frame" in archive.get(f"{item.url}/frames/1,31").json()["error"]
    assert archive.get(f"{item.url}/frames/0").status_code == 404
    for bad in ("abc", "1,,2", "1;2", "-1", "1.5"):
        response = archive.get(f"{item.url}/frames/{bad}")
        assert response.status_code == 400, bad
    assert archive.get(f"{archive.items['test-SR.dcm'].url}/frames/1").status_code == 404
    uncompressed = archive.items["CT_small.dcm"]
    response = archive.get(f"{uncompressed.url}/frames/1", headers={"Accept": "multipart/related; type=image/jpeg"})
    assert response.status_code == 406
    assert "uncompressed" in response.json()["error"]


# --- bulk data -------------------------------------------------------------------------------------------


def test_bulkdata_uris_from_metadata_resolve_to_the_values(archive: Archive) -> None:
    item = archive.items["waveform_ecg.dcm"]
    metadata = archive.get(f"{item.url}/metadata").json()[0]
    uri = metadata["54000100"]["Value"][0]["54001010"]["BulkDataURI"]
    assert uri.startswith(f"http://127.0.0.1:{archive.node.http_port}/dicom-web{item.url}/bulkdata/")
    expected = bytes(item.dataset.WaveformSequence[0].WaveformData)
    response = archive.fetch(uri)
    assert response.status_code == 200
    [(headers, body)] = multipart_parts(response)
    assert headers["content-type"] == "application/octet-stream"
    assert body == expected
    ranged = archive.fetch(uri, headers={"Range": "bytes=10-109", "Accept": "application/octet-stream"})
    assert ranged.status_code == 206
    assert ranged.content == expected[10:110]
    assert ranged.headers["content-range"] == f"bytes 10-109/{len(expected)}"
    assert archive.fetch(uri, headers={"Range": f"bytes={len(expected)}-"}).status_code == 416
    assert archive.get(f"{item.url}/bulkdata/00091001").status_code == 404  # no such element
    assert archive.get(f"{item.url}/bulkdata/xyz").status_code == 400
    # Pixel Data: the frames; big endian pixel data comes back little endian
    big = archive.items["MR_small_bigendian.dcm"]
    uri = archive.get(f"{big.url}/metadata").json()[0]["7FE00010"]["BulkDataURI"]
    [(_, body)] = multipart_parts(archive.fetch(uri))
    assert body == big.dataset.pixel_array.astype("<i2").tobytes()


# --- rendered and thumbnails -----------------------------------------------------------------------------


def test_rendered_jpeg_and_png_with_viewport(archive: Archive) -> None:
    item = archive.items["CT_small.dcm"]
    response = archive.get(f"{item.url}/rendered")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert image_of(response).size == (128, 128)
    response = archive.get(f"{item.url}/rendered", params={"viewport": "64,32"}, headers={"Accept": "image/png"})
    assert response.headers["content-type"] == "image/png"
    assert image_of(response).size == (64, 32)
    response = archive.get(f"{item.url}/rendered", params={"viewport": "40,40,0,0,64,64", "quality": "50"})
    assert image_of(response).size == (40, 40)
    multi = archive.items["examples_ybr_color.dcm"]
    response = archive.get(f"{multi.url}/frames/2/rendered", params={"accept": "image/png"})
    image = image_of(response)
    assert image.mode == "RGB" and image.size == (320, 240)
    rendered = np.asarray(image).astype(int)
    assert np.abs(rendered - multi.dataset.pixel_array[1].astype(int)).max() <= 1
    several = archive.get(f"{multi.url}/frames/1,2/rendered")
    assert [Image.open(io.BytesIO(body)).format for _, body in multipart_parts(several)] == ["JPEG", "JPEG"]
    palette = archive.get(f"{archive.items['examples_palette.dcm'].url}/rendered", headers={"Accept": "image/png"})
    assert image_of(palette).mode == "RGB"


def test_window_and_modality_lut_and_monochrome1(archive: Archive) -> None:
    ramp = archive.items["ramp-MONOCHROME2"]  # stored 0…255, intercept -1000; window -872/256 maps it 1:1
    png = {"Accept": "image/png"}
    shown = np.asarray(image_of(archive.get(f"{ramp.url}/rendered", headers=png))).ravel()
    assert np.array_equal(shown, np.arange(256))
    narrow = np.asarray(image_of(archive.get(f"{ramp.url}/rendered", params={"window": "-872,64"},
                                             headers=png))).ravel()
    assert not np.array_equal(narrow, shown)
    linear = np.rint(np.clip((np.arange(256) - 127.5) / 63 + 0.5, 0, 1) * 255)  # PS3.3 C.11.2.1.2.1
    assert np.array_equal(narrow, linear)
    sigmoid = np.asarray(image_of(archive.get(f"{ramp.url}/rendered", params={"window": "-872,64,sigmoid"},
                                              headers=png))).ravel()
    assert not np.array_equal(sigmoid, narrow)
    inverted = archive.items["ramp-MONOCHROME1"]
    shown1 = np.asarray(image_of(archive.get(f"{inverted.url}/rendered", headers=png))).ravel()
    assert np.array_equal(shown1, 255 - np.arange(256))
    ct = archive.items["CT_small.dcm"]
    soft = np.asarray(image_of(archive.get(f"{ct.url}/rendered", params={"window": "40,400"}, headers=png)))
    bone = np.asarray(image_of(archive.get(f"{ct.url}/rendered", params={"window": "600,2000"}, headers=png)))
    assert not np.array_equal(soft, bone)
    for bad in ("40", "a,b", "40,0", "40,400,cubic"):
        assert archive.get(f"{ct.url}/rendered", params={"window": bad}).status_code == 400, bad
    assert archive.get(f"{ct.url}/rendered", params={"viewport": "0,10"}).status_code == 400
    assert archive.get(f"{ct.url}/rendered", params={"quality": "101"}).status_code == 400


def test_rendered_refuses_non_images_and_other_media_types(archive: Archive) -> None:
    report = archive.get(f"{archive.items['test-SR.dcm'].url}/rendered")
    assert report.status_code == 406 and "no pixel data" in report.json()["error"]
    ct = archive.items["CT_small.dcm"]
    assert archive.get(f"{ct.url}/rendered", headers={"Accept": "image/gif"}).status_code == 406
    assert archive.get(f"{ct.url}/frames/2/rendered").status_code == 404


def test_thumbnails_at_three_levels_are_cached_and_tagged(archive: Archive) -> None:
    ramp = archive.items["ramp-MONOCHROME2"]
    for path in (f"/studies/{archive.study}/thumbnail", f"/studies/{archive.study}/series/{ramp.series}/thumbnail",
                 f"{archive.items['examples_ybr_color.dcm'].url}/thumbnail"):
        response = archive.get(path)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg", path
        assert max(image_of(response).size) <= 128
        again = archive.get(path)
        assert again.content == response.content
        assert archive.get(path, headers={"If-None-Match": response.headers["etag"]}).status_code == 304
    study = image_of(archive.get(f"/studies/{archive.study}/thumbnail"))
    assert study.size == (128, 128)  # the first series: CT_small, 128 x 128
    wide = image_of(archive.get(f"{archive.items['examples_ybr_color.dcm'].url}/thumbnail"))
    assert wide.size == (128, 96)  # aspect ratio kept
    png = archive.get(f"/studies/{archive.study}/thumbnail", params={"viewport": "32,32"},
                      headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png" and image_of(png).size == (32, 32)
    report = archive.items["test-SR.dcm"]
    assert archive.get(f"/studies/{archive.study}/series/{report.series}/thumbnail").status_code == 404


# --- WADO-URI --------------------------------------------------------------------------------------------


def test_wado_uri(archive: Archive) -> None:
    ct = archive.items["CT_small.dcm"]
    uids = {"requestType": "WADO", "studyUID": ct.study, "seriesUID": ct.series, "objectUID": ct.sop}
    dicom = archive.get("/wado", params={**uids, "contentType": "application/dicom"})
    assert dicom.status_code == 200 and dicom.headers["content-type"] == "application/dicom"
    assert dicom.content == ct.path.read_bytes()
    jpeg = archive.get("/wado", params=uids)
    assert jpeg.headers["content-type"] == "image/jpeg" and image_of(jpeg).size == (128, 128)
    small = archive.get("/wado", params={**uids, "contentType": "image/png", "rows": "32"})
    assert image_of(small).size == (32, 32)
    windowed = archive.get("/wado", params={**uids, "contentType": "image/png", "windowCenter": "40",
                                            "windowWidth": "80"})
    assert not np.array_equal(np.asarray(image_of(windowed)), np.asarray(image_of(
        archive.get("/wado", params={**uids, "contentType": "image/png"}))))
    multi = archive.items["examples_ybr_color.dcm"]
    frame = archive.get("/wado", params={"requestType": "WADO", "studyUID": multi.study, "seriesUID": multi.series,
                                         "objectUID": multi.sop, "frameNumber": "30", "columns": "160"})
    assert image_of(frame).size == (160, 120)
    big = archive.items["MR_small_bigendian.dcm"]
    converted = archive.get("/wado", params={"requestType": "WADO", "studyUID": big.study, "seriesUID": big.series,
                                             "objectUID": big.sop, "contentType": "application/dicom"})
    assert pydicom.dcmread(io.BytesIO(converted.content)).file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert archive.get("/wado", params={k: v for k, v in uids.items() if k != "requestType"}).status_code == 400
    assert archive.get("/wado", params={**uids, "requestType": "WADO-RS"}).status_code == 400
    assert archive.get("/wado", params={**uids, "windowCenter": "40"}).status_code == 400
    assert archive.get("/wado", params={**uids, "objectUID": "1.2.3.9"}).status_code == 404
    assert archive.get("/wado", params={**uids, "contentType": "text/html"}).status_code == 406
    assert archive.get("/wado", params={**uids, "frameNumber": "2"}).status_code == 404
    report = archive.items["test-SR.dcm"]
    assert archive.get("/wado", params={**uids, "seriesUID": report.series, "objectUID": report.sop}
                       ).status_code == 406


# --- metadata gzip and STOW-RS bad input -----------------------------------------------------------------


def test_metadata_is_gzipped_when_asked(archive: Archive) -> None:
    response = archive.get(f"/studies/{archive.study}/metadata", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert len(response.json()) == len(archive.items)
    plain = archive.get(f"/studies/{archive.study}/metadata", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers


def _multipart_body(parts: list[bytes], boundary: str = "wado-test") -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
                    for part in parts)
    return body + b"--" + boundary.encode() + b"--\r\n"


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=wado-test'


def test_stow_bad_inputs(archive: Archive) -> None:
    good = to_bytes(make_instance(patient_id="STOW-BAD"))
    response = archive.post("/studies", content=good, headers={"Content-Type": "application/dicom"})
    assert response.status_code == 415
    truncated = _multipart_body([good])[:-30]
    assert archive.post("/studies", content=truncated, headers={"Content-Type": STOW_TYPE}).status_code == 400
    rubbish = archive.post("/studies", content=_multipart_body([b"this is not DICOM" * 20]),
                           headers={"Content-Type": STOW_TYPE})
    assert rubbish.status_code == 409
    failed = rubbish.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"] for item in failed] == [[0xC000]]
    mixed = archive.post("/studies", content=_multipart_body([good, b"\x00" * 300]),
                         headers={"Content-Type": STOW_TYPE})
    assert mixed.status_code == 202
    assert len(mixed.json()["00081199"]["Value"]) == 1 and len(mixed.json()["00081198"]["Value"]) == 1


# --- another blob store ----------------------------------------------------------------------------------


def test_retrieval_from_the_s3_blob_store(tmp_path: Path, s3_storage_settings: StorageSettings) -> None:
    """Without local files: instances via a temporary copy, frames and bulk data by ranged reads."""
    node = start_node(tmp_path / "mosaic", storage=s3_storage_settings)
    try:
        archive = Archive(node, "")
        stored = {}
        for name in ("examples_ybr_color.dcm", "waveform_ecg.dcm", "MR_small_bigendian.dcm"):
            path = Path(str(get_testdata_file(name)))
            result = node.ingest.store(path, door="test")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stored[name] = Stored(path, pydicom.dcmread(path), result.study_instance_uid,
                                      result.series_instance_uid, result.sop_instance_uid)
        jpeg = stored["examples_ybr_color.dcm"]
        [(_, body)] = multipart_parts(archive.get(jpeg.url, headers={"Accept": ANY_DICOM}))
        assert body == jpeg.path.read_bytes()
        fragments = list(generate_frames(jpeg.dataset.PixelData, number_of_frames=30))
        parts = multipart_parts(archive.get(f"{jpeg.url}/frames/7,30", headers={"Accept": OHIF_FRAMES}))
        assert [body for _, body in parts] == [fragments[6], fragments[29]]
        assert image_of(archive.get(f"{jpeg.url}/rendered")).size == (320, 240)
        big = stored["MR_small_bigendian.dcm"]
        [(_, body)] = multipart_parts(archive.get(big.url))
        assert np.array_equal(pydicom.dcmread(io.BytesIO(body)).pixel_array, big.dataset.pixel_array)
        [(_, body)] = multipart_parts(archive.get(f"{big.url}/bulkdata/7FE00010"))
        assert body == big.dataset.pixel_array.astype("<i2").tobytes()
        wave = stored["waveform_ecg.dcm"]
        [(_, body)] = multipart_parts(archive.get(f"{wave.url}/bulkdata/54001010"))
        assert body == bytes(wave.dataset.WaveformSequence[0].WaveformData)
    finally:
        node.stop()
