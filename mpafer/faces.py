"""Find faces, crop them square, and name their regions: one import for both halves.

* ``mpafer.face_detection``: ``FaceDetector`` (MediaPipe BlazeFace, both bundled models,
  tiles for group photos, a second look against false faces, a padded retry for close-ups).
* ``mpafer.face_layout``: ``FaceList`` (the faces kept and how many were found), tiles, overlap,
  ``reading_order``, ``limit_faces`` (no detector needed).
* ``mpafer.face_geometry``: ``Face``, ``crop_face`` / ``CropInfo``, ``face_regions``,
  ``region_masks`` (loads no MediaPipe).
"""

from __future__ import annotations

from .face_detection import (
    DEFAULT_MAX_FACES,
    DEFAULT_MODEL_PATH,
    FULL_RANGE_MODEL,
    SHORT_RANGE_MODEL,
    FaceDetector,
)
from .face_layout import (
    FaceList,
    box_iou,
    cut_by_tile_edge,
    largest,
    limit_faces,
    non_max_suppression,
    reading_order,
    tile_sides,
    tile_windows,
)
from .face_geometry import (
    CANONICAL_KEYPOINTS,
    DEFAULT_MARGIN,
    KEYPOINT_NAMES,
    REGION_NAMES,
    Box,
    CropInfo,
    Face,
    Point,
    Regions,
    crop_face,
    face_regions,
    region_masks,
)

__all__ = [
    "CANONICAL_KEYPOINTS", "DEFAULT_MARGIN", "DEFAULT_MAX_FACES", "DEFAULT_MODEL_PATH", "FULL_RANGE_MODEL",
    "KEYPOINT_NAMES", "REGION_NAMES", "SHORT_RANGE_MODEL", "Box", "CropInfo", "Face", "FaceDetector",
    "FaceList", "Point", "Regions", "box_iou", "crop_face", "cut_by_tile_edge", "face_regions", "largest",
    "limit_faces", "non_max_suppression", "reading_order", "region_masks", "tile_sides", "tile_windows",
]
