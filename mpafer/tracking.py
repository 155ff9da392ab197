"""Follow faces from frame to frame and smooth what the model says about each (live video).

A per-frame prediction flickers: the same face reads "neutral 48 %" in one frame and
"sadness 51 %" in the next. ``FaceTracker.update`` takes one frame's face boxes and class
probabilities and answers, per face, the mean probabilities of that face over the last
``window_s`` seconds (about half a second: 5 frames at the demo's 10 frames a second) and
the label they give, so a label changes only when the expression does for a good part of
that window.

Faces are matched to tracks by box overlap: all (face, track) pairs with IoU of at least
``min_iou``, best first, each face and track used once. A face without a match starts a
new track; a track not seen for ``max_missing_s`` is forgotten. Pure Python and numpy; no
MediaPipe, no torch.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float]


def iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """One face followed over frames."""

    id: int
    box: Box
    last_seen: float
    history: deque = field(default_factory=deque)  # (time, probabilities as a float array)

    def mean(self) -> np.ndarray:
        return np.mean([p for _, p in self.history], axis=0)


@dataclass(frozen=True)
class Smoothed:
    """What to show for one face of the frame: its track and its smoothed prediction."""

    track_id: int
    label: str
    probabilities: dict[str, float]  # mean over the window, in the classes' order
    frames: int  # how many frames the mean is over (1 for a new face)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]


class FaceTracker:
    """Track faces by IoU and average their class probabilities over ``window_s`` seconds.

    One tracker per video stream (a browser tab's webcam). Thread-safe; copyable and
    picklable (Gradio may copy session state).
    """

    def __init__(self, window_s: float = 0.5, min_iou: float = 0.3, max_missing_s: float = 1.0):
        if window_s <= 0 or max_missing_s < 0 or not 0.0 < min_iou <= 1.0:
            raise ValueError("window_s must be > 0, max_missing_s >= 0 and min_iou in (0, 1]")
        self.window_s = window_s
        self.min_iou = min_iou
        self.max_missing_s = max_missing_s
        self.tracks: list[Track] = []
        self.classes: tuple[str, ...] | None = None
        self._next_id = 1
        self._last_time: float | None = None
        self._lock = threading.Lock()

    def update(self, boxes: Sequence[Box], probabilities: Sequence[Mapping[str, float]],
               now: float | None = None) -> list[Smoothed]:
        """One frame: its face boxes and each face's class probabilities (same order).
        Returns one ``Smoothed`` per face, in the order given. ``now``: the frame's time in
        seconds (default ``time.monotonic()``); a frame with no faces still ages the tracks."""
        if len(boxes) != len(probabilities):
            raise ValueError(f"{len(boxes)} boxes but {len(probabilities)} probability sets")
        now = time.monotonic() if now is None else float(now)
        with self._lock:
            classes = tuple(probabilities[0]) if probabilities else self.classes
            if classes != self.classes or (self._last_time is not None and now < self._last_time):
                self._reset(classes)  # another model, or a clock that went back: start over
            self._last_time = now
            self.tracks = [t for t in self.tracks if now - t.last_seen <= self.max_missing_s]
            assigned = self._match(boxes)
            out = []
            for i, (box, probs) in enumerate(zip(boxes, probabilities)):
                track = assigned.get(i)
                if track is None:
                    track = Track(self._next_id, tuple(box), now)
                    self._next_id += 1
                    self.tracks.append(track)
                vector = np.asarray([float(probs[c]) for c in self.classes], dtype=np.float64)
                track.box, track.last_seen = tuple(box), now
                track.history.append((now, vector))
                while track.history and track.history[0][0] <= now - self.window_s:
                    track.history.popleft()
                mean = track.mean()
                out.append(Smoothed(track.id, self.classes[int(np.argmax(mean))],
                                    {c: float(v) for c, v in zip(self.classes, mean)}, len(track.history)))
            return out

    def reset(self) -> None:
        with self._lock:
            self._reset(self.classes)

    def _reset(self, classes: tuple[str, ...] | None) -> None:
        self.tracks, self.classes, self._last_time = [], classes, None

    def _match(self, boxes: Sequence[Box]) -> dict[int, Track]:
        pairs = sorted(((iou(tuple(box), track.box), i, n) for i, box in enumerate(boxes)
                        for n, track in enumerate(self.tracks)), reverse=True)
        assigned: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, i, n in pairs:
            if overlap < self.min_iou:
                break
            if i not in assigned and n not in used:
                assigned[i] = self.tracks[n]
                used.add(n)
        return assigned

    # a lock cannot be copied or pickled: leave it out and make a new one
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
