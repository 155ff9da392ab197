"""Decode image files into square uint8 RGB arrays in a thread pool, collecting those that fail."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .base import DatasetError


@dataclass(frozen=True)
class ImageRef:
    """One image file to read, and optionally the face box (x, y, width, height) to crop."""

    path: Path
    box: tuple[float, float, float, float] | None = None


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize to size x size: bicubic when enlarging, area averaging when shrinking."""
    if img.size == (size, size):
        return img
    shrink = img.width >= size and img.height >= size
    return img.resize((size, size), Image.BOX if shrink else Image.BICUBIC)


def decode_image(ref: ImageRef, size: int | None) -> np.ndarray:
    """Read one file as uint8 (H, W, 3) RGB: crop the face box, then resize to size x size."""
    with Image.open(ref.path) as img:
        box = ref.box
        if size is not None and img.format == "JPEG":
            box = _draft(img, box, size)
        rgb = img.convert("RGB")  # also decodes; grayscale is replicated to 3 channels
    if box is not None:
        rgb = rgb.crop(_clamp(box, rgb.size))
    if size is not None:
        rgb = resize_square(rgb, size)
    return np.asarray(rgb, dtype=np.uint8)


def _draft(img: Image.Image, box, size: int):
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the face still gets >= size pixels.

    Large photos (AffectNet) decode several times faster. Returns the box in the new scale.
    """
    w, h = img.size
    bw, bh = (box[2], box[3]) if box is not None else (w, h)
    img.draft(img.mode, (math.ceil(w * size / max(bw, 1)), math.ceil(h * size / max(bh, 1))))
    if box is None or img.size == (w, h):
        return box
    sx, sy = img.width / w, img.height / h
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _clamp(box, size) -> tuple[int, int, int, int]:
    x, y, w, h = box
    left, top = max(0, round(x)), max(0, round(y))
    right, bottom = min(size[0], round(x + w)), min(size[1], round(y + h))
    if right <= left or bottom <= top:
        raise ValueError(f"face box {tuple(box)} lies outside the {size[0]}x{size[1]} image")
    return left, top, right, bottom


def _reason(exc: Exception, path: Path) -> str:
    """A short reason for the error report; the file is already named beside it."""
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file"
    return str(exc).replace(str(path), Path(path).name) or type(exc).__name__


def decode_all(refs: list[ImageRef], size: int | None, *, root: Path, progress: bool = True,
               desc: str = "decoding") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every ref. Returns (images of the readable ones, their indices into refs,
    'relative/path (reason)' for each unreadable one)."""
    n = len(refs)
    fixed = np.empty((n, size, size, 3), np.uint8) if size is not None else None
    loose: list[np.ndarray | None] = [None] * n
    errors: list[str | None] = [None] * n

    def work(i: int) -> None:
        try:
            arr = decode_image(refs[i], size)  # looked up at call time, so tests can replace it
        except Exception as exc:  # any unreadable file is reported, not fatal here
            errors[i] = _reason(exc, refs[i].path)
            return
        if fixed is not None:
            fixed[i] = arr
        else:
            loose[i] = arr

    with ThreadPoolExecutor() as pool:
        for _ in tqdm(pool.map(work, range(n)), total=n, desc=desc, unit="img",
                      disable=not progress, leave=False):
            pass

    good = np.array([i for i in range(n) if errors[i] is None], dtype=np.int64)
    bad = [f"{_relative(refs[i].path, root)} ({errors[i]})"
           for i in range(n) if errors[i] is not None]
    if fixed is not None:
        images = fixed[good] if len(bad) else fixed
    else:
        images = _stack_native(refs, loose, good, root)
    return images, good, bad


def _stack_native(refs, arrays, good, root) -> np.ndarray:
    """Without a target size every image must already be the same square size."""
    if len(good) == 0:
        return np.empty((0, 0, 0, 3), np.uint8)
    shapes = {arrays[i].shape for i in good}
    first = arrays[good[0]].shape
    if len(shapes) > 1 or first[0] != first[1]:
        odd = next(i for i in good if arrays[i].shape != first) if len(shapes) > 1 else good[0]
        raise DatasetError(
            f"images in {root} are not all one square size (e.g. {_relative(refs[odd].path, root)} "
            f"is {arrays[odd].shape[1]}x{arrays[odd].shape[0]}); pass image_size to resize them")
    return np.stack([arrays[i] for i in good])


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
