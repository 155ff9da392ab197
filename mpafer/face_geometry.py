"""Face geometry: the ``Face`` record, square crops, named facial regions and patch-grid masks.

``crop_face`` maps a detection to a square crop (``CropInfo`` maps between crop and image
pixels), ``face_regions`` names the facial regions inside the crop from the keypoints, and
``region_masks`` puts them on a ViT patch grid, which is where region heatmaps and region
descriptions are scored. Nothing here loads MediaPipe (detection is ``mpafer.face_detection``;
``mpafer.faces`` re-exports both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

KEYPOINT_NAMES = (
    "right_eye",  # the subject's right eye: image-left on a frontal face
    "left_eye",
    "nose_tip",
    "mouth_center",
    "right_ear_tragion",
    "left_ear_tragion",
)

DEFAULT_MARGIN = 0.25

REGION_NAMES = ("forehead", "brows", "eyes", "nose", "cheeks", "mouth", "face")

# Where BlazeFace puts the keypoints inside its (square) box, as fractions of box width and
# height. Measured on the frontal astronaut example and made left-right symmetric. Used
# only to stand in for keypoints a caller does not have.
CANONICAL_KEYPOINTS = {
    "right_eye": (0.28, 0.26),
    "left_eye": (0.72, 0.26),
    "nose_tip": (0.50, 0.48),
    "mouth_center": (0.50, 0.70),
    "right_ear_tragion": (0.02, 0.40),
    "left_ear_tragion": (0.98, 0.40),
}

Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the image passed to ``detect``."""

    box: Box  # x0, y0, x1, y1, clipped to the image
    score: float
    keypoints: dict[str, Point] = field(default_factory=dict)  # names from KEYPOINT_NAMES

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def center(self) -> Point:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


@dataclass(frozen=True)
class CropInfo:
    """How a ``size`` x ``size`` crop sits in the source image.

    Continuous pixel coordinates (0 is the left edge of the first pixel):
    ``image = origin + crop * scale``.
    """

    origin: Point  # image position of the crop's top-left corner
    scale: float  # image pixels per crop pixel
    size: int
    face_box: Box  # the detected face box, in crop pixels
    keypoints: dict[str, Point]  # the face's keypoints, in crop pixels

    def to_image(self, x: float, y: float) -> Point:
        return (self.origin[0] + x * self.scale, self.origin[1] + y * self.scale)

    def to_crop(self, x: float, y: float) -> Point:
        return ((x - self.origin[0]) / self.scale, (y - self.origin[1]) / self.scale)

    def box_to_image(self, box: Box) -> Box:
        return (*self.to_image(box[0], box[1]), *self.to_image(box[2], box[3]))

    def box_to_crop(self, box: Box) -> Box:
        return (*self.to_crop(box[0], box[1]), *self.to_crop(box[2], box[3]))


def crop_face(
    image: Image.Image,
    face: Face,
    size: int,
    margin: float = DEFAULT_MARGIN,
    pad: str = "edge",
    shift_y: float = 0.0,
) -> tuple[Image.Image, CropInfo]:
    """Square crop centred on ``face.box``, resized to ``size`` x ``size``.

    The square's side is the box's longer side times ``1 + 2 * margin`` (``margin`` of it
    added on each side). Where the square leaves the image it is padded by repeating the
    border pixels (``pad="edge"``: no hard black edge for heatmaps to latch on to) or with
    black (``pad="black"``). ``shift_y`` moves the centre down by that fraction of the box's
    longer side (a model's input protocol: its training faces may be framed lower than the box).
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if pad not in ("edge", "black"):
        raise ValueError(f"pad must be 'edge' or 'black', got {pad!r}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    cx, cy = face.center
    cy += shift_y * max(face.width, face.height)  # a model's framing may sit lower than the box
    side = max(1, round(max(face.width, face.height, 1.0) * (1 + 2 * margin)))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    square = _extract_padded(rgb, x0, y0, side, pad)
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    scale = side / size

    def to_crop(x: float, y: float) -> Point:
        return ((x - x0) / scale, (y - y0) / scale)

    info = CropInfo(
        origin=(float(x0), float(y0)),
        scale=scale,
        size=size,
        face_box=(*to_crop(face.box[0], face.box[1]), *to_crop(face.box[2], face.box[3])),
        keypoints={name: to_crop(x, y) for name, (x, y) in face.keypoints.items()},
    )
    return square, info


def _extract_padded(image: Image.Image, x0: int, y0: int, side: int, pad: str) -> Image.Image:
    """The ``side`` x ``side`` square at (x0, y0), padded where it leaves ``image``."""
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + side, image.width), min(y0 + side, image.height)
    if ix0 == x0 and iy0 == y0 and ix1 == x0 + side and iy1 == y0 + side:
        return image.crop((x0, y0, x0 + side, y0 + side))
    if ix1 <= ix0 or iy1 <= iy0 or pad == "black":
        return image.crop((x0, y0, x0 + side, y0 + side))  # PIL fills outside with black
    inside = np.asarray(image.crop((ix0, iy0, ix1, iy1)))
    widths = ((iy0 - y0, y0 + side - iy1), (ix0 - x0, x0 + side - ix1), (0, 0))
    return Image.fromarray(np.pad(inside, widths, mode="edge"))


class Regions(dict):
    """Region name -> (x0, y0, x1, y1) in crop pixels; remembers the crop size."""

    def __init__(self, boxes: dict[str, Box], crop_size: int):
        super().__init__(boxes)
        self.crop_size = crop_size


def face_regions(
    keypoints: dict[str, Point],
    crop_size: int,
    face_box: Box | None = None,
) -> Regions:
    """Boxes for forehead, brows, eyes, nose, cheeks, mouth and face, in crop pixels.

    ``keypoints`` are in crop pixels (``CropInfo.keypoints``). ``face_box`` is the face
    box in crop pixels (``CropInfo.face_box``); without it the face is assumed to fill the
    crop as ``crop_face`` leaves it with the default margin. A missing eye, nose or mouth
    keypoint is placed where BlazeFace puts it in the face box (``CANONICAL_KEYPOINTS``).

    Proportions, in units of d = the distance between the eye keypoints (about 0.44 of a
    BlazeFace box) and relative to the eye line e (the mean eye height) and the eye span
    [ex0, ex1]:
      eyes      x: ex0 - 0.5d .. ex1 + 0.5d   y: e - 0.25d .. e + 0.25d
      brows     x: ex0 - 0.5d .. ex1 + 0.5d   y: e - 0.6d  .. e - 0.15d
      forehead  x: ex0 - 0.4d .. ex1 + 0.4d   y: e - 1.1d  .. e - 0.5d
      nose      x: nose - 0.3d .. nose + 0.3d y: e + 0.1d  .. nose + 0.2d
      cheeks    x: ex0 - 0.5d .. ex1 + 0.5d   y: e + 0.25d .. mouth (the nose is cut out
                of the cheek mask by ``region_masks``)
      mouth     x: mouth - 0.55d .. + 0.55d   y: mouth - 0.3d .. mouth + 0.35d
      face      the face box
    Boxes are axis-aligned, so they assume a roughly upright face, and are clipped to the
    crop with at least one pixel of extent.
    """
    if face_box is None:
        inset = crop_size * DEFAULT_MARGIN / (1 + 2 * DEFAULT_MARGIN)
        face_box = (inset, inset, crop_size - inset, crop_size - inset)
    points = _complete_keypoints(keypoints, face_box)
    (rx, ry), (lx, ly) = points["right_eye"], points["left_eye"]
    nx, ny = points["nose_tip"]
    mx, my = points["mouth_center"]
    face_w = face_box[2] - face_box[0]
    d = max(math.hypot(lx - rx, ly - ry), 0.2 * face_w, 1.0)  # floor for profile views
    e = (ry + ly) / 2
    ex0, ex1 = min(rx, lx), max(rx, lx)

    boxes = {
        "forehead": (ex0 - 0.4 * d, e - 1.1 * d, ex1 + 0.4 * d, e - 0.5 * d),
        "brows": (ex0 - 0.5 * d, e - 0.6 * d, ex1 + 0.5 * d, e - 0.15 * d),
        "eyes": (ex0 - 0.5 * d, e - 0.25 * d, ex1 + 0.5 * d, e + 0.25 * d),
        "nose": (nx - 0.3 * d, e + 0.1 * d, nx + 0.3 * d, max(ny + 0.2 * d, e + 0.3 * d)),
        "cheeks": (ex0 - 0.5 * d, e + 0.25 * d, ex1 + 0.5 * d, max(my, e + 0.6 * d)),
        "mouth": (mx - 0.55 * d, my - 0.3 * d, mx + 0.55 * d, my + 0.35 * d),
        "face": face_box,
    }
    return Regions({name: _clip_box(box, crop_size) for name, box in boxes.items()}, crop_size)


def _complete_keypoints(keypoints: dict[str, Point], face_box: Box) -> dict[str, Point]:
    x0, y0, x1, y1 = face_box
    points = {
        name: (x0 + fx * (x1 - x0), y0 + fy * (y1 - y0))
        for name, (fx, fy) in CANONICAL_KEYPOINTS.items()
    }
    points.update({name: tuple(map(float, p)) for name, p in keypoints.items() if p is not None})
    return points


def _clip_box(box: Box, size: int) -> Box:
    """Clip to [0, size] and keep at least one pixel of width and height."""
    x0, y0, x1, y1 = (min(max(v, 0.0), float(size)) for v in box)
    x0, x1 = _at_least_one(x0, x1, size)
    y0, y1 = _at_least_one(y0, y1, size)
    return (x0, y0, x1, y1)


def _at_least_one(lo: float, hi: float, size: int) -> tuple[float, float]:
    if hi - lo >= 1.0:
        return lo, hi
    centre = min(max((lo + hi) / 2, 0.5), size - 0.5)
    return centre - 0.5, centre + 0.5


def region_masks(
    regions: dict[str, Box],
    grid_h: int,
    grid_w: int,
    crop_size: int | None = None,
    soft: bool = False,
) -> dict[str, np.ndarray]:
    """Masks of each region on a ``grid_h`` x ``grid_w`` patch grid over the crop.

    ``soft=False``: boolean masks, a cell belongs to a region when the region covers at
    least half of it. ``soft=True``: float32 coverage in [0, 1]. "cheeks" excludes the
    nose. Every mask is non-empty: a region thinner than a cell gets its best-covered cell.
    ``crop_size`` defaults to ``regions.crop_size`` (set by ``face_regions``).
    """
    if crop_size is None:
        crop_size = getattr(regions, "crop_size", None)
        if crop_size is None:
            raise ValueError("crop_size is required unless regions come from face_regions()")
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"grid must be at least 1x1, got {grid_h}x{grid_w}")
    supersample = 8  # raster each cell at 8x8 so coverage is measured, not guessed
    rasters = {
        name: _raster(box, crop_size, grid_h * supersample, grid_w * supersample)
        for name, box in regions.items()
    }
    if "cheeks" in rasters and "nose" in rasters:
        cut = rasters["cheeks"] & ~rasters["nose"]
        if cut.any():
            rasters["cheeks"] = cut

    masks = {}
    for name, raster in rasters.items():
        coverage = raster.reshape(grid_h, supersample, grid_w, supersample).mean(axis=(1, 3))
        if coverage.max() == 0.0:  # box thinner than a raster pixel: take its centre cell
            x0, y0, x1, y1 = regions[name]
            row = min(int((y0 + y1) / 2 / crop_size * grid_h), grid_h - 1)
            col = min(int((x0 + x1) / 2 / crop_size * grid_w), grid_w - 1)
            coverage[row, col] = 1.0 / supersample**2
        if soft:
            masks[name] = coverage.astype(np.float32)
        else:
            mask = coverage >= 0.5
            masks[name] = mask if mask.any() else coverage == coverage.max()
    return masks


def _raster(box: Box, crop_size: int, rows: int, cols: int) -> np.ndarray:
    """Boolean raster of ``box``: a raster pixel is in when its centre is inside the box."""
    x0, y0, x1, y1 = box
    ys = (np.arange(rows) + 0.5) * crop_size / rows
    xs = (np.arange(cols) + 0.5) * crop_size / cols
    inside_y = (ys >= y0) & (ys < y1)
    inside_x = (xs >= x0) & (xs < x1)
    return inside_y[:, None] & inside_x[None, :]
