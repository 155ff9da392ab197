"""The live webcam view: one frame in, the annotated frame out, labels smoothed per face."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from demo.annotate import annotate
from mpafer.images import ImageError, load_image
from mpafer.predictor import FaceResult, Predictor
from mpafer.tracking import FaceTracker

log = logging.getLogger("mpafer.demo")

LIVE_MAX_SIDE = 480  # webcam frames are downscaled to this first: detection and drawing stay cheap

def smooth(faces: list[FaceResult], tracker: FaceTracker, now: float | None = None) -> list[FaceResult]:
    """``faces`` of one video frame with each label and probabilities replaced by their mean
    over the face's track (``mpafer.tracking``: about the last half second); the heatmap drawn
    is that label's (``annotate`` reads it off the face's explanation)."""
    smoothed = tracker.update([f.box for f in faces], [f.probabilities for f in faces], now)
    return [replace(face, label=mean.label, probabilities=mean.probabilities) for face, mean in zip(faces, smoothed)]


def live(predictor: Predictor, frame: np.ndarray | None, tracker: FaceTracker | None = None
         ) -> np.ndarray | None:
    """One webcam frame in, the annotated frame out: detection, one batched forward, the
    predicted class's heatmap on each face, labels on the frame. No descriptions, no
    Grad-CAM: this must keep up. With a ``tracker`` (one per stream), labels are smoothed
    over about half a second per face (``smooth``) instead of flickering frame to frame."""
    if frame is None:
        return None
    try:
        picture = load_image(frame, max_side=LIVE_MAX_SIDE)
        faces = predictor.predict_picture(picture, explain=False)  # decoded once, above
        if tracker is not None:
            faces = smooth(faces, tracker)
        return np.asarray(annotate(picture, faces, heat=True, labels=True))
    except ImageError as err:  # an empty or broken frame: skip it
        log.debug("live frame skipped: %s", err)
        return None
    except Exception:  # noqa: BLE001 - a bad frame must not end the stream
        log.exception("live frame failed")
        return None
