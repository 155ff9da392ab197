"""The Photo tab's event handlers, as plain functions of a ``Predictor`` and the UI's values.

Nothing here needs a browser or a running server, so each handler is tested directly.
Handlers never raise: unreadable input, a missing face or an unexpected failure becomes a
short message for the user (the details of unexpected failures go to the server log).

An upload arrives as Gradio's raw file payload (the app turns Gradio's own image decoding off,
which would fail on a non-image before a handler could answer, and would decode a huge photo
at full size). It is decoded once, here, by ``mpafer.images.load_image`` (EXIF rotation,
transparency, grey scale, 16-bit and huge images are handled there), its file deleted at once
(``demo.uploads.discard_upload``), and the decoded picture goes to
``Predictor.predict_picture``, which does not decode it again. Each face comes back with its
``FaceExplanation``; the panels only render it (``demo.face_panel``).

The other handlers: the probe (``demo.probe_view.probe``) and the live webcam
(``demo.live_view.live``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import gradio as gr

from demo.annotate import annotate, face_caption
from demo.face_panel import face_at, contrast_view, face_view, picked_class
from demo.outputs import (EMPTY_CONTRAST, EMPTY_FACE, EMPTY_PROBE, UNCHANGED, AnalyzeOutputs, ContrastOutputs,
                          FaceView, ProbeOutputs, Session)
from demo.uploads import already_discarded, discard_upload, image_source, unreadable
from demo.wording import describe_faces
from mpafer.images import MIN_SIDE, ImageError, load_image
from mpafer.predictor import Predictor

log = logging.getLogger("mpafer.demo")

UPLOAD_MAX_SIDE = 1600  # longest side kept from an upload: enough for small faces in groups
NO_IMAGE = "Upload a photo, take one with the webcam, or pick an example."
NO_FACE = ("**No face found.** Try a photo where the faces are frontal and well lit, and at least "
           "about 40 pixels tall (faces that are smaller, turned away or covered can be missed).")
FAILED = "**Something went wrong while analysing this image.** Please try another one."
NO_FACES_SELECTOR = {"choices": [], "value": None, "visible": False}


def _failure(message: str, annotated=None) -> AnalyzeOutputs:
    return AnalyzeOutputs(annotated, message, gr.update(**NO_FACES_SELECTOR), *EMPTY_FACE, *EMPTY_PROBE, None)


def analyze(predictor: Predictor, image: Any, gradcam: bool = False, heat_class: str | None = None, *,
            uploads: str | Path | None = None, keep: Iterable[str | Path] = ()) -> AnalyzeOutputs:
    """Find, classify and explain every face in an uploaded image (path, bytes, array, PIL
    image or Gradio file payload). The second heatmap shows ``heat_class``, by default each
    face's predicted class; the last probe's results are cleared.

    ``uploads``: the app's private temp folder. A Gradio upload inside it is deleted as soon
    as it is decoded, readable or not (``discard_upload``; ``keep``: files never deleted).
    """
    if image is None:
        return _failure(NO_IMAGE)
    if uploads is not None and already_discarded(image):  # the same upload again: keep what is shown
        return UNCHANGED
    try:
        try:
            picture = load_image(image_source(image), max_side=UPLOAD_MAX_SIDE, min_side=MIN_SIDE)
        finally:
            discard_upload(image, uploads, keep)
        # decoded once: the predictor takes the picture as it is. Grad-CAM and the occlusion
        # check are left to face_view: they run for the face on screen only
        faces = predictor.predict_picture(picture, explain=True)
    except (ImageError, TypeError) as err:
        return _failure(unreadable(err, image))
    except Exception:  # noqa: BLE001 - never a stack trace in the UI
        log.exception("analysis failed")
        return _failure(FAILED)
    if not faces:
        return _failure(NO_FACE, annotated=picture)
    session = Session(list(faces))
    choices = [(f"Face {face_caption(n, face)}", n - 1) for n, face in enumerate(faces, 1)]
    return AnalyzeOutputs(
        annotate(picture, faces),
        describe_faces(faces),
        gr.update(choices=choices, value=0, visible=len(faces) > 1),
        *face_view(predictor, session, 0, heat_class, bool(gradcam)),
        *EMPTY_PROBE,
        session,
    )


def select_face(predictor: Predictor, session: Session | None, index: Any, heat_class: str | None,
                gradcam: bool, contrast_class: str | None = None) -> FaceView:
    """Re-render the panel for another class or Grad-CAM setting: no new forward pass (Grad-CAM of
    a new class is one backward pass). The contrast keeps its B unless it is the new class."""
    return face_view(predictor, session, index, heat_class, bool(gradcam), contrast_class)


def contrast(predictor: Predictor, session: Session | None, index: Any, heat_class: str | None,
             contrast_class: str | None) -> ContrastOutputs:
    """Only the "why A rather than B" view, for another B: A is the class of the second heatmap."""
    face = face_at(session, index)
    if face is None:
        return EMPTY_CONTRAST
    try:
        return contrast_view(face, picked_class(face, heat_class), contrast_class)
    except Exception:  # noqa: BLE001
        log.exception("could not draw the contrast view")
        return ContrastOutputs(None, "The comparison could not be drawn for this face.", gr.update())


def change_face(predictor: Predictor, session: Session | None, index: Any, gradcam: bool
                ) -> tuple[FaceView, ProbeOutputs]:
    """Another face picked: its panel, with the class picker back on its predicted class, and
    the last probe's results (which were about the other face) cleared."""
    return face_view(predictor, session, index, None, bool(gradcam)), EMPTY_PROBE
