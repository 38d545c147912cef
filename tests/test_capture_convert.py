"""The capture converters: photos, video and PDF in, standard DICOM objects out, what a user would notice."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.encaps import generate_fragments
from pydicom.uid import HEVCMP51, MPEG4HP41, ExplicitVRLittleEndian, JPEGBaseline8Bit

from mosaic.services.capture import CaptureContext, CaptureError, capture, part10, sniff
from tests import capture_media as media

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
CONTEXT = CaptureContext(PatientID="P-1", StudyInstanceUID="1.2.826.0.1.3680043.10.1.1",
                         SeriesInstanceUID="1.2.826.0.1.3680043.10.1.1.1", PatientName="Doe^Jane",
                         body_site_code="40983000", body_site_meaning="Upper arm", laterality="L",
                         view="close-up", description="wound day 3", specialty="dermatology", facility="Mosaic General",
                         encounter="V-42", encounter_issuer="HIS", operator="Nurse^Ann")
needs_ffmpeg = pytest.mark.skipif(not media.ffmpeg_available(), reason="ffmpeg/ffprobe not installed "
                                  "(scripts/install-system-deps.sh installs them)")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def fragments_of(dataset: pydicom.Dataset) -> list[bytes]:
    """The Pixel Data's fragments (after the Basic Offset Table item)."""
    value = dataset.PixelData
    assert value[:4] == b"\xfe\xff\x00\xe0"
    return list(generate_fragments(value[8 + int.from_bytes(value[4:8], "little"):]))


def fragment(dataset: pydicom.Dataset) -> bytes:
    return b"".join(fragments_of(dataset))


def private_original(dataset: pydicom.Dataset) -> tuple[bytes, str, str]:
    block = dataset.private_block(0x0071, "MOSAIC CAPTURE")
    return block[0x10].value[: block[0x13].value], block[0x11].value, block[0x12].value


# --- JPEG ---------------------------------------------------------------------------------------------------

def test_plain_jpeg_is_encapsulated_byte_for_byte(tmp_path: Path, workdir: Path) -> None:
    source = media.jpeg(tmp_path / "wound.jpg")
    captured = capture(source, CONTEXT, filename="wound.jpg", claimed_type="image/jpeg", workdir=workdir)
    dataset = pydicom.dcmread(captured.path)
    original = source.read_bytes()
    assert (captured.kind, captured.media_type, captured.SOPClassUID) == ("photo", "image/jpeg", VL_PHOTOGRAPHIC)
    assert dataset.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert fragment(dataset) in (original, original + b"\0")
    assert (dataset.Rows, dataset.Columns, dataset.SamplesPerPixel) == (480, 640, 3)
    assert dataset.PhotometricInterpretation == "YBR_FULL_422"
    assert dataset.LossyImageCompression == "01" and dataset.LossyImageCompressionMethod == "ISO_10918_1"
    assert dataset.ImageType == ["ORIGINAL", "PRIMARY"]
    assert dataset.ImageLaterality == "L" and dataset.AcquisitionContextDescription == "close-up"
    assert dataset.AnatomicRegionSequence[0].CodeValue == "40983000"
    assert dataset.AnatomicRegionSequence[0].CodingSchemeDesignator == "SCT"
    assert dataset.AdmissionID == "V-42" and dataset.IssuerOfAdmissionIDSequence[0].LocalNamespaceEntityID == "HIS"
    assert dataset.InstitutionalDepartmentName == "dermatology" and dataset.InstitutionName == "Mosaic General"
    assert dataset.InstanceNumber == 1 and dataset.Modality == "XC"
    assert "SpecificCharacterSet" not in dataset
    assert np.asarray(dataset.pixel_array).shape == (480, 640, 3)


def test_jpeg_gps_is_removed_and_the_image_data_kept(tmp_path: Path, workdir: Path) -> None:
    source = media.jpeg(tmp_path / "gps.jpg", gps=True, xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>')
    assert Image.open(source).getexif().get_ifd(0x8825)
    dataset = pydicom.dcmread(capture(source, CONTEXT, filename="gps.jpg", workdir=workdir).path)
    stored = fragment(dataset)
    with Image.open(io.BytesIO(stored)) as image:
        assert image.getexif().get_ifd(0x8825) == {}
        assert image.getexif()[0x010F] == "Acme"  # the rest of EXIF stays
        assert "xmp" not in image.info
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(source)))
    original = source.read_bytes()
    scan = original.rindex(b"\xff\xda")
    assert stored.rstrip(b"\0").endswith(original[scan:])  # the entropy-coded data is byte-identical
    assert b"http://ns.adobe.com/xap/1.0/" not in stored
    assert dataset.Manufacturer == "Acme" and dataset.ManufacturerModelName == "Phone 9"
    assert dataset.AcquisitionDateTime == "20240506070809.000000+0200"


def test_jpeg_orientation_is_applied_losslessly(tmp_path: Path, workdir: Path) -> None:
    source = media.jpeg(tmp_path / "rotated.jpg", 640, 480, orientation=6, gps=True)
    dataset = pydicom.dcmread(capture(source, CONTEXT, filename="rotated.jpg", workdir=workdir).path)
    assert (dataset.Rows, dataset.Columns) == (640, 480)
    assert dataset.ImageType[0] == "DERIVED"
    assert "EXIF orientation 6 applied losslessly" in dataset.DerivationDescription
    with Image.open(io.BytesIO(fragment(dataset))) as image:
        assert image.size == (480, 640)
        assert image.getexif().get_ifd(0x8825) == {}
        upright = np.asarray(image.convert("RGB"))
    # the red block that was at the top left is at the top right after a 90° clockwise turn
    assert upright[10, -10, 0] > 200 and upright[10, -10, 1] < 60
    assert dataset.Manufacturer == "Acme"


def test_jpeg_orientation_trims_partial_mcus_and_says_so(tmp_path: Path, workdir: Path) -> None:
    source = media.jpeg(tmp_path / "odd.jpg", 100, 75, orientation=6)
    dataset = pydicom.dcmread(capture(source, CONTEXT, filename="odd.jpg", workdir=workdir).path)
    assert dataset.Columns < 75 and dataset.Rows == 100
    assert "trimmed" in dataset.DerivationDescription


def test_progressive_jpeg_is_transcoded_losslessly_to_baseline(tmp_path: Path, workdir: Path) -> None:
    source = media.jpeg(tmp_path / "progressive.jpg", progressive=True)
    dataset = pydicom.dcmread(capture(source, CONTEXT, filename="progressive.jpg", workdir=workdir).path)
    assert dataset.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    with Image.open(io.BytesIO(fragment(dataset))) as image:
        assert not image.info.get("progressive")
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(source)))


# --- other stills -------------------------------------------------------------------------------------------

def test_png_is_lossless_and_the_original_is_kept(tmp_path: Path, workdir: Path) -> None:
    source = media.png(tmp_path / "lesion.png")
    dataset = pydicom.dcmread(capture(source, CONTEXT, filename="lesion.png", workdir=workdir).path)
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dataset.PhotometricInterpretation == "RGB" and dataset.LossyImageCompression == "00"
    assert np.array_equal(dataset.pixel_array, np.asarray(Image.open(source).convert("RGB")))
    assert private_original(dataset) == (source.read_bytes(), "image/png", "lesion.png")


def test_png_alpha_is_composited_on_white(tmp_path: Path, workdir: Path) -> None:
    source = media.png(tmp_path / "alpha.png", alpha=True)
    dataset = pydicom.dcmread(capture(source, CONTEXT, filename="alpha.png", workdir=workdir).path)
    assert dataset.SamplesPerPixel == 3 and "white" in dataset.DerivationDescription
    rgba = np.asarray(Image.open(source)).astype(int)
    expected = (rgba[..., :3] * 128 + 255 * 127 + 127) // 255
    assert np.abs(dataset.pixel_array.astype(int) - expected).max() <= 1


def test_png_gps_is_removed_from_the_kept_original(tmp_path: Path, workdir: Path) -> None:
    source = tmp_path / "gps.png"
    media.picture(64, 48).save(source, "PNG", exif=media.exif(1, gps=True))
    dataset = pydicom.dcmread(capture(source, CONTEXT, filename="gps.png", workdir=workdir).path)
    kept = private_original(dataset)[0]
    assert len(kept) == source.stat().st_size and kept != source.read_bytes()
    with Image.open(io.BytesIO(kept)) as image:
        assert image.getexif().get_ifd(0x8825) == {} and image.getexif()[0x010F] == "Acme"
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(source)))


def test_16_bit_grayscale_png_stays_16_bit(tmp_path: Path, workdir: Path) -> None:
    source = media.png16(tmp_path / "gray16.png")
    dataset = pydicom.dcmread(capture(source, CONTEXT, filename="gray16.png", workdir=workdir).path)
    assert (dataset.PhotometricInterpretation, dataset.BitsAllocated, dataset.BitsStored) == ("MONOCHROME2", 16, 16)
    assert np.array_equal(dataset.pixel_array, np.asarray(Image.open(source)).astype(np.uint16))


def test_tiff_orientation_is_applied(tmp_path: Path, workdir: Path) -> None:
    source = media.tiff(tmp_path / "scan.tif", 300, 200, orientation=6)
    dataset = pydicom.dcmread(capture(source, CONTEXT, filename="scan.tif", workdir=workdir).path)
    assert (dataset.Rows, dataset.Columns) == (300, 200)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(source)))
    assert np.array_equal(dataset.pixel_array, upright)
    assert private_original(dataset)[0] == source.read_bytes()


def test_heic_is_decoded_and_its_gps_removed_from_the_kept_original(tmp_path: Path, workdir: Path) -> None:
    source = media.heic(tmp_path / "iphone.heic")
    if source is None:
        pytest.skip("pillow_heif has no HEIC encoder in this build")
    captured = capture(source, CONTEXT, filename="iphone.heic", claimed_type="image/heic", workdir=workdir)
    dataset = pydicom.dcmread(captured.path)
    assert captured.media_type == "image/heic" and (dataset.Rows, dataset.Columns) == (192, 256)
    kept = private_original(dataset)[0]
    assert len(kept) == source.stat().st_size
    import pillow_heif

    pillow_heif.register_heif_opener()
    with Image.open(io.BytesIO(kept)) as image:
        assert image.getexif().get_ifd(0x8825) == {}
        assert np.array_equal(np.asarray(image.convert("RGB")), dataset.pixel_array)


# --- video --------------------------------------------------------------------------------------------------

def ffprobe_codec(data: bytes, tmp_path: Path) -> str:
    extracted = tmp_path / "extracted.mp4"
    extracted.write_bytes(data)
    result = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                             "stream=codec_name", "-of", "default=nw=1:nk=1", str(extracted)],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


@needs_ffmpeg
def test_h264_mp4_is_encapsulated_whole(tmp_path: Path, workdir: Path) -> None:
    source = media.clip(tmp_path / "clip.mp4", "libx264", rate=25)
    captured = capture(source, CONTEXT, filename="clip.mp4", claimed_type="video/mp4", workdir=workdir)
    dataset = pydicom.dcmread(captured.path)
    assert captured.SOPClassUID == VIDEO_PHOTOGRAPHIC and dataset.Modality == "XC"
    assert dataset.file_meta.TransferSyntaxUID == MPEG4HP41
    fragments = fragments_of(dataset)
    assert len(fragments) == 1
    original = source.read_bytes()
    assert fragments[0] in (original, original + b"\0")
    assert ffprobe_codec(fragments[0], tmp_path) == "h264"
    assert (dataset.Rows, dataset.Columns, dataset.NumberOfFrames) == (240, 320, 25)
    assert dataset.FrameTime == 40 and dataset.CineRate == 25 and dataset.RecommendedDisplayFrameRate == 25
    assert dataset.FrameIncrementPointer == 0x00181063
    assert (dataset.PhotometricInterpretation, dataset.SamplesPerPixel, dataset.BitsAllocated) == (
        "YBR_PARTIAL_420", 3, 8)
    assert dataset.PlanarConfiguration == 0 and dataset.LossyImageCompression == "01"
    assert dataset.Laterality == "L"
    if shutil.which("dcmdump"):
        dump = subprocess.run(["dcmdump", "-q", str(captured.path)], capture_output=True, text=True)
        assert dump.returncode == 0 and "E:" not in dump.stderr
    if shutil.which("dciodvfy"):
        check = subprocess.run(["dciodvfy", str(captured.path)], capture_output=True, text=True)
        assert "Error" not in check.stderr, check.stderr


@needs_ffmpeg
def test_hevc_mp4_is_endoscopic_when_asked(tmp_path: Path, workdir: Path) -> None:
    source = media.clip(tmp_path / "scope.mp4", "libx265")
    context = CaptureContext(PatientID="P-1", StudyInstanceUID=CONTEXT.StudyInstanceUID,
                             SeriesInstanceUID=CONTEXT.SeriesInstanceUID, video_kind="endoscopic")
    captured = capture(source, context, filename="scope.mp4", workdir=workdir)
    dataset = pydicom.dcmread(captured.path)
    assert captured.SOPClassUID == VIDEO_ENDOSCOPIC and dataset.Modality == "ES"
    assert dataset.file_meta.TransferSyntaxUID == HEVCMP51
    stream = fragment(dataset)
    assert stream.rstrip(b"\0") == source.read_bytes().rstrip(b"\0")
    assert ffprobe_codec(stream, tmp_path) == "hevc"


@needs_ffmpeg
def test_mov_is_rewrapped_as_mp4_without_reencoding(tmp_path: Path, workdir: Path) -> None:
    source = media.clip(tmp_path / "phone.mov", "libx264", extra=["-metadata", "location=+48.8584+002.2945/"])
    captured = capture(source, CONTEXT, filename="phone.mov", workdir=workdir)
    dataset = pydicom.dcmread(captured.path)
    assert captured.media_type == "video/quicktime"
    stream = fragment(dataset)
    assert stream[4:8] == b"ftyp" and ffprobe_codec(stream, tmp_path) == "h264"
    assert b"+48.8584" not in stream
    assert "rewrapped as MP4" in dataset.DerivationDescription
    import av

    def packets(data: bytes) -> list[bytes]:
        with av.open(io.BytesIO(data)) as container:
            return [bytes(p) for p in container.demux(video=0) if p.size]

    assert packets(stream) == packets(source.read_bytes())  # the coded stream itself is untouched


@needs_ffmpeg
def test_mp4_location_is_blanked_in_place(tmp_path: Path, workdir: Path) -> None:
    source = media.clip(tmp_path / "where.mp4", "libx264", extra=["-metadata", "location=+48.8584+002.2945/"])
    assert b"+48.8584" in source.read_bytes() or b"loci" in source.read_bytes()
    dataset = pydicom.dcmread(capture(source, CONTEXT, filename="where.mp4", workdir=workdir).path)
    stream = fragment(dataset)
    assert len(stream.rstrip(b"\0")) <= source.stat().st_size <= len(stream)
    assert b"+48.8584" not in stream
    assert "location metadata blanked" in dataset.ImageComments
    assert ffprobe_codec(stream, tmp_path) == "h264"
    tags = subprocess.run(["ffprobe", "-v", "error", "-show_format", str(tmp_path / "extracted.mp4")],
                          capture_output=True, text=True, check=True).stdout
    assert "48.8584" not in tags and "002.2945" not in tags  # 3GPP 'loci' is fixed-point: now 0, 0


@needs_ffmpeg
@pytest.mark.parametrize("faststart", [False, True], ids=["moov-last", "moov-first"])
def test_truncated_video_is_refused(tmp_path: Path, workdir: Path, faststart: bool) -> None:
    source = media.clip(tmp_path / "whole.mp4", "libx264", faststart=faststart)
    cut = media.truncated(source, tmp_path / "cut.mp4", 0.6)
    with pytest.raises(CaptureError, match=r"cut\.mp4: is truncated") as refused:
        capture(cut, CONTEXT, filename="cut.mp4", workdir=workdir)
    assert refused.value.filename == "cut.mp4"
    assert not list(workdir.iterdir())


@needs_ffmpeg
def test_video_in_another_codec_is_refused_naming_it(tmp_path: Path, workdir: Path) -> None:
    source = media.clip(tmp_path / "old.mp4", "mpeg4")
    with pytest.raises(CaptureError, match=r"old\.mp4: .*mpeg4"):
        capture(source, CONTEXT, filename="old.mp4", workdir=workdir)


def test_streamed_encapsulation_splits_into_even_fragments(tmp_path: Path) -> None:
    stream = tmp_path / "stream.bin"
    payload = bytes(range(256)) * 40 + b"odd"
    stream.write_bytes(payload)
    dataset = pydicom.Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = VIDEO_PHOTOGRAPHIC, "1.2.3.4"
    dataset.PatientName = "Ünïcode^Ŝ"
    dataset.SpecificCharacterSet = "ISO_IR 192"
    target = tmp_path / "out.dcm"
    part10.write_encapsulated(target, dataset, HEVCMP51, stream, max_fragment=4096)
    read = pydicom.dcmread(target)
    fragments = fragments_of(read)
    assert [len(f) for f in fragments] == [4096, 4096, 2052]
    assert b"".join(fragments)[:-1] == payload and read.PatientName == "Ünïcode^Ŝ"


# --- PDF ----------------------------------------------------------------------------------------------------

def test_pdf_round_trips_exactly(tmp_path: Path, workdir: Path) -> None:
    source = tmp_path / "consent.pdf"
    source.write_bytes(media.tiny_pdf("Consent form"))
    context = CaptureContext(PatientID="P-1", StudyInstanceUID=CONTEXT.StudyInstanceUID,
                             SeriesInstanceUID=CONTEXT.SeriesInstanceUID)
    captured = capture(source, context, filename="consent.pdf", claimed_type="application/pdf", workdir=workdir)
    dataset = pydicom.dcmread(captured.path)
    assert captured.SOPClassUID == ENCAPSULATED_PDF and captured.kind == "document"
    document = dataset.EncapsulatedDocument
    assert document[: source.stat().st_size] == source.read_bytes() and len(document) % 2 == 0
    assert dataset.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert dataset.EncapsulatedDocumentLength == source.stat().st_size
    assert dataset.DocumentTitle == "Consent form" and dataset.Modality == "DOC"
    assert dataset.BurnedInAnnotation == "YES" and dataset.ConceptNameCodeSequence == []
    assert dataset.SeriesNumber == 1 and dataset.AcquisitionDateTime
    if shutil.which("dciodvfy"):
        check = subprocess.run(["dciodvfy", str(captured.path)], capture_output=True, text=True)
        assert "Error" not in check.stderr, check.stderr


@pytest.mark.parametrize(("content", "reason"), [
    (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", "truncated"),
    (media.encrypted_pdf(), "encrypted"),
    (b"%PDF-1.4\ngarbage\n%%EOF\n", "truncated or damaged"),
], ids=["truncated", "encrypted", "no-xref"])
def test_bad_pdf_is_refused(tmp_path: Path, workdir: Path, content: bytes, reason: str) -> None:
    source = tmp_path / "report.pdf"
    source.write_bytes(content)
    with pytest.raises(CaptureError, match=rf"report\.pdf: .*{reason}"):
        capture(source, CONTEXT, filename="report.pdf", workdir=workdir)


# --- types, identity, character set -------------------------------------------------------------------------

def test_claimed_type_the_content_contradicts_is_refused(tmp_path: Path, workdir: Path) -> None:
    source = tmp_path / "wound.jpg"
    source.write_bytes(media.tiny_pdf())
    with pytest.raises(CaptureError) as refused:
        capture(source, CONTEXT, filename="wound.jpg", claimed_type="image/jpeg", workdir=workdir)
    assert str(refused.value).startswith("wound.jpg: not a JPEG image (it starts with %PDF")
    assert "PDF document" in refused.value.reason


def test_unknown_content_is_refused(tmp_path: Path, workdir: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_bytes(b"just some text")
    with pytest.raises(CaptureError, match=r"notes\.txt: not a photo, video or PDF"):
        capture(source, CONTEXT, filename="notes.txt", workdir=workdir)


def test_damaged_jpeg_is_refused(tmp_path: Path, workdir: Path) -> None:
    whole = media.jpeg(tmp_path / "whole.jpg").read_bytes()
    source = tmp_path / "cut.jpg"
    source.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CaptureError, match=r"cut\.jpg: .*truncated"):
        capture(source, CONTEXT, filename="cut.jpg", workdir=workdir)


def test_sniff_says_what_the_bytes_are() -> None:
    assert sniff(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff(b"\x89PNG\r\n\x1a\n") == "image/png"
    assert sniff(b"II*\x00") == "image/tiff"
    assert sniff(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic") == "image/heic"
    assert sniff(b"\0\0\0\x14ftypqt  \0\0\0\0qt  ") == "video/quicktime"
    assert sniff(b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2avc1mp41") == "video/mp4"
    assert sniff(b"%PDF-1.7") == "application/pdf"
    assert sniff(b"hello") is None


def test_same_file_same_instance_another_study_another(tmp_path: Path, workdir: Path) -> None:
    source = media.jpeg(tmp_path / "twice.jpg")
    first = capture(source, CONTEXT, filename="twice.jpg", workdir=workdir)
    again = capture(source, CONTEXT, filename="renamed.jpg", workdir=workdir)
    other = CaptureContext(PatientID="P-1", StudyInstanceUID="1.2.826.0.1.3680043.10.1.2",
                           SeriesInstanceUID="1.2.826.0.1.3680043.10.1.2.1")
    elsewhere = capture(source, other, filename="twice.jpg", workdir=workdir)
    assert first.SOPInstanceUID == again.SOPInstanceUID != elsewhere.SOPInstanceUID
    assert first.original_sha256 == again.original_sha256 == elsewhere.original_sha256


def test_non_ascii_names_are_utf8(tmp_path: Path, workdir: Path) -> None:
    source = media.jpeg(tmp_path / "name.jpg")
    context = CaptureContext(PatientID="P-1", StudyInstanceUID=CONTEXT.StudyInstanceUID,
                             SeriesInstanceUID=CONTEXT.SeriesInstanceUID, PatientName="Müller^José",
                             description="伤口")
    dataset = pydicom.dcmread(capture(source, context, filename="name.jpg", workdir=workdir).path)
    assert dataset.SpecificCharacterSet == "ISO_IR 192"
    assert str(dataset.PatientName) == "Müller^José" and dataset.SeriesDescription == "伤口"
    raw = (workdir / f"{dataset.SOPInstanceUID}.dcm").read_bytes()
    assert "Müller^José".encode() in raw


def test_an_image_header_claiming_gigapixels_is_refused_before_decoding(tmp_path: Path) -> None:
    """A few hundred bytes saying 30000 x 30000 (a progressive JPEG, which jpegtran would expand, or a PNG) must
    not take gigabytes of memory: refused by the size in the header."""
    import struct
    import zlib

    from mosaic.services.capture import CaptureContext, CaptureError, capture

    context = CaptureContext(PatientID="P", StudyInstanceUID="1.2.3.4", SeriesInstanceUID="1.2.3.4.1")
    png = tmp_path / "bomb.png"
    header = struct.pack(">IIBBBBB", 13000, 13000, 8, 6, 0, 0, 0)  # RGBA, under Pillow's own bomb limit
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(  # noqa: E731
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
                    + chunk(b"IEND", b""))
    with pytest.raises(CaptureError, match="megapixels"):
        capture(png, context, filename="bomb.png", workdir=tmp_path)
    progressive = io.BytesIO()
    Image.new("RGB", (16, 16)).save(progressive, "JPEG", progressive=True)
    data = bytearray(progressive.getvalue())
    sof = data.find(b"\xff\xc2")
    data[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)  # the frame header's rows and columns
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match="megapixels"):
        capture(bomb, context, filename="bomb.jpg", workdir=tmp_path)


def test_a_sample_table_that_re_walks_every_chunk_is_refused_at_once(tmp_path: Path) -> None:
    """stsc entries whose first chunks go 1, N+1, 1, N+1 … would make the truncation check walk every chunk per
    entry (quadratic: minutes of CPU from a megabyte); first chunks must rise (ISO/IEC 14496-12 8.7.4)."""
    import struct

    from mosaic.services.capture import CaptureContext, CaptureError, capture

    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(body), kind) + body

    chunks, entries = 2000, 2000
    stco = box(b"stco", b"\0\0\0\0" + struct.pack(">I", chunks) + b"\0\0\0\0" * chunks)
    stsz = box(b"stsz", b"\0\0\0\0" + struct.pack(">II", 1, 1))
    stsc = box(b"stsc", b"\0\0\0\0" + struct.pack(">I", entries) + b"".join(
        struct.pack(">III", 1 if number % 2 == 0 else chunks + 1, 1, 1) for number in range(entries)))
    moov = box(b"moov", box(b"trak", box(b"mdia", box(b"minf", box(b"stbl", stsz + stsc + stco)))))
    clip = tmp_path / "crafted.mp4"
    clip.write_bytes(box(b"ftyp", b"isom\0\0\0\0") + moov + box(b"mdat", b"\0" * 16))
    context = CaptureContext(PatientID="P", StudyInstanceUID="1.2.3.4", SeriesInstanceUID="1.2.3.4.1")
    with pytest.raises(CaptureError, match="sample-to-chunk"):
        capture(clip, context, filename="crafted.mp4", workdir=tmp_path)
