"""Where faces lie in a picture, without any detector: the tiles a group photo is searched in, box overlap
and de-duplication, reading order, the ``max_faces`` limit (``FaceList``), and moving a face between
a crop's and the picture's coordinates. Pure Python and NumPy: tests and benchmarks use it freely.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

from .face_geometry import Box, Face

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 of a square tile
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


def same_face(a: Box, b: Box, iou: float = 0.3, containment: float = 0.6) -> bool:
    overlap = box_iou(a, b)
    return overlap[0] >= iou or overlap[1] >= containment


def non_max_suppression(faces: list[Face], iou: float = 0.3, containment: float = 0.6) -> list[Face]:
    """Best-first greedy NMS. Also drops a box mostly inside a better one (a face found
    whole in one pass and in part in another)."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if not any(same_face(face.box, other.box, iou, containment) for other in kept):
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


def shift_face(face: Face, dx: float, dy: float) -> Face:
    x0, y0, x1, y1 = face.box
    keypoints = {name: (x + dx, y + dy) for name, (x, y) in face.keypoints.items()}
    return Face((x0 + dx, y0 + dy, x1 + dx, y1 + dy), face.score, keypoints)


def clip_face(face: Face, width: float, height: float) -> Face:
    x0, y0, x1, y1 = face.box
    box = (min(max(x0, 0.0), width), min(max(y0, 0.0), height),
           min(max(x1, 0.0), width), min(max(y1, 0.0), height))
    return Face(box, face.score, face.keypoints)


def rescale_face(face: Face, factor: float, width: int, height: int) -> Face:
    x0, y0, x1, y1 = (v * factor for v in face.box)
    keypoints = {name: (x * factor, y * factor) for name, (x, y) in face.keypoints.items()}
    return clip_face(Face((x0, y0, x1, y1), face.score, keypoints), width, height)
