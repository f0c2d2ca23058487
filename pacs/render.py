"""Rendering a frame for display: the consumer-format pipeline of WADO-RS Rendered and
Thumbnail resources (PS3.18 10.4.1.1.3, 10.4.1.1.6, 8.3.5.1) and WADO-URI (PS3.18 9).

The grayscale pipeline of PS3.3 C.11 (Figure C.11-1), in order:

1. the frame, decoded alone (:func:`pacs.frames.decoded_frame_array`);
2. Modality LUT (PS3.3 C.11.1): Rescale Slope/Intercept or Modality LUT Sequence,
   :func:`pydicom.pixels.apply_modality_lut`;
3. VOI LUT (PS3.3 C.11.2): the ``window`` asked for (center, width, function LINEAR,
   LINEAR_EXACT or SIGMOID, C.11.2.1.2-3), else the object's first Window Center/Width
   and VOI LUT Function, else its VOI LUT Sequence (:func:`pydicom.pixels.apply_voi_lut`),
   else the frame's own minimum..maximum; output 0..255;
4. MONOCHROME1 inverted (C.7.6.3.1.2: minimum is white);
5. colour: YBR converted to RGB by the decoder, PALETTE COLOR through its LUT
   (:func:`pydicom.pixels.apply_color_lut`), scaled to 8 bits;
6. viewport (PS3.18 8.3.5.1.3): the source region cropped (negative sizes flip), scaled
   with Pillow to fit ``vw`` x ``vh`` keeping its aspect ratio;
7. encoded by Pillow: JPEG (``quality``) or PNG.

Decoding is CPU work: callers run :func:`render` in the executor.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from . import frames
from .decode_guard import check_render
from .errors import InvalidQuery

JPEG = "image/jpeg"
PNG = "image/png"
#: Rendered media types produced (PS3.18 Table 8.7.4-1, single-frame image types).
MEDIA_TYPES = (JPEG, PNG)
DEFAULT_QUALITY = 90
#: Viewport of a thumbnail when the request names none (pixels).
THUMBNAIL_SIZE = 128
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and VOI LUT Function."""

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if self.function not in WINDOW_FUNCTIONS:
            raise InvalidQuery(f"window function must be one of {', '.join(WINDOW_FUNCTIONS)}")
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise InvalidQuery("window center and width must be finite numbers")
        if not (self.width >= 1 if self.function == "LINEAR" else self.width > 0):
            raise InvalidQuery("window width must be >= 1 (LINEAR) or > 0 (LINEAR_EXACT, SIGMOID)")


@dataclass(frozen=True)
class Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3): output size and source region."""

    width: int
    height: int
    sx: int = 0
    sy: int = 0
    sw: int | None = None
    sh: int | None = None


@dataclass(frozen=True)
class RenderOptions:
    """What a rendered request asks for."""

    media_type: str = JPEG
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """``values`` through a VOI window into 0..255 (float), PS3.3 C.11.2.1.2 (LINEAR,
    SIGMOID) and C.11.2.1.3.2 (LINEAR_EXACT), with y_min 0 and y_max 255."""
    c, w = window.center, window.width
    x = values.astype(np.float64)
    if window.function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == "LINEAR_EXACT":
        low, high = c - w / 2, c + w / 2
        middle = ((x - c) / w + 0.5) * 255.0
    else:
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            middle = ((x - (c - 0.5)) / max(w - 1, 1e-12) + 0.5) * 255.0
    return np.where(x <= low, 0.0, np.where(x > high, 255.0, middle))


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value)
    except (TypeError, ValueError, IndexError):
        return None


def object_window(ds: Dataset) -> Window | None:
    """The object's first Window Center/Width with its VOI LUT Function (PS3.3 C.11.2)."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function not in WINDOW_FUNCTIONS or (function == "LINEAR" and width < 1):
        function = "LINEAR_EXACT" if function == "LINEAR" else "LINEAR"
    return Window(center, width, function)


def grayscale(array: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """Steps 2-4 of the pipeline: stored values to 8-bit display values."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(array, ds)
    window = window or object_window(ds)
    if window is not None:
        out = apply_window(values, window)
    elif "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        out = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64) * 255.0 / (2**bits - 1)
    else:
        low, high = float(np.min(values)), float(np.max(values))
        out = (values - low) * (255.0 / (high - low)) if high > low else np.zeros(values.shape)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255.0 - out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def colour(array: np.ndarray, ds: Dataset) -> np.ndarray:
    """Step 5: an RGB (or palette) frame as 8-bit RGB."""
    from pydicom.pixels import apply_color_lut

    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        array = apply_color_lut(array, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
    if array.dtype == np.uint8 and bits <= 8:
        return array
    return np.clip(np.rint(array.astype(np.float64) * 255.0 / (2**bits - 1)), 0, 255).astype(np.uint8)


def apply_viewport(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """Step 6 (PS3.18 8.3.5.1.3): crop the source region, flip for negative sizes, scale
    to fit the viewport keeping the aspect ratio (the answer may be smaller than it)."""
    if viewport is None:
        return image
    sw = viewport.sw if viewport.sw is not None else image.width - viewport.sx
    sh = viewport.sh if viewport.sh is not None else image.height - viewport.sy
    left, right = sorted((viewport.sx, viewport.sx + sw))
    top, bottom = sorted((viewport.sy, viewport.sy + sh))
    box = (max(0, left), max(0, top), min(image.width, right), min(image.height, bottom))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InvalidQuery("viewport source region lies outside the image")
    if box != (0, 0, image.width, image.height):
        image = image.crop(box)
    if sw < 0:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sh < 0:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def encode(image: Image.Image, options: RenderOptions) -> bytes:
    """Step 7: JPEG (baseline, ``quality``) or PNG, by Pillow."""
    out = io.BytesIO()
    if options.media_type == PNG:
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def display_array(array: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """A decoded frame as 8-bit display values: grayscale (rows, cols) or RGB (rows, cols, 3)."""
    if array.ndim == 3 or int(ds.get("SamplesPerPixel", 1) or 1) > 1 or \
            str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        return colour(array, ds)
    return grayscale(array, ds, window)


def render(archive: Any, source: frames.PixelSource, number: int, options: RenderOptions) -> bytes:
    """Frame ``number`` of ``source`` rendered as ``options`` ask (blocking, CPU bound)."""
    limit = archive.settings.render_max_pixels
    attrs = source.attributes
    check_render(int(attrs.get("Rows", 0) or 0), int(attrs.get("Columns", 0) or 0), limit)
    header = frames.load_dataset(archive, source, stop_before_pixels=True)
    array = frames.decoded_frame_array(archive, source, number)
    check_render(array.shape[0], array.shape[1] if array.ndim > 1 else 1, limit)
    pixels = display_array(array, header, options.window)
    image = Image.fromarray(pixels)  # uint8: "L" for (rows, cols), "RGB" for (rows, cols, 3)
    return encode(apply_viewport(image, options.viewport), options)
