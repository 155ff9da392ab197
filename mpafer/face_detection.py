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
3. When nothing is found, a retry on a padded copy (the picture centred on a mid-grey
   square twice its size, whole-picture passes only): a face that fills the frame (a webcam
   close-up, a pre-cropped face) is too big for BlazeFace until it has a margin around it.
   When that finds nothing either, the padded copy mirrored, then brightened (``RETRY_LOOKS``):
   BlazeFace is not mirror-symmetric, and it misses dark faces. Measured on the 3,199 FERPlus
   validation faces on a canvas (2026-12-06): 73 missed before, 41 after (24 found mirrored, 8
   brightened); these looks found no face in the 20 face-free test pictures nor in 175 face-free
   canvases tried once, where the same looks at a lower threshold or without the padding did.

Results come as a ``FaceList``: at most ``max_faces`` faces (the largest when more were
found; ``found`` says how many there were), in reading order (``reading_order``).
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .face_geometry import KEYPOINT_NAMES, Box, Face
from .face_layout import (FaceList, Window, box_iou, clip_face, cut_by_tile_edge, limit_faces, non_max_suppression,
                          rescale_face, same_face, shift_face, tile_sides, tile_windows)
from .mediapipe_runtime import OPEN_DETECTORS, close_all, filtered_stderr, load_blazeface, register_exit_hook

MODELS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
SHORT_RANGE_MODEL = MODELS_DIR / "face_detection_short_range.tflite"
FULL_RANGE_MODEL = MODELS_DIR / "face_detection_full_range_sparse.tflite"
DEFAULT_MODEL_PATH = SHORT_RANGE_MODEL  # the name other modules and older callers know

DEFAULT_MAX_FACES = 50
LOOK_CONTEXT = 3.0  # side of the second look's crop, in face-box sides
PAD_VALUE = 128  # mid-grey: what padded crops and the padded retry are filled with
PAD_RETRY_SIDE = 1024  # the padded retry works on a copy at most this big
# the padded retry's looks, in order, until one finds a face: as it is, mirrored, brightened (gamma)
RETRY_LOOKS = ({}, {"mirror": True}, {"gamma": 0.4})
_MIRRORED_KEYPOINTS = {"right_eye": "left_eye", "left_eye": "right_eye",
                       "right_ear_tragion": "left_ear_tragion", "left_ear_tragion": "right_ear_tragion"}
# LiteRT prints one such line per sparse tensor (46) each time the full-range model loads
_LOAD_NOISE = b"Sparsity tensors may not yet be fully supported"

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
    ``pad_retry``: the retry on a padded copy (as it is, mirrored, brightened) when nothing is found.
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
        self._models = {"short": load_blazeface(short_path, floor)}
        try:
            if full_range:
                with filtered_stderr(_LOAD_NOISE):
                    self._models["full"] = load_blazeface(full_path, floor)
        except BaseException:
            close_all(list(self._models.values()))
            raise
        # Closing runs MediaPipe's C calls on its worker thread pool. Its own __del__ runs too
        # late at interpreter exit (pool shut down, module globals gone) and prints a
        # traceback, so an unclosed detector is closed when garbage-collected (finalizer)
        # or at exit, before the pool shuts down (_close_open_detectors).
        self._finalizer = weakref.finalize(self, close_all, list(self._models.values()))
        self._finalizer.atexit = False  # at plain atexit time the pool is already gone
        OPEN_DETECTORS.add(self)
        register_exit_hook()

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
                small, shrink = _shrunk_for_retry(rgb)  # once for all the looks: theirs is then a no-op
                for look in RETRY_LOOKS:
                    found, found_scale = self._find_padded(small, scale * shrink, **look)
                    if found:
                        faces, scale = found, found_scale
                        break
        faces = [rescale_face(face, 1.0 / scale, image.width, image.height) for face in faces]
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
            if any(same_face(candidate.box, face.box) for face in accepted):
                continue
            if any(box_iou(candidate.box, box)[0] >= 0.7 for box in rejected):
                continue  # as good as looked at already
            face = self._look(pixels, candidate)
            if face is None or face.score < self.min_confidence:
                rejected.append(candidate.box)
            elif not any(same_face(face.box, other.box) for other in accepted):
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
            face = shift_face(face, x0, y0)
            if box_iou(face.box, candidate.box)[0] >= 0.3 and (best is None or face.score > best.score):
                best = face
        return best

    def _find_padded(self, rgb: Image.Image, scale: float, mirror: bool = False,
                     gamma: float | None = None) -> tuple[list[Face], float]:
        """Whole-picture passes on the picture centred on a mid-grey square twice its size,
        mirrored and/or with its luminance brightened (``gamma`` < 1) first when asked.
        Returns the faces in (scaled) picture pixels and the scale of those pixels."""
        small, shrink = _shrunk_for_retry(rgb)
        if mirror:
            small = ImageOps.mirror(small)
        if gamma is not None:
            small = _brighten(small, gamma)
        width, height = small.size
        side = 2 * max(width, height)
        x0, y0 = (side - width) // 2, (side - height) // 2
        canvas = np.full((side, side, 3), PAD_VALUE, np.uint8)
        canvas[y0:y0 + height, x0:x0 + width] = np.asarray(small, dtype=np.uint8)
        faces = []
        for face in self._find(canvas, tiles=False):
            face = shift_face(face, -x0, -y0)
            if mirror:
                face = _unmirror(face, width)
            cx, cy = face.center
            if 0 <= cx < width and 0 <= cy < height:  # the face is in the picture, not the margin
                faces.append(clip_face(face, width, height))
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


def _shrunk_for_retry(rgb: Image.Image) -> tuple[Image.Image, float]:
    """The picture at most half ``PAD_RETRY_SIDE`` on its longer side, and the scale it was shrunk by."""
    shrink = min(1.0, PAD_RETRY_SIDE / 2 / max(rgb.size))
    return (_resize(rgb, shrink) if shrink < 1.0 else rgb), shrink


def _unmirror(face: Face, width: float) -> Face:
    """A face found on the mirrored picture (``width`` px wide), in the picture itself: the box
    flipped back and the left/right keypoints swapped, so "right_eye" is the subject's again."""
    x0, y0, x1, y1 = face.box
    keypoints = {_MIRRORED_KEYPOINTS.get(name, name): (width - x, y) for name, (x, y) in face.keypoints.items()}
    return Face((width - x1, y0, width - x0, y1), face.score, keypoints)


def _brighten(image: Image.Image, gamma: float) -> Image.Image:
    """``image`` with its luminance raised to the power ``gamma`` (< 1 lifts the dark parts most)."""
    lut = [round(255 * (v / 255) ** gamma) for v in range(256)]
    luma, blue, red = image.convert("YCbCr").split()
    return Image.merge("YCbCr", (luma.point(lut), blue, red)).convert("RGB")


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
