"""Turn whatever a user hands us into a sane RGB ``PIL.Image``.

Uploads come as paths (Gradio), bytes (APIs), file objects, numpy arrays (webcam, OpenCV,
scikit-image) or PIL images. Whatever the source, the rest of the library sees one thing:
an upright (EXIF applied), 8-bit RGB image whose longer side is at most ``max_side``.

Large files are handled without decoding them at full size where the format allows it
(JPEG: ``draft`` decodes at 1/2, 1/4 or 1/8 scale inside libjpeg), and anything above
``MAX_PIXELS`` is refused before a single pixel is decoded.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Hard limit for encoded inputs, checked from the header before decoding. It sits below
# Pillow's own bomb error (2 * Image.MAX_IMAGE_PIXELS, about 179 MP) so that our limit,
# not Pillow's global, is the one users meet. 150 MP is a 15000x10000 photo.
MAX_PIXELS = 150_000_000

# Longest side of the returned image unless the caller asks otherwise. Faces are cropped
# to a few hundred pixels and the detector looks at 1024 px, so more is wasted memory.
DEFAULT_MAX_SIDE = 2048

# Smallest picture worth looking for a face in (``load_image(min_side=...)``): the detector
# finds faces from about 20 px, and FERPlus's own faces are 48 px.
MIN_SIDE = 16

WHITE = (255, 255, 255)


class ImageError(ValueError):
    """The input is not a usable image (empty, not an image, corrupt, zero-size, too large)."""


def load_image(
    source: Any,
    max_side: int | None = DEFAULT_MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """Load ``source`` as an upright RGB image with longer side <= ``max_side``.

    ``source`` may be a path (str or os.PathLike), bytes/bytearray/memoryview, a binary
    file-like object, a numpy array (HxW, HxWx1, HxWx3 or HxWx4, RGB(A) channel order;
    uint8, uint16, bool, or float in [0, 1]; floats above 1 are read as 0..255) or a
    PIL image. Transparent images are composited on white. ``max_side=None`` keeps the
    full size. With ``min_side`` (e.g. ``MIN_SIDE``), a picture narrower or shorter than that
    is refused as too small to hold a face. Raises ``ImageError`` for anything that is not a
    usable image and ``TypeError`` for unsupported source types.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be positive or None, got {max_side}")
    if isinstance(source, Image.Image):
        image = _from_pil(source)
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, (str, os.PathLike)):
        image = _from_path(source, max_side, max_pixels)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("empty input: no image data")
        image = _decode(io.BytesIO(data), "bytes", max_side, max_pixels)
    elif hasattr(source, "read"):
        image = _from_file(source, max_side, max_pixels)
    else:
        raise TypeError(
            "load_image expects a path, bytes, a file object, a numpy array or a PIL image, "
            f"got {type(source).__name__}"
        )
    if min_side is not None and min(image.size) < min_side:
        raise ImageError(f"image too small: {image.width}x{image.height} pixels; a face needs a picture "
                         f"of at least {min_side}x{min_side} pixels")
    # pixels only: camera make, GPS and other EXIF never travel further (privacy); the
    # orientation has already been applied. A fresh image also drops PIL's cached EXIF.
    return Image.fromarray(np.asarray(_shrink(image, max_side)))


def _too_large(width: int | None, height: int | None, pixels: float, limit: float, name: str) -> ImageError:
    """The refusal of a picture with too many pixels (a "decompression bomb"), in plain words."""
    size = f"{width}x{height} pixels, " if width and height else ""
    return ImageError(f"image too large to open safely: {size}{pixels / 1e6:,.0f} megapixels, more than "
                      f"the {limit / 1e6:,.0f} megapixels allowed ({name}). Use a smaller copy of the picture, "
                      f"for example 4000 pixels on its longest side")


def _from_path(path: str | os.PathLike, max_side: int | None, max_pixels: int) -> Image.Image:
    name = os.fspath(path)
    try:
        with open(name, "rb") as fp:
            if os.fstat(fp.fileno()).st_size == 0:
                raise ImageError(f"empty input: {name} is an empty file")
            return _decode(fp, name, max_side, max_pixels)
    except ImageError:
        raise
    except OSError as exc:  # missing file, a directory, no permission
        raise ImageError(f"cannot read {name}: {exc.strerror or exc}") from exc


def _from_file(fp: Any, max_side: int | None, max_pixels: int) -> Image.Image:
    # Pillow needs seek(); sockets and pipes have none, so read those into memory.
    seekable = getattr(fp, "seekable", None)
    if not (callable(seekable) and seekable()):
        data = fp.read()
        if not data:
            raise ImageError("empty input: the file object returned no data")
        return _decode(io.BytesIO(data), "file object", max_side, max_pixels)
    start = fp.tell()
    if fp.read(1) in (b"", ""):
        raise ImageError("empty input: the file object returned no data")
    fp.seek(start)
    return _decode(fp, "file object", max_side, max_pixels)


def _decode(fp: Any, name: str, max_side: int | None, max_pixels: int) -> Image.Image:
    """Open, bounds-check, draft, decode and normalise one encoded image."""
    try:
        # We enforce our own limit below; Pillow's warning between 89 and 179 MP is noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except Image.DecompressionBombError as exc:
        # Pillow's own refusal (above 2 * MAX_IMAGE_PIXELS) says only "Image size (N pixels)"
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = float(found.group(1)) if found else 2.0 * (Image.MAX_IMAGE_PIXELS or 0)
        raise _too_large(None, None, pixels, max_pixels, name) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not a recognised image format ({name})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt image header ({name}): {exc}") from exc

    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageError(f"image has zero size {width}x{height} ({name})")
        if width * height > max_pixels:
            raise _too_large(width, height, width * height, max_pixels, name)
        if max_side is not None and im.format == "JPEG":
            # JPEG can decode at 1/2, 1/4 or 1/8 scale; draft picks the smallest scale that
            # still covers max_side, so a 10000x10000 photo never exists at full size.
            im.draft("RGB" if im.mode in ("RGB", "YCbCr") else im.mode, (max_side, max_side))
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"corrupt or truncated image ({name}): {exc}") from exc
        return _from_pil(im)


def _from_pil(im: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode to 8-bit RGB. Returns a new image."""
    if im.width <= 0 or im.height <= 0:
        raise ImageError(f"image has zero size {im.width}x{im.height}")
    try:
        im.load()  # a lazily opened PIL image from the caller may still be truncated
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from exc
    try:
        upright = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - broken EXIF must not make a good image unusable
        upright = im
    rgb = _to_rgb(upright)
    return rgb.copy() if rgb is im else rgb


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_wide_to_uint8(np.asarray(im), mode)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as exc:  # e.g. LAB, which needs a colour profile to convert
        raise ImageError(f"unsupported image mode {mode}: {exc}") from exc


def _wide_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer or float grey values to 0..255."""
    values = values.astype(np.float64)
    if mode.startswith("I;16"):
        scale = 65535.0
    else:
        # Mode "I" usually holds 16-bit data from PNG/TIFF; "F" is often 0..1.
        top = float(np.nanmax(values)) if values.size else 0.0
        scale = 1.0 if top <= 1.0 and mode == "F" else 255.0 if top <= 255 else 65535.0
    return np.clip(np.nan_to_num(values) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray) -> Image.Image:
    if array.size == 0 or array.ndim < 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"image array has zero size, shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    pixels = np.ascontiguousarray(_array_to_uint8(array))
    mode = "L" if pixels.ndim == 2 else ("RGB" if pixels.shape[2] == 3 else "RGBA")
    return _to_rgb(Image.fromarray(pixels, mode=mode))


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float64))
        if values.max(initial=0.0) > 1.0:  # looks like 0..255 floats (OpenCV habit)
            values = values / 255.0
        return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported image array dtype {array.dtype}")


def _shrink(image: Image.Image, max_side: int | None) -> Image.Image:
    if max_side is None or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # reducing_gap first box-averages by an integer factor: fast and alias-free.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
