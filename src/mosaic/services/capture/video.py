"""Videos as Video Photographic / Video Endoscopic Image objects (PS3.3 A.32.7 / A.32.5), the coded stream never
re-encoded.

PS3.5 8.2.7-8.2.11: for the MPEG-4 AVC/H.264 and HEVC/H.265 transfer syntaxes the Pixel Data holds the bit stream
in an MPEG-2 Transport Stream or an MP4 container (ISO/IEC 14496-12/14), so an MP4 is encapsulated whole, byte for
byte (what a browser's <video> plays when a viewer serves the bulk data). A QuickTime file is rewrapped as MP4 with
its packets copied (``-c copy``: the coded stream is unchanged, only the container is new). For AVC "one fragment
shall contain the whole bit stream" (the HEVC ones and the "Fragmentable" AVC ones allow several): one fragment,
the Basic Offset Table empty; a stream too large for one item (4 GiB) gets the Fragmentable AVC syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    HEVCM10P51,
    HEVCMP51,
    MPEG4HP41,
    MPEG4HP41F,
    MPEG4HP42STEREO,
    MPEG4HP422D,
    MPEG4HP422DF,
)

from mosaic.services.capture import bmff
from mosaic.services.capture.context import CaptureContext, CaptureError
from mosaic.services.capture.modules import anatomic_region, common
from mosaic.services.capture.part10 import MAX_FRAGMENT

VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
FRAME_TIME = 0x00181063
_AVC_HIGH_SUBSETS = {66, 77, 100}
"""Constrained Baseline (66 with constraint_set1), Main and High: streams a High Profile decoder decodes."""


@dataclass(frozen=True)
class Video:
    dataset: Dataset
    transfer_syntax: str
    stream: Path
    """The file whose bytes the Pixel Data holds (the source, or its MP4 rewrap)."""
    location: list[tuple[int, int]]
    """Ranges of ``stream`` to blank in the written copy."""


@dataclass(frozen=True)
class Probe:
    codec: str
    width: int
    height: int
    frames: int
    rate: Fraction
    pixel_format: str
    creation_time: str
    make: str
    model: str


def probe(path: Path, filename: str) -> Probe:
    """What PyAV's demuxer says of the first video stream (no decoding)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CaptureError(filename, "has no video stream")
            stream = container.streams.video[0]
            context = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            frames = stream.frames
            if not frames and stream.duration and stream.time_base and rate:
                frames = round(float(stream.duration * stream.time_base * rate))
            metadata = {key.lower(): value for key, value in container.metadata.items()}
            return Probe(codec=context.name, width=context.width, height=context.height, frames=int(frames),
                         rate=Fraction(rate), pixel_format=context.format.name if context.format else "",
                         creation_time=metadata.get("creation_time", "") or stream.metadata.get("creation_time", ""),
                         make=metadata.get("com.apple.quicktime.make", "") or metadata.get("make", ""),
                         model=metadata.get("com.apple.quicktime.model", "") or metadata.get("model", ""))
    except CaptureError:
        raise
    except Exception as exc:
        raise CaptureError(filename, f"cannot be read as a video: {exc}") from exc


def transfer_syntax(movie: bmff.Movie, info: Probe, filename: str, size: int) -> str:
    """The transfer syntax the stream's codec, profile and level allow (PS3.5 A.4.5-A.4.8), or CaptureError."""
    codec = movie.codec.decode("latin-1")
    big = size > MAX_FRAGMENT
    if info.codec == "h264" or codec in ("avc1", "avc3"):
        if info.pixel_format not in ("yuv420p", "yuvj420p"):
            raise CaptureError(filename, f"H.264 video in {info.pixel_format}: DICOM takes 8-bit 4:2:0 only")
        if movie.profile == 128:
            return MPEG4HP42STEREO
        if movie.profile not in _AVC_HIGH_SUBSETS or (movie.profile == 66 and not movie.constraints & 0x40):
            raise CaptureError(filename, f"H.264 profile {movie.profile} ({_avc_profile(movie.profile)}): DICOM "
                                         "takes High Profile (or Main / Constrained Baseline) only")
        if movie.level <= 41:
            return MPEG4HP41F if big else MPEG4HP41
        if movie.level == 42:
            return MPEG4HP422DF if big else MPEG4HP422D
        raise CaptureError(filename, f"H.264 level {movie.level / 10:g}: DICOM's H.264 transfer syntaxes stop at "
                                     "level 4.2 (1080p60); re-record at 1080p or use HEVC")
    if info.codec == "hevc" or codec in ("hvc1", "hev1"):
        if movie.level > 153:
            raise CaptureError(filename, f"HEVC level {movie.level / 30:g}: DICOM's HEVC transfer syntaxes stop "
                                         "at level 5.1")
        if movie.profile == 1 and info.pixel_format in ("yuv420p", "yuvj420p"):
            return HEVCMP51
        if movie.profile == 2 and info.pixel_format in ("yuv420p10le", "yuv420p"):
            return HEVCM10P51
        raise CaptureError(filename, f"HEVC profile {movie.profile} in {info.pixel_format}: DICOM takes Main and "
                                     "Main 10 (4:2:0) only")
    raise CaptureError(filename, f"video coded as {info.codec or codec}: DICOM stores H.264 and HEVC/H.265 video "
                                 "only; convert it to H.264 first")


def _avc_profile(profile: int) -> str:
    return {66: "Baseline", 77: "Main", 88: "Extended", 100: "High", 110: "High 10", 122: "High 4:2:2",
            244: "High 4:4:4"}.get(profile, "unknown")


def rewrap(source: Path, target: Path, filename: str) -> None:
    """A QuickTime file's video (and AAC audio) packets copied into an MP4 container; nothing is decoded.
    Other tracks (timecode, metadata) and the container's metadata (location) are left behind."""
    import av

    try:
        with av.open(str(source)) as inp, av.open(str(target), "w", format="mp4") as out:
            chosen = [inp.streams.video[0], *[s for s in inp.streams.audio if s.codec_context.name == "aac"][:1]]
            mapping = {stream.index: out.add_stream_from_template(stream) for stream in chosen}
            for packet in inp.demux(chosen):
                if packet.dts is None:
                    continue
                packet.stream = mapping[packet.stream.index]
                out.mux(packet)
    except Exception as exc:
        raise CaptureError(filename, f"cannot be rewrapped as MP4: {exc}") from exc


def _moment(creation_time: str) -> datetime | None:
    if not creation_time:
        return None
    try:
        moment = datetime.fromisoformat(creation_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if moment.year < 1971 else moment.astimezone()  # QuickTime's zero epoch is 1904: "unknown"


def prepare(source: Path, media_type: str, context: CaptureContext, uid: str, filename: str,
            scratch: Path) -> Video:
    try:
        bmff.read(source)
    except bmff.Truncated as exc:
        raise CaptureError(filename, f"is truncated: {exc}") from exc
    derived: list[str] = []
    stream = source
    if media_type == "video/quicktime":
        stream = scratch
        rewrap(source, stream, filename)
        derived.append("QuickTime container rewrapped as MP4 (packets copied, not re-encoded)")
    try:
        movie = bmff.read(stream)
    except bmff.Truncated as exc:
        raise CaptureError(filename, f"is truncated: {exc}") from exc
    info = probe(stream, filename)
    syntax = transfer_syntax(movie, info, filename, stream.stat().st_size)
    if not info.frames or not info.rate:
        raise CaptureError(filename, "has no frames or no frame rate")
    endoscopic = context.video_kind == "endoscopic"
    captured_at = context.captured_at or _moment(info.creation_time) or datetime.now().astimezone()
    dataset = common(context, VIDEO_ENDOSCOPIC if endoscopic else VIDEO_PHOTOGRAPHIC, uid,
                     context.modality or ("ES" if endoscopic else "XC"), captured_at, manufacturer=info.make,
                     model=info.model, laterality_in_series=True)
    dataset.ImageType = ["DERIVED" if derived else "ORIGINAL", "PRIMARY"]
    dataset.PatientOrientation = ""
    dataset.BurnedInAnnotation = "NO"
    if context.description:
        dataset.ImageComments = context.description
    if movie.location:
        dataset.ImageComments = "; ".join([*([context.description] if context.description else []),
                                           "location metadata blanked in place"])
    if derived:
        dataset.DerivationDescription = "; ".join(derived)
    dataset.AcquisitionContextSequence = Sequence()
    if context.view:
        dataset.AcquisitionContextDescription = context.view
    region = anatomic_region(context)
    if region is not None:
        dataset.AnatomicRegionSequence = region
    # Cine (C.7.6.5) and Multi-frame (C.7.6.6)
    fps = float(info.rate)
    dataset.NumberOfFrames = info.frames
    dataset.FrameIncrementPointer = FRAME_TIME
    dataset.FrameTime = round(1000 / fps, 3)
    dataset.CineRate = round(fps)
    dataset.RecommendedDisplayFrameRate = round(fps)
    # Image Pixel, per PS3.5 8.2.7-8.2.11
    dataset.Rows, dataset.Columns = info.height, info.width
    dataset.SamplesPerPixel = 3
    dataset.PhotometricInterpretation = "YBR_PARTIAL_420"
    dataset.PlanarConfiguration = 0
    ten_bit = syntax == HEVCM10P51
    dataset.BitsAllocated = 16 if ten_bit else 8
    dataset.BitsStored = 10 if ten_bit else 8
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0
    dataset.LossyImageCompression = "01"
    dataset.LossyImageCompressionMethod = "ISO_23008_2" if syntax in (HEVCMP51, HEVCM10P51) else "ISO_14496_10"
    return Video(dataset, syntax, stream, movie.location)
