"""Find every face in a picture, from a webcam close-up to a class photo of 50 small faces.

MediaPipe's BlazeFace through the tasks API (MediaPipe 1.2 has no ``mp.solutions`` and ships
no model files), with both of its models bundled in ``assets/models`` (see assets/NOTICE):
the short-range model (128 px input, made for faces that fill a good part of the frame) and
the full-range one (192 px input, made for smaller faces further away). One model pass sees
the whole picture at its input size, so the faces of a group photo are too small for it.
``FaceDetector.detect`` therefore works in three steps:

1. Proposals. Both models on the whole picture, then the full-range model on overlapping
   square tiles (``tile_sides``: 300 px, then 600 px while a tile is well inside the
   picture; neighbours overlap by half), so that a face of ~36 px is an eighth of some
   tile. Every candidate scoring ``proposal_confidence`` (0.5) counts; a face cut by an
   inner tile edge is dropped, since the overlap shows it whole in another tile.
2. A second look. Best candidate first, each one not already covered by an accepted face is
   cropped out with room around it (a square three times its size, mid-grey where it leaves
   the picture) and shown to the short-range model, which then sees it at the scale it
   was made for. A face is kept when that look agrees (IoU >= 0.3) with a score of at least
   ``min_confidence`` (0.6); its box, keypoints and score come from that look. On the
   measured sets (demo/bench_group_detection.py and tests/data/no_faces) real faces scored
   0.78 or more there and everything else 0.60 or less (one exception: a 21 px buckle on
   the astronaut's suit, 0.72, hence ``min_face``), while the proposal scores of the two
   overlapped (textures and noise reached 0.71 in 300 px tiles).
3. When nothing is found, one retry on a padded copy (the picture centred on a mid-grey
   square twice its size, whole-picture passes only): a face that fills the frame (a webcam
   close-up, a pre-cropped face) is too big for BlazeFace until it has a margin around it.

Results come as a ``FaceList``: at most ``max_faces`` faces (the largest when more were
found; ``found`` says how many there were), in reading order (``reading_order``).
"""

from __future__ import annotations

import atexit
import math
import os
import tempfile
import threading
import weakref
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from .face_geometry import KEYPOINT_NAMES, Box, Face

MODELS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
SHORT_RANGE_MODEL = MODELS_DIR / "face_detection_short_range.tflite"
FULL_RANGE_MODEL = MODELS_DIR / "face_detection_full_range_sparse.tflite"
DEFAULT_MODEL_PATH = SHORT_RANGE_MODEL  # the name other modules and older callers know

DEFAULT_MAX_FACES = 50
LOOK_CONTEXT = 3.0  # side of the second look's crop, in face-box sides
PAD_VALUE = 128  # mid-grey: what padded crops and the padded retry are filled with
PAD_RETRY_SIDE = 1024  # the padded retry works on a copy at most this big
# LiteRT prints one such line per sparse tensor (46) each time the full-range model loads
_LOAD_NOISE = b"Sparsity tensors may not yet be fully supported"

Window = tuple[int, int, int, int]
T = TypeVar("T")


class FaceList(list):
    """The faces kept, as a list, and ``found``: how many were found before the ``max_faces``
    limit (``found > len(self)`` exactly when the limit dropped some; ``limited``)."""

    def __init__(self, faces: Iterable = (), found: int | None = None):
        super().__init__(faces)
        self.found = len(self) if found is None else max(int(found), len(self))

    @property
    def limited(self) -> bool:
        return self.found > len(self)


class FaceDetector:
    """Reusable, lock-protected face detector (see the module docstring). Create once and
    ``close()`` it when done (or use it as a context manager).

    ``max_faces``: the most faces returned (default 50); the largest are kept.
    ``min_confidence``: the score a face needs in the second look (0.6; see above). 0.7 missed
    18 of 400 FERPlus validation faces (grey 48 px faces upscaled onto a canvas: what the
    pipeline measurement shows the detector), 0.6 missed 8 and 0.5 missed 2 but found 3 false
    faces in the face-free pictures; 0.6 kept 336/336 group faces and 0 false boxes.
    ``proposal_confidence``: the score a candidate needs in any pass to get a second look.
    ``detect_side``: pictures are scaled down to this longer side first (2048: a 40 px face
    of a 2048 px picture stays findable, and at most ~150 tiles are run).
    ``tile_side``, ``tile_levels``: the smallest tile and how many doubling tile sizes to
    run (0: whole-picture passes only). ``tile_overlap``: neighbouring tiles share half a
    side, so a face up to half a tile is whole in one and most faces are seen in several
    (a third saves a quarter of the passes but missed a 53 px face of the held-out group
    pictures that half an overlap finds). ``tile_model``: "full" (the default,
    measured best with the second look) or "short".
    ``full_range``: False runs the short-range model only (no full-range model loaded).
    ``verify``: False skips the second look: candidates scoring ``min_confidence`` are
    kept as they are (faster, more false faces; for measurements).
    ``pad_retry``: the retry on a padded copy when nothing is found.
    ``min_face``: faces smaller than this (box side, in pixels of the picture as detected,
    i.e. after ``detect_side``) are dropped. 28 px: the group pictures' faces are 35 px and
    up, and the one false face seen in all measurements was a 21 px shiny buckle on the
    astronaut's suit that passed the second look at 0.72. The expression model gets little
    from a face that small anyway.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        min_confidence: float = 0.6,
        max_faces: int = DEFAULT_MAX_FACES,
        detect_side: int = 2048,
        tile_levels: int = 2,
        tile_side: int = 300,
        tile_model: str = "full",
        full_range: bool = True,
        full_range_path: str | Path | None = None,
        proposal_confidence: float = 0.5,
        verify: bool = True,
        pad_retry: bool = True,
        min_face: float = 28.0,
        tile_overlap: float = 0.5,
    ):
        for name, value in (("min_confidence", min_confidence), ("proposal_confidence", proposal_confidence)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {max_faces}")
        if detect_side < 128 or tile_levels < 0 or tile_side < 128:
            raise ValueError("detect_side and tile_side must be >= 128 (the model input) and tile_levels >= 0")
        if tile_model not in ("full", "short"):
            raise ValueError(f"tile_model must be 'full' or 'short', got {tile_model!r}")
        short_path = Path(model_path) if model_path is not None else SHORT_RANGE_MODEL
        full_path = Path(full_range_path) if full_range_path is not None else FULL_RANGE_MODEL
        for path in (short_path, full_path) if full_range else (short_path,):
            if not path.is_file():
                raise FileNotFoundError(
                    f"face detector model not found: {path}. The defaults are bundled in "
                    f"{MODELS_DIR} (face_detection_short_range.tflite and "
                    "face_detection_full_range_sparse.tflite; see assets/NOTICE)."
                )
        self.max_faces = max_faces
        self.min_confidence = min_confidence
        self.proposal_confidence = proposal_confidence
        self.detect_side = detect_side
        self.tile_levels = tile_levels
        self.tile_side = tile_side
        self.tile_model = tile_model if full_range else "short"
        self.verify = verify
        self.pad_retry = pad_retry
        self.min_face = float(min_face)
        if not 0.0 <= tile_overlap < 1.0:
            raise ValueError(f"tile_overlap must be in [0, 1), got {tile_overlap}")
        self.tile_overlap = tile_overlap
        self.model_calls = 0  # model passes run so far (tiles, looks, retries): a cost that load does not blur
        self._lock = threading.Lock()
        floor = min(min_confidence, proposal_confidence)
        self._models = {"short": _load(short_path, floor)}
        try:
            if full_range:
                with _filtered_stderr(_LOAD_NOISE):
                    self._models["full"] = _load(full_path, floor)
        except BaseException:
            _close_all(list(self._models.values()))
            raise
        # Closing runs MediaPipe's C calls on its worker thread pool. Its own __del__ runs too
        # late at interpreter exit (pool shut down, module globals gone) and prints a
        # traceback, so an unclosed detector is closed when garbage-collected (finalizer)
        # or at exit, before the pool shuts down (_close_open_detectors).
        self._finalizer = weakref.finalize(self, _close_all, list(self._models.values()))
        self._finalizer.atexit = False  # at plain atexit time the pool is already gone
        _OPEN_DETECTORS.add(self)
        _register_exit_hook()

    # ---- public -------------------------------------------------------------------------
    def detect(self, image: Image.Image) -> FaceList:
        """Faces in ``image``, in its pixel coordinates: at most ``max_faces`` (the largest),
        in reading order, with ``found`` = how many were found in all."""
        if image.width == 0 or image.height == 0:
            return FaceList()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        scale = min(1.0, self.detect_side / max(rgb.size))
        if scale < 1.0:
            rgb = _resize(rgb, scale)
        pixels = np.asarray(rgb, dtype=np.uint8)
        with self._lock:
            if not self._finalizer.alive:
                raise RuntimeError("FaceDetector is closed")
            faces = self._find(pixels, tiles=True)
            if not faces and self.pad_retry:
                faces, scale = self._find_padded(rgb, scale)
        faces = [_rescale(face, 1.0 / scale, image.width, image.height) for face in faces]
        faces = [face for face in faces if face.width >= 1 and face.height >= 1]
        return limit_faces(faces, self.max_faces)

    def close(self) -> None:
        """Release the MediaPipe graphs. Safe to call more than once."""
        with self._lock:
            self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- steps --------------------------------------------------------------------------
    def _find(self, pixels: np.ndarray, tiles: bool) -> list[Face]:
        height, width = pixels.shape[:2]
        frame = (0, 0, width, height)
        candidates = [f for kind in self._models for f in self._run(kind, pixels, frame)]
        if tiles:
            for side in tile_sides(width, height, self.tile_side, self.tile_levels):
                for window in tile_windows(width, height, side, self.tile_overlap):
                    candidates.extend(
                        face for face in self._run(self.tile_model, pixels, window)
                        if not cut_by_tile_edge(face.box, window, width, height)
                    )
        candidates = [face for face in candidates if face.score >= self.proposal_confidence]
        if not self.verify:
            faces = non_max_suppression([face for face in candidates if face.score >= self.min_confidence])
        else:
            faces = self._second_looks(pixels, candidates)
        return [face for face in faces if max(face.width, face.height) >= self.min_face]

    def _second_looks(self, pixels: np.ndarray, candidates: list[Face]) -> list[Face]:
        accepted: list[Face] = []
        rejected: list[Box] = []
        for candidate in sorted(candidates, key=lambda face: face.score, reverse=True):
            if any(_same_face(candidate.box, face.box) for face in accepted):
                continue
            if any(box_iou(candidate.box, box)[0] >= 0.7 for box in rejected):
                continue  # as good as looked at already
            face = self._look(pixels, candidate)
            if face is None or face.score < self.min_confidence:
                rejected.append(candidate.box)
            elif not any(_same_face(face.box, other.box) for other in accepted):
                accepted.append(face)
        return accepted

    def _look(self, pixels: np.ndarray, candidate: Face) -> Face | None:
        """The short-range model's view of ``candidate`` in a crop with room around it."""
        cx, cy = candidate.center
        side = max(16, round(max(candidate.width, candidate.height) * LOOK_CONTEXT))
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        crop = _padded_crop(pixels, x0, y0, side)
        best = None
        for face in self._run("short", crop, (0, 0, side, side)):
            face = _shift(face, x0, y0)
            if box_iou(face.box, candidate.box)[0] >= 0.3 and (best is None or face.score > best.score):
                best = face
        return best

    def _find_padded(self, rgb: Image.Image, scale: float) -> tuple[list[Face], float]:
        """Whole-picture passes on the picture centred on a mid-grey square twice its size.
        Returns the faces in (scaled) picture pixels and the scale of those pixels."""
        shrink = min(1.0, PAD_RETRY_SIDE / 2 / max(rgb.size))
        small = _resize(rgb, shrink) if shrink < 1.0 else rgb
        width, height = small.size
        side = 2 * max(width, height)
        x0, y0 = (side - width) // 2, (side - height) // 2
        canvas = np.full((side, side, 3), PAD_VALUE, np.uint8)
        canvas[y0:y0 + height, x0:x0 + width] = np.asarray(small, dtype=np.uint8)
        faces = []
        for face in self._find(canvas, tiles=False):
            face = _shift(face, -x0, -y0)
            cx, cy = face.center
            if 0 <= cx < width and 0 <= cy < height:  # the face is in the picture, not the margin
                faces.append(_clip(face, width, height))
        return faces, scale * shrink

    def _run(self, kind: str, pixels: np.ndarray, window: Window) -> list[Face]:
        import mediapipe as mp

        x0, y0, x1, y1 = window
        crop = np.ascontiguousarray(pixels[y0:y1, x0:x1])
        self.model_calls += 1
        result = self._models[kind].detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop))
        tile_w, tile_h = x1 - x0, y1 - y0
        faces = []
        for detection in result.detections:
            bb = detection.bounding_box
            bx0, by0 = x0 + bb.origin_x, y0 + bb.origin_y
            keypoints = {
                name: (x0 + kp.x * tile_w, y0 + kp.y * tile_h)
                for name, kp in zip(KEYPOINT_NAMES, detection.keypoints or [], strict=False)
            }
            score = float(detection.categories[0].score) if detection.categories else 0.0
            box = (float(bx0), float(by0), float(bx0 + bb.width), float(by0 + bb.height))
            faces.append(Face(box, score, keypoints))
        return faces


def _load(path: Path, min_confidence: float):
    # Imported here so the geometry and the helpers below work without loading MediaPipe.
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_path=str(path)),
        running_mode=vision.RunningMode.IMAGE,
        min_detection_confidence=min_confidence,
    )
    return vision.FaceDetector.create_from_options(options)


def _close_all(models: list) -> None:
    for model in models:
        model.close()


@contextmanager
def _filtered_stderr(noise: bytes):
    """Hold back what native code writes to stderr meanwhile; pass on every line but ``noise``."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(line for line in held.read().splitlines(keepends=True) if noise not in line)
            if kept:
                os.write(2, kept)


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


# ---- tiles ------------------------------------------------------------------------------


def tile_sides(width: int, height: int, smallest: int = 300, levels: int = 2) -> list[int]:
    """Tile sides for a ``width`` x ``height`` picture: ``smallest``, doubling, ``levels`` of
    them, each smaller than the picture's short side and at most 0.6 of its long side.

    Measured with one face pasted at many sizes: a whole-picture pass of the full-range model
    finds faces down to about 7 % of the long side, a 300 px tile down to about 20 px (36 px
    on the harder group pictures). A tile over 0.6 of the long side finds little that the
    whole picture does not, so a 480x360 webcam frame gets no tiles (faces from ~32 px).
    A picture at least twice as long as it is high (or the other way) also gets squares of
    its short side, sliding along it.
    """
    short, long = min(width, height), max(width, height)
    sides = [smallest * 2**k for k in range(levels)]
    if levels and long >= 2 * short:
        sides.append(short)
    return sorted({side for side in sides if smallest <= side <= short and side <= 0.6 * long
                   and (side < short or long >= 2 * short)})


def tile_windows(width: int, height: int, side: int, overlap: float = 0.5) -> list[Window]:
    """Square ``side`` x ``side`` windows covering the picture, neighbours overlapping by at
    least ``overlap`` of a side, so any face up to that share of a tile lies whole inside
    some tile."""
    side = int(min(side, width, height))
    return [(x, y, x + side, y + side) for y in _positions(height, side, overlap)
            for x in _positions(width, side, overlap)]


def _positions(length: int, side: int, overlap: float) -> list[int]:
    if side >= length:
        return [0]
    count = math.ceil((length - side) / (side * (1 - overlap))) + 1
    return [round(i * (length - side) / (count - 1)) for i in range(count)]


def cut_by_tile_edge(box: Box, window: Window, width: int, height: int) -> bool:
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


# ---- boxes ------------------------------------------------------------------------------


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


def _same_face(a: Box, b: Box, iou: float = 0.3, containment: float = 0.6) -> bool:
    overlap = box_iou(a, b)
    return overlap[0] >= iou or overlap[1] >= containment


def non_max_suppression(faces: list[Face], iou: float = 0.3, containment: float = 0.6) -> list[Face]:
    """Best-first greedy NMS. Also drops a box mostly inside a better one (a face found
    whole in one pass and in part in another)."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if not any(_same_face(face.box, other.box, iou, containment) for other in kept):
            kept.append(face)
    return kept


def reading_order(faces: Sequence[T], overlap: float = 0.5) -> list[T]:
    """``faces`` (anything with a ``box``) in reading order: rows top to bottom, each row
    left to right.

    Rows are grouped by vertical overlap, not by raw y: taking faces by the height of their
    centre, a face joins the current row when its box overlaps the row's band (the mean top
    and bottom of the row's faces) by at least ``overlap`` of the smaller of the two heights;
    otherwise it starts the next row. So a face a little higher than its neighbours (a
    tilted head, a taller child) is still read with its row.
    """
    rows: list[list[T]] = []
    band = (0.0, 0.0)
    for face in sorted(faces, key=lambda f: ((f.box[1] + f.box[3]) / 2, f.box[0])):
        y0, y1 = face.box[1], face.box[3]
        if rows:
            shared = min(y1, band[1]) - max(y0, band[0])
            if shared >= overlap * min(y1 - y0, band[1] - band[0]):
                rows[-1].append(face)
                n = len(rows[-1])
                band = (band[0] + (y0 - band[0]) / n, band[1] + (y1 - band[1]) / n)
                continue
        rows.append([face])
        band = (y0, y1)
    return [face for row in rows for face in sorted(row, key=lambda f: (f.box[0], f.box[2]))]


def largest(faces: Sequence[T], count: int) -> list[T]:
    """The ``count`` largest of ``faces`` by box area (ties: the higher ``score`` first)."""
    def area(face) -> float:
        x0, y0, x1, y1 = face.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    return sorted(faces, key=lambda f: (area(f), getattr(f, "score", 0.0)), reverse=True)[: max(0, count)]


def limit_faces(faces: Sequence[T], max_faces: int) -> FaceList:
    """At most ``max_faces`` of ``faces`` (the largest), in reading order; ``found`` carries
    over from ``faces`` when it is a ``FaceList`` (else it is ``len(faces)``)."""
    found = getattr(faces, "found", len(faces))
    kept = faces if len(faces) <= max_faces else largest(faces, max_faces)
    return FaceList(reading_order(kept), found=found)


def _shift(face: Face, dx: float, dy: float) -> Face:
    x0, y0, x1, y1 = face.box
    keypoints = {name: (x + dx, y + dy) for name, (x, y) in face.keypoints.items()}
    return Face((x0 + dx, y0 + dy, x1 + dx, y1 + dy), face.score, keypoints)


def _clip(face: Face, width: float, height: float) -> Face:
    x0, y0, x1, y1 = face.box
    box = (min(max(x0, 0.0), width), min(max(y0, 0.0), height),
           min(max(x1, 0.0), width), min(max(y1, 0.0), height))
    return Face(box, face.score, face.keypoints)


def _rescale(face: Face, factor: float, width: int, height: int) -> Face:
    x0, y0, x1, y1 = (v * factor for v in face.box)
    keypoints = {name: (x * factor, y * factor) for name, (x, y) in face.keypoints.items()}
    return _clip(Face((x0, y0, x1, y1), face.score, keypoints), width, height)


def _resize(image: Image.Image, scale: float) -> Image.Image:
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _padded_crop(pixels: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The ``side`` x ``side`` square at (x0, y0), mid-grey where it leaves the picture."""
    height, width = pixels.shape[:2]
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + side, width), min(y0 + side, height)
    if ix0 == x0 and iy0 == y0 and ix1 == x0 + side and iy1 == y0 + side:
        return pixels[y0:y0 + side, x0:x0 + side]
    crop = np.full((side, side, 3), PAD_VALUE, np.uint8)
    if ix1 > ix0 and iy1 > iy0:
        crop[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = pixels[iy0:iy1, ix0:ix1]
    return crop
