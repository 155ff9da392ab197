"""Find faces, crop them square, and name their regions.

Detection wraps MediaPipe's BlazeFace short-range model through the tasks API (MediaPipe
1.2 has no ``mp.solutions`` and ships no model files; the model is bundled under
``assets/models``). BlazeFace looks at a 128x128 letterboxed copy of its input and finds
faces down to about 15 % of that frame, so a single pass misses the small faces of a group
photo. ``FaceDetector.detect`` therefore also runs the model on overlapping square tiles
and merges the results with non-maximum suppression.

Geometry helpers map a detection to a square crop (``crop_face``), to named facial regions
inside the crop (``face_regions``) and to masks on a ViT patch grid (``region_masks``),
which is where region heatmaps and region descriptions are scored.
"""

from __future__ import annotations

import atexit
import math
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

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

DEFAULT_MODEL_PATH = (
    Path(__file__).resolve().parent.parent
    / "assets"
    / "models"
    / "face_detection_short_range.tflite"
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


class FaceDetector:
    """Reusable, lock-protected BlazeFace detector. Create once; ``close()`` when done.

    ``detect_side``: the image is scaled down to this longer side before detection (the
    model sees 128 px anyway; this bounds copying and tiling work).
    ``tile_levels``: extra passes on overlapping square tiles of side long/2, long/4, ...
    (each level halves the smallest findable face; 0 disables tiling).
    ``min_confidence``: 0.7 rather than MediaPipe's 0.5. Measured with this model: random
    noise, textures, logos and a colour wheel score up to 0.69 (5 of 40 noise images gave
    a "face" at 0.5), while the astronaut scored 0.81-0.98 under blur, darkening, noise,
    rotation up to 35 degrees, grayscale, occluded mouth and 160 px size.
    ``tile_min_confidence``: the score a face found only in a tile needs. Every tile is
    another chance for a false alarm, so tiles never need less than the full frame.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        min_confidence: float = 0.7,
        max_faces: int = 20,
        detect_side: int = 1024,
        tile_levels: int = 1,
        tile_min_confidence: float = 0.75,
    ):
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {max_faces}")
        if detect_side < 128 or tile_levels < 0:
            raise ValueError("detect_side must be >= 128 (the model input) and tile_levels >= 0")
        path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
        if not path.is_file():
            raise FileNotFoundError(
                f"face detector model not found: {path}. The default is bundled at "
                "assets/models/face_detection_short_range.tflite (see assets/NOTICE)."
            )
        # Imported here so the geometry below is usable without loading MediaPipe.
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=min_confidence,
        )
        self._detector = vision.FaceDetector.create_from_options(options)
        self._lock = threading.Lock()
        self.max_faces = max_faces
        self.detect_side = detect_side
        self.tile_levels = tile_levels
        self.tile_min_confidence = max(min_confidence, tile_min_confidence)
        # Closing runs MediaPipe's C calls on its worker thread pool. Its own __del__ runs too
        # late at interpreter exit (pool shut down, module globals gone) and prints a
        # traceback, so an unclosed detector is closed when garbage-collected (finalizer)
        # or at exit, before the pool shuts down (_close_open_detectors).
        self._finalizer = weakref.finalize(self, self._detector.close)
        self._finalizer.atexit = False  # at plain atexit time the pool is already gone
        _OPEN_DETECTORS.add(self)
        _register_exit_hook()

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces in ``image``, sorted left to right, at most ``max_faces`` (best scores kept)."""
        if image.width == 0 or image.height == 0:
            return []
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        scale = min(1.0, self.detect_side / max(rgb.size))
        if scale < 1.0:
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        pixels = np.asarray(rgb, dtype=np.uint8)
        height, width = pixels.shape[:2]

        candidates: list[Face] = []
        with self._lock:
            if not self._finalizer.alive:
                raise RuntimeError("FaceDetector is closed")
            windows = tile_windows(width, height, self.tile_levels)
            candidates.extend(self._detect_window(pixels, windows[0]))
            for window in windows[1:]:
                candidates.extend(
                    face
                    for face in self._detect_window(pixels, window)
                    if face.score >= self.tile_min_confidence
                )

        kept = non_max_suppression(candidates)[: self.max_faces]
        faces = [_rescale(face, 1.0 / scale, image.width, image.height) for face in kept]
        faces = [face for face in faces if face.width > 0 and face.height > 0]
        return sorted(faces, key=lambda face: (face.box[0], face.box[1]))

    def _detect_window(self, pixels: np.ndarray, window: tuple[int, int, int, int]) -> list[Face]:
        import mediapipe as mp

        x0, y0, x1, y1 = window
        height, width = pixels.shape[:2]
        crop = np.ascontiguousarray(pixels[y0:y1, x0:x1])
        result = self._detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop))
        tile_w, tile_h = x1 - x0, y1 - y0
        faces = []
        for detection in result.detections:
            bb = detection.bounding_box
            bx0, by0 = x0 + bb.origin_x, y0 + bb.origin_y
            bx1, by1 = bx0 + bb.width, by0 + bb.height
            if cut_by_tile_edge((bx0, by0, bx1, by1), window, width, height):
                continue
            keypoints = {
                name: (x0 + kp.x * tile_w, y0 + kp.y * tile_h)
                for name, kp in zip(KEYPOINT_NAMES, detection.keypoints or [], strict=False)
            }
            score = float(detection.categories[0].score) if detection.categories else 0.0
            faces.append(Face((float(bx0), float(by0), float(bx1), float(by1)), score, keypoints))
        return faces

    def close(self) -> None:
        """Release the MediaPipe graph. Safe to call more than once."""
        with self._lock:
            self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_OPEN_DETECTORS: weakref.WeakSet[FaceDetector] = weakref.WeakSet()
_exit_hook_registered = False


def _close_open_detectors() -> None:
    for detector in list(_OPEN_DETECTORS):
        detector.close()


def _register_exit_hook() -> None:
    """Close leftover detectors at exit while MediaPipe's thread pool still works.

    concurrent.futures shuts its pools down from ``threading._register_atexit`` hooks, which
    run before ``atexit`` and in reverse order of registration. Registering there after
    MediaPipe created its pool puts our hook first. Falls back to ``atexit`` on Pythons
    without that hook (then an unclosed detector may still print MediaPipe's traceback).
    """
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    register = getattr(threading, "_register_atexit", atexit.register)
    register(_close_open_detectors)
    _exit_hook_registered = True


def tile_windows(
    width: int, height: int, levels: int, min_side: int = 128
) -> list[tuple[int, int, int, int]]:
    """The full frame, then overlapping square tiles of side long/2**k for k = 1..levels.

    Tiles overlap by at least half their side, so any face up to half a tile wide lies
    whole inside some tile. Tiles never exceed the short side; a wide panorama thus gets
    square tiles sliding along it. Levels whose tiles would be under ``min_side`` (the
    model's 128 px input) are skipped.
    """
    windows = [(0, 0, width, height)]
    for level in range(1, levels + 1):
        side = int(min(max(width, height) / 2**level, width, height))
        if side < min_side:
            break
        for y in _positions(height, side):
            for x in _positions(width, side):
                window = (x, y, x + side, y + side)
                if window not in windows:
                    windows.append(window)
    return windows


def cut_by_tile_edge(box: Box, window: tuple[int, int, int, int], width: int, height: int) -> bool:
    """Whether ``box`` touches an edge of ``window`` that lies inside the image.

    Such a face is cut by the tile; the overlap guarantees another tile sees it whole, so
    the partial detection is dropped. Edges that are image borders do not count.
    """
    x0, y0, x1, y1 = window
    tolerance = 0.01 * max(x1 - x0, y1 - y0)
    return (
        (x0 > 0 and box[0] <= x0 + tolerance)
        or (y0 > 0 and box[1] <= y0 + tolerance)
        or (x1 < width and box[2] >= x1 - tolerance)
        or (y1 < height and box[3] >= y1 - tolerance)
    )


def _positions(length: int, side: int) -> list[int]:
    if side >= length:
        return [0]
    count = math.ceil((length - side) / (side / 2)) + 1
    return [round(i * (length - side) / (count - 1)) for i in range(count)]


def box_iou(a: Box, b: Box) -> tuple[float, float]:
    """Intersection over union, and intersection over the smaller box's area."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    smaller = min(area_a, area_b)
    return (inter / union if union > 0 else 0.0, inter / smaller if smaller > 0 else 0.0)


def non_max_suppression(
    faces: list[Face], iou: float = 0.3, containment: float = 0.6
) -> list[Face]:
    """Best-first greedy NMS. Also drops a box mostly inside a better one (a face found
    whole in one pass and in part in another)."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(
            (overlap := box_iou(face.box, other.box))[0] < iou and overlap[1] < containment
            for other in kept
        ):
            kept.append(face)
    return kept


def _rescale(face: Face, factor: float, width: int, height: int) -> Face:
    x0, y0, x1, y1 = (v * factor for v in face.box)
    box = (
        min(max(x0, 0.0), width),
        min(max(y0, 0.0), height),
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
    )
    keypoints = {name: (x * factor, y * factor) for name, (x, y) in face.keypoints.items()}
    return Face(box, face.score, keypoints)


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
) -> tuple[Image.Image, CropInfo]:
    """Square crop centred on ``face.box``, resized to ``size`` x ``size``.

    The square's side is the box's longer side times ``1 + 2 * margin`` (``margin`` of it
    added on each side). Where the square leaves the image it is padded by repeating the
    border pixels (``pad="edge"``: no hard black edge for heatmaps to latch on to) or with
    black (``pad="black"``).
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if pad not in ("edge", "black"):
        raise ValueError(f"pad must be 'edge' or 'black', got {pad!r}")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    cx, cy = face.center
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
