"""Photos as VL Photographic Image objects (PS3.3 A.32.4).

A JPEG is encapsulated as it came (JPEG Baseline, PS3.5 A.4.1): nothing is decoded, only marker segments that
can hold a location are removed, and an EXIF orientation or progressive coding is resolved losslessly by
``jpegtran``. Other stills (PNG, TIFF, HEIC, WebP, GIF) are decoded (their pixels are exact), turned upright and
stored uncompressed in Explicit VR Little Endian. RLE Lossless (pydicom's encoder) was measured on a 12 MP
(4032 x 3024) RGB picture: 5 s for 22 % of the raw 36.6 MB when smooth, but 26 s and 108 % (larger than raw) once
camera-like noise is added; uncompressed takes milliseconds and every viewer reads it.
The original file is kept in the object, in the private
block "MOSAIC CAPTURE" (0071,10xx): the archive can hand back exactly what was captured.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
)

from mosaic.services.capture import exif, jpeg
from mosaic.services.capture.context import CaptureContext, CaptureError
from mosaic.services.capture.modules import anatomic_region, common

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
PRIVATE_GROUP = 0x0071
PRIVATE_CREATOR = "MOSAIC CAPTURE"
"""(0071,0010) LO; (0071,1010) OB the original bytes, (0071,1011) LO their media type, (0071,1012) LO the name,
(0071,1013) UL the original's length (the OB value is padded to even length)."""


@dataclass(frozen=True)
class Photo:
    dataset: Dataset
    transfer_syntax: str


def _photo_dataset(context: CaptureContext, uid: str, taken: exif.Exif, *, derived: list[str]) -> Dataset:
    captured_at = context.captured_at or taken.taken or datetime.now().astimezone()
    dataset = common(context, VL_PHOTOGRAPHIC, uid, context.modality or "XC", captured_at,
                     manufacturer=taken.make, model=taken.model)
    dataset.ImageType = ["DERIVED" if derived else "ORIGINAL", "PRIMARY"]
    dataset.PatientOrientation = ""
    dataset.BurnedInAnnotation = "NO"
    if context.laterality:
        dataset.ImageLaterality = context.laterality
    if context.description:
        dataset.ImageComments = context.description
    if derived:
        dataset.DerivationDescription = "; ".join(derived)[:1024]
    dataset.AcquisitionContextSequence = Sequence()
    if context.view:
        dataset.AcquisitionContextDescription = context.view
    region = anatomic_region(context)
    if region is not None:
        dataset.AnatomicRegionSequence = region
    return dataset


def from_jpeg(data: bytes, context: CaptureContext, uid: str, filename: str) -> Photo:
    """A JPEG encapsulated without decoding: its single fragment is the file itself when there is nothing to
    remove."""
    try:
        structure = jpeg.parse(data)
    except jpeg.JPEGError as exc:
        raise CaptureError(filename, f"not a readable JPEG image: it {exc}") from exc
    _check_size(structure.frame.rows, structure.frame.columns, filename)  # before jpegtran, which allocates it all
    taken = exif.read_image(data)
    derived: list[str] = []
    arguments: list[str] = []
    if structure.frame.process == 0xC2:
        derived.append("progressive JPEG losslessly transcoded to sequential (jpegtran)")
    elif structure.frame.process not in (0xC0, 0xC1, 0xC3):
        raise CaptureError(filename, f"a JPEG coding process (SOF{structure.frame.process - 0xC0}) that DICOM "
                                     "photos do not use (hierarchical or arithmetic coding)")
    if taken.orientation != 1:
        arguments = jpeg.TRANSFORMS[taken.orientation]
    if arguments or structure.frame.process == 0xC2:
        data, structure, note = _transform(data, structure, arguments, taken.orientation, filename)
        if note:
            derived.append(note)
    data, removed = jpeg.remove_location(data, structure)
    if removed:
        structure = jpeg.parse(data)
    frame = structure.frame
    dataset = _photo_dataset(context, uid, taken, derived=derived)
    if removed:
        dataset.ImageComments = "; ".join(
            [*([context.description] if context.description else []), "removed: " + ", ".join(removed)])[:10240]
    dataset.Rows, dataset.Columns = frame.rows, frame.columns
    dataset.SamplesPerPixel = len(frame.components)
    if dataset.SamplesPerPixel not in (1, 3):
        raise CaptureError(filename, f"a JPEG with {dataset.SamplesPerPixel} colour components (CMYK?): DICOM "
                                     "photos are grayscale or colour")
    dataset.PhotometricInterpretation = _photometric(structure)
    if dataset.SamplesPerPixel == 3:
        dataset.PlanarConfiguration = 0
    dataset.BitsAllocated = 8 if frame.precision <= 8 else 16
    dataset.BitsStored = frame.precision
    dataset.HighBit = frame.precision - 1
    dataset.PixelRepresentation = 0
    if frame.process == 0xC3:
        dataset.LossyImageCompression = "00"
        transfer_syntax = JPEGLosslessSV1 if _predictor(data, structure) == 1 else JPEGLossless
    else:
        dataset.LossyImageCompression = "01"
        dataset.LossyImageCompressionRatio = round(
            frame.rows * frame.columns * len(frame.components) * dataset.BitsAllocated / 8 / len(data), 2)
        dataset.LossyImageCompressionMethod = "ISO_10918_1"
        transfer_syntax = JPEGBaseline8Bit if frame.process == 0xC0 and frame.precision == 8 else JPEGExtended12Bit
    dataset.PixelData = encapsulate([data])
    dataset["PixelData"].VR = "OB"
    return Photo(dataset, transfer_syntax)


def _transform(data: bytes, structure: jpeg.Structure, arguments: list[str], orientation: int,
               filename: str) -> tuple[bytes, jpeg.Structure, str]:
    """Rotate / flip (and make sequential) without decoding: -perfect first, else -trim (the partial MCUs at the
    edge that cannot move are dropped) and say how many pixels went."""
    copy = ["-copy", "icc" if arguments else "all"]
    try:
        try:
            result = jpeg.jpegtran(data, [*copy, *(["-perfect"] if arguments else []), *arguments])
            trimmed = ""
        except jpeg.JPEGError:
            if not arguments:
                raise
            result = jpeg.jpegtran(data, [*copy, "-trim", *arguments])
            trimmed = "trim"
    except FileNotFoundError as exc:
        raise CaptureError(filename, f"cannot apply its EXIF orientation losslessly: {exc}") from exc
    except jpeg.JPEGError as exc:
        raise CaptureError(filename, f"jpegtran cannot transform it: {exc}") from exc
    transformed = jpeg.parse(result)
    if not arguments:
        return result, transformed, ""
    rows, columns = structure.frame.rows, structure.frame.columns
    if orientation >= 5:
        rows, columns = columns, rows
    note = f"EXIF orientation {orientation} applied losslessly (jpegtran)"
    if trimmed:
        lost_rows, lost_columns = rows - transformed.frame.rows, columns - transformed.frame.columns
        note += f"; {lost_columns} edge pixel columns and {lost_rows} edge pixel rows trimmed (not whole MCUs)"
    return result, transformed, note


def _photometric(structure: jpeg.Structure) -> str:
    """PS3.5 8.2.1: YBR_FULL_422 for subsampled YCbCr, YBR_FULL without subsampling, RGB when the JPEG has no
    colour transform (Adobe transform 0, or components named R G B, or lossless)."""
    components = structure.frame.components
    if len(components) == 1:
        return "MONOCHROME2"
    if structure.adobe_transform == 0 or bytes(c[0] for c in components) == b"RGB" \
            or structure.frame.process == 0xC3:
        return "RGB"
    sampling = {(h, v) for _, h, v in components}
    return "YBR_FULL_422" if len(sampling) > 1 else "YBR_FULL"


def _predictor(data: bytes, structure: jpeg.Structure) -> int:
    sos = structure.segments[-1]
    count = data[sos.start + 4]
    return data[sos.start + 5 + 2 * count]


MAX_PIXELS = 100_000_000
"""The largest photo captured (100 megapixels: a medium-format camera's 16-bit frame is ~150 MB decoded). A header
claiming more is refused before anything is decoded: a few hundred bytes must not take gigabytes of memory."""


def _check_size(rows: int, columns: int, filename: str) -> None:
    if rows <= 0 or columns <= 0:
        raise CaptureError(filename, f"an image of {columns} x {rows} pixels")
    if rows * columns > MAX_PIXELS:
        raise CaptureError(filename, f"an image of {columns} x {rows} pixels, more than the "
                                     f"{MAX_PIXELS // 1_000_000} megapixels Mosaic captures")


def from_still(data: bytes, media_type: str, context: CaptureContext, uid: str, filename: str) -> Photo:
    """A decoded still, upright, RGB or MONOCHROME2 (16 bits kept for 16-bit grayscale), Explicit VR Little
    Endian; the original file kept in the private block. Alpha is composited on white (what the photo looked like
    on a page)."""
    if media_type == "image/heic":
        _register_heif()
    try:
        with Image.open(io.BytesIO(data)) as opened:
            _check_size(opened.size[1], opened.size[0], filename)  # from the header, before any pixel is decoded
            pages = int(getattr(opened, "n_frames", 1))
            if pages > 1 and media_type == "image/tiff":
                raise CaptureError(filename, f"a TIFF with {pages} pages: capture one image per file")
            taken = exif.read(opened.getexif())
            image = ImageOps.exif_transpose(opened)
            image.load()
    except CaptureError:
        raise
    except Exception as exc:
        raise CaptureError(filename, f"cannot be decoded as {media_type}: {exc}") from exc
    derived = [f"EXIF orientation {taken.orientation} applied"] if taken.orientation != 1 else []
    pixels, photometric, bits, note = _pixels(image, filename)
    if note:
        derived.append(note)
    dataset = _photo_dataset(context, uid, taken, derived=derived)
    dataset.Rows, dataset.Columns = pixels.shape[0], pixels.shape[1]
    dataset.SamplesPerPixel = 3 if photometric == "RGB" else 1
    dataset.PhotometricInterpretation = photometric
    if photometric == "RGB":
        dataset.PlanarConfiguration = 0
    dataset.BitsAllocated = dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    dataset.LossyImageCompression = "01" if media_type in ("image/heic", "image/avif") else "00"
    if media_type in ("image/heic", "image/avif"):
        dataset.LossyImageCompressionMethod = "ISO_23008_2" if media_type == "image/heic" else ""
    kept, location_note = keep_original(data, media_type)
    block = dataset.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "OB", kept)
    block.add_new(0x11, "LO", media_type)
    block.add_new(0x12, "LO", filename[:64])
    block.add_new(0x13, "UL", len(kept))  # OB is even-padded: the original's own length
    if location_note:
        dataset.ImageComments = "; ".join([*([context.description] if context.description else []),
                                           location_note])
    dataset.PixelData = pixels.tobytes()
    dataset["PixelData"].VR = "OW" if bits == 16 else "OB"
    return Photo(dataset, ExplicitVRLittleEndian)


def _pixels(image: Image.Image, filename: str) -> tuple[np.ndarray, str, int, str]:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image, dtype=np.uint16), "MONOCHROME2", 16, ""
    if mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 0xFFFF:
            raise CaptureError(filename, "a 32-bit grayscale image whose values do not fit in 16 bits")
        return values.astype(np.uint16), "MONOCHROME2", 16, ""
    if mode == "F":
        raise CaptureError(filename, "a floating-point image, which a photograph cannot hold")
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.uint8), "MONOCHROME2", 8, ""
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flattened = Image.alpha_composite(white, rgba)
        grayscale = mode in ("LA", "La")
        converted = flattened.convert("L" if grayscale else "RGB")
        return (np.asarray(converted, dtype=np.uint8), "MONOCHROME2" if grayscale else "RGB", 8,
                "transparency composited on white")
    note = "CMYK converted to RGB" if mode == "CMYK" else ""
    return np.asarray(image.convert("RGB"), dtype=np.uint8), "RGB", 8, note


def keep_original(data: bytes, media_type: str) -> tuple[bytes, str]:
    """The original as kept: byte for byte, except an EXIF GPS IFD removed in place where the format allows it
    without touching anything else (TIFF, PNG eXIf with its CRC recomputed, HEIC's Exif item)."""
    try:
        if media_type == "image/tiff":
            buffer = bytearray(data)
            if exif.remove_gps(buffer, 0, len(buffer)):
                return bytes(buffer), "EXIF GPS removed from the kept original"
        elif media_type == "image/png":
            return _png_without_gps(data)
        elif media_type in ("image/heic", "image/webp"):
            return _embedded_without_gps(data)
    except ValueError:
        return data, "the kept original's EXIF could not be parsed: any location in it is kept"
    return data, ""


def _png_without_gps(data: bytes) -> tuple[bytes, str]:
    import zlib

    position = 8
    while position + 12 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        end = position + 12 + length
        if kind == b"eXIf":
            buffer = bytearray(data)
            if exif.remove_gps(buffer, position + 8, position + 8 + length):
                crc = zlib.crc32(bytes(buffer[position + 4:position + 8 + length]))
                buffer[position + 8 + length:end] = crc.to_bytes(4, "big")
                return bytes(buffer), "EXIF GPS removed from the kept original"
            return data, ""
        if kind == b"IEND":
            break
        position = end
    return data, ""


def _embedded_without_gps(data: bytes) -> tuple[bytes, str]:
    """HEIC / WebP: the EXIF payload sits whole in the file (an 'Exif' item, an 'EXIF' chunk); its TIFF
    structure is found by its header and the GPS IFD removed in place (same length: no box or chunk size moves)."""
    for header in (b"MM\x00*\x00\x00\x00\x08", b"II*\x00\x08\x00\x00\x00"):
        start = data.find(header)
        if start < 0 or data.find(header, start + 1) >= 0:
            continue
        end = _payload_end(data, start)
        buffer = bytearray(data)
        if exif.remove_gps(buffer, start, end):
            return bytes(buffer), "EXIF GPS removed from the kept original"
        return data, ""
    return data, ""


def _payload_end(data: bytes, start: int) -> int:
    """Where the EXIF payload that starts at ``start`` ends: the enclosing RIFF chunk, else the end of the file
    (the bound only limits what the GPS removal may touch)."""
    if data[:4] == b"RIFF":
        chunk = data.rfind(b"EXIF", 12, start)
        if chunk >= 0:
            return min(len(data), chunk + 8 + int.from_bytes(data[chunk + 4:chunk + 8], "little"))
    return len(data)


def _register_heif() -> None:
    from pillow_heif import register_heif_opener

    register_heif_opener()

