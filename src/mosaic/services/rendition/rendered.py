"""Rendered images (PS3.18 8.3.5, WADO-RS rendered and thumbnail, WADO-URI): a frame as JPEG or PNG.

The pipeline (PS3.4 N.2, grayscale): Modality LUT (Rescale Slope/Intercept, or a Modality LUT Sequence), then
VOI: the ``window`` parameter, else the data set's first Window Center/Width (per frame for enhanced
objects), else its VOI LUT Sequence, else the frame's minimum and maximum; MONOCHROME1 is inverted. Colour
frames are shown as decoded (YCbCr is turned RGB, palette colour through its LUT), scaled to 8 bits.
Then the source region and the viewport.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi

from mosaic.services.rendition.frames import PixelLayout, frame_array

RENDERED_TYPES = ("image/jpeg", "image/png")
DEFAULT_QUALITY = 90
THUMBNAIL_SIZE = 128
MAX_VIEWPORT = 8192
"""The largest rendered width or height (WADO-RS viewport, WADO-URI rows/columns), in pixels."""
_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "linear_exact": "LINEAR_EXACT",
              "sigmoid": "SIGMOID"}


class RenderError(ValueError):
    """A rendering parameter is malformed (400)."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    """``vw,vh[,sx,sy,sw,sh]``: the output size and the source region (negative sw/sh flip the image)."""

    width: int | None
    height: int | None
    sx: float | None = None
    sy: float | None = None
    sw: float | None = None
    sh: float | None = None
    letterbox: bool = True
    """Pad to exactly width by height (RS viewport); False: only fit within it (thumbnails, WADO-URI)."""


def parse_window(text: str | None) -> Window | None:
    """``center,width[,function]`` (function: linear, linear-exact or sigmoid)."""
    if text is None or not text.strip():
        return None
    fields = [field.strip() for field in text.split(",")]
    if len(fields) not in (2, 3):
        raise RenderError(f"window={text!r}: expected center,width[,function]")
    try:
        center, width = float(fields[0]), float(fields[1])
    except ValueError as exc:
        raise RenderError(f"window={text!r}: center and width must be numbers") from exc
    if not math.isfinite(center) or not math.isfinite(width) or width <= 0:
        raise RenderError(f"window={text!r}: the width must be a positive number")
    function = _FUNCTIONS.get(fields[2].lower(), "") if len(fields) == 3 and fields[2] else "LINEAR"
    if not function:
        raise RenderError(f"window function {fields[2]!r} is not linear, linear-exact or sigmoid")
    return Window(center, width, function)


def parse_viewport(text: str | None) -> Viewport | None:
    """``vw,vh`` or ``vw,vh,sx,sy,sw,sh`` (source region fields may be empty)."""
    if text is None or not text.strip():
        return None
    fields = [field.strip() for field in text.split(",")]
    if len(fields) not in (2, 6):
        raise RenderError(f"viewport={text!r}: expected vw,vh or vw,vh,sx,sy,sw,sh")
    try:
        width, height = int(fields[0]), int(fields[1])
        region: list[float | None] = [float(field) if field else None for field in fields[2:]]
        region += [None] * (6 - len(fields))
    except ValueError as exc:
        raise RenderError(f"viewport={text!r}: the values must be numbers") from exc
    if not 0 < width <= MAX_VIEWPORT or not 0 < height <= MAX_VIEWPORT:
        raise RenderError(f"viewport={text!r}: width and height must be 1 to {MAX_VIEWPORT} pixels")
    if not all(value is None or math.isfinite(value) for value in region):
        raise RenderError(f"viewport={text!r}: the source region must be finite numbers")
    if (region[0] is not None and region[0] < 0) or (region[1] is not None and region[1] < 0):
        raise RenderError(f"viewport={text!r}: sx and sy cannot be negative")
    return Viewport(width, height, region[0], region[1], region[2], region[3])


def parse_quality(text: str | None) -> int:
    if text is None or not text.strip():
        return DEFAULT_QUALITY
    try:
        quality = int(text)
    except ValueError as exc:
        raise RenderError(f"quality={text!r} is not a whole number") from exc
    if not 1 <= quality <= 100:
        raise RenderError(f"quality={text!r} must be 1 to 100")
    return quality


# --- the pixel pipeline ----------------------------------------------------------------------------------


def _frame_item(header: Dataset, index: int, keyword: str) -> Dataset | None:
    """An item of a functional group macro for frame ``index``: per frame first, then shared."""
    for sequence, position in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        groups = header.get(sequence)
        if groups and len(groups) > position:
            macro = groups[position].get(keyword)
            if macro:
                return macro[0]  # type: ignore[no-any-return]
    return None


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _modality(array: np.ndarray, header: Dataset, index: int) -> np.ndarray:
    if "ModalityLUTSequence" in header or "RescaleSlope" in header or "RescaleIntercept" in header:
        return np.asarray(apply_modality_lut(array, header), dtype=np.float64)
    item = _frame_item(header, index, "PixelValueTransformationSequence")
    values = array.astype(np.float64)
    if item is not None:
        slope, intercept = _first(item.get("RescaleSlope")), _first(item.get("RescaleIntercept"))
        values = values * (slope if slope is not None else 1.0) + (intercept or 0.0)
    return values


def _dataset_window(header: Dataset, index: int) -> Window | None:
    for source in (header, _frame_item(header, index, "FrameVOILUTSequence")):
        if source is None:
            continue
        center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
            return Window(center, width, function if function in _FUNCTIONS.values() else "LINEAR")
    return None


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """VOI window (PS3.3 C.11.2.1.2) to 0…1."""
    center, width = window.center, window.width
    if window.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if window.function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros_like(values, dtype=np.float64)
    return (values - low) / (high - low)


def to_image(layout: PixelLayout, data: bytes, index: int, window: Window | None) -> Image.Image:
    """One frame (as :func:`mosaic.services.rendition.frames.stored_frame` gives it) as an 8-bit Pillow image."""
    header = layout.header
    array, properties = frame_array(layout, data)
    photometric = str(properties.get("photometric_interpretation", header.get("PhotometricInterpretation", "")))
    photometric = photometric.strip().upper()
    if array.ndim == 2 and photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(array, header))
        scale = 255.0 / (65535.0 if rgb.dtype.itemsize > 1 and rgb.max() > 255 else 255.0)
        return Image.fromarray(np.clip(rgb * scale, 0, 255).astype(np.uint8), "RGB")
    if array.ndim == 3:
        bits = int(properties.get("bits_stored", header.get("BitsStored", 8)) or 8)
        rgb = array.astype(np.float64) * (255.0 / (2 ** bits - 1)) if bits != 8 else array
        return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)[..., :3], "RGB")
    values = _modality(array, header, index)
    chosen = window or _dataset_window(header, index)
    if chosen is not None:
        shown = apply_window(values, chosen)
    elif "VOILUTSequence" in header:
        shown = _stretch(np.asarray(apply_voi(values, header), dtype=np.float64))
    else:
        shown = _stretch(values)
    if photometric == "MONOCHROME1":
        shown = 1.0 - shown
    return Image.fromarray(np.rint(shown * 255.0).astype(np.uint8), "L")


def fit(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """Cut the source region and scale it into the viewport, keeping the aspect ratio."""
    if viewport is None:
        return image
    columns, rows = image.size
    sx, sy = viewport.sx or 0.0, viewport.sy or 0.0
    sw = viewport.sw if viewport.sw is not None else columns - sx
    sh = viewport.sh if viewport.sh is not None else rows - sy
    left, right = sorted((sx, sx + sw))
    top, bottom = sorted((sy, sy + sh))
    box = (max(0, round(left)), max(0, round(top)), min(columns, round(right)), min(rows, round(bottom)))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise RenderError("the viewport's source region lies outside the image")
    image = image.crop(box)
    if sw < 0:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sh < 0:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    width, height = image.size
    scale = min(viewport.width / width if viewport.width else math.inf,
                viewport.height / height if viewport.height else math.inf)
    if math.isfinite(scale):
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    if viewport.letterbox and viewport.width and viewport.height and image.size != (viewport.width,
                                                                                    viewport.height):
        canvas = Image.new(image.mode, (viewport.width, viewport.height), 0)
        canvas.paste(image, ((viewport.width - image.size[0]) // 2, (viewport.height - image.size[1]) // 2))
        image = canvas
    return image


def encode(image: Image.Image, media_type: str, quality: int = DEFAULT_QUALITY) -> bytes:
    buffer = io.BytesIO()
    if media_type == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def render(layout: PixelLayout, data: bytes, index: int, *, media_type: str, window: Window | None = None,
           viewport: Viewport | None = None, quality: int = DEFAULT_QUALITY) -> bytes:
    """Frame ``index`` (0-based) rendered as ``media_type`` (image/jpeg or image/png)."""
    return encode(fit(to_image(layout, data, index, window), viewport), media_type, quality)
