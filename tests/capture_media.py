"""Real test content for the capture converters, made with real encoders: Pillow (JPEG, PNG, TIFF), pillow_heif
(HEIC), ffmpeg (H.264 / H.265 in MP4 and MOV), pypdf (an encrypted PDF)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

GPS_IFD = 0x8825
EXIF_IFD = 0x8769


def picture(width: int, height: int) -> Image.Image:
    """A colour picture whose orientation shows: a gradient, a red block at the top left."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    ((x + y) % 256)], axis=-1).astype(np.uint8)
    rgb[: height // 4, : width // 4] = (255, 0, 0)
    return Image.fromarray(rgb, "RGB")


def exif(orientation: int = 1, gps: bool = True) -> Image.Exif:
    """EXIF as a phone writes it: device, time with offset, orientation and (optionally) a GPS position."""
    data = Image.Exif()
    data[0x010F] = "Acme"
    data[0x0110] = "Phone 9"
    data[0x0112] = orientation
    sub = data.get_ifd(EXIF_IFD)
    sub[0x9003] = "2024:05:06 07:08:09"
    sub[0x9011] = "+02:00"
    if gps:
        position = data.get_ifd(GPS_IFD)
        position[1] = "N"
        position[2] = (48.0, 51.0, 29.5)
        position[3] = "E"
        position[4] = (2.0, 17.0, 40.2)
    return data


def jpeg(path: Path, width: int = 640, height: int = 480, *, orientation: int | None = None, gps: bool = False,
         xmp: bytes | None = None, progressive: bool = False) -> Path:
    """A JPEG from Pillow's encoder (4:2:0); no EXIF at all when ``orientation`` is None and ``gps`` False."""
    options: dict[str, object] = {"quality": 90, "progressive": progressive}
    if orientation is not None or gps:
        options["exif"] = exif(orientation or 1, gps).tobytes()
    if xmp is not None:
        options["xmp"] = xmp
    picture(width, height).save(path, "JPEG", **options)
    return path


def png(path: Path, width: int = 320, height: int = 200, *, alpha: bool = False) -> Path:
    image = picture(width, height)
    if alpha:
        image.putalpha(Image.fromarray(np.full((height, width), 128, np.uint8), "L"))
    image.save(path, "PNG")
    return path


def png16(path: Path, width: int = 64, height: int = 48) -> Path:
    """A 16-bit grayscale PNG (values above 255, so 8 bits would lose them)."""
    values = (np.arange(width * height, dtype=np.uint16).reshape(height, width) * 17) % 65535
    Image.fromarray(values.astype(np.uint16)).save(path, "PNG")
    return path


def tiff(path: Path, width: int = 300, height: int = 200, *, orientation: int = 6, gps: bool = True) -> Path:
    picture(width, height).save(path, "TIFF", exif=exif(orientation, gps))
    return path


def heic(path: Path, width: int = 256, height: int = 192, *, orientation: int = 1, gps: bool = True) -> Path | None:
    """A HEIC from pillow_heif's x265 encoder; None when it has no encoder."""
    import pillow_heif

    if not pillow_heif.libheif_info().get("HEIF"):
        return None
    pillow_heif.register_heif_opener()
    picture(width, height).save(path, "HEIF", quality=90, exif=exif(orientation, gps).tobytes())
    return path


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def clip(path: Path, codec: str = "libx264", *, seconds: float = 1, size: str = "320x240", rate: int = 25,
         extra: list[str] | None = None, faststart: bool = False) -> Path:
    """A test-pattern clip from ffmpeg's real encoders (libx264, libx265, mpeg4…)."""
    arguments = ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}",
                 "-t", str(seconds), "-c:v", codec, "-pix_fmt", "yuv420p"]
    if codec == "libx265":
        arguments += ["-tag:v", "hvc1", "-x265-params", "log-level=error"]
    if faststart:
        arguments += ["-movflags", "+faststart"]
    subprocess.run([*arguments, *(extra or []), str(path)], check=True, capture_output=True, timeout=60)
    return path


def truncated(source: Path, target: Path, fraction: float = 0.6) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def tiny_pdf(title: str = "") -> bytes:
    """A one-page PDF with a correct cross-reference table (and an /Info /Title when given)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"]
    if title:
        objects.append(b"<< /Title (%s) >>" % title.encode("latin-1"))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    info = b" /Info 4 0 R" if title else b""
    out.write(b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, info, xref))
    return out.getvalue()


def encrypted_pdf() -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(tiny_pdf())))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
