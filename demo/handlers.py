"""The demo's event handlers, as plain functions of a ``Predictor`` and the UI's values.

Nothing here needs a browser or a running server, so each handler is tested directly.
Handlers never raise: unreadable input, a missing face or an unexpected failure becomes a
short message for the user (the details of unexpected failures go to the server log).
Uploads arrive as Gradio's raw file payload (the app turns Gradio's own image decoding
off, which would fail on a non-image before a handler could answer, and would decode a huge
photo at full size), webcam frames as numpy arrays. Both are read with
``mpafer.images.load_image``, so EXIF rotation, transparency, grey scale, 16-bit and huge
images are handled in one place.
"""
from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mpafer.explain import overlay
from mpafer.images import ImageError, load_image
from mpafer.predictor import FaceResult, Predictor

log = logging.getLogger("mpafer.demo")

UPLOAD_MAX_SIDE = 1600  # longest side kept from an upload: enough for small faces in groups
LIVE_MAX_SIDE = 480  # webcam frames are downscaled to this first: detection and drawing stay cheap
REGION_HEADERS = ["region", "description", "written for", "score", "rank"]
PROBE_HEADERS = ["class", "cosine to the class prompt"]

NO_IMAGE = "Upload a photo, take one with the webcam, or pick an example."
NO_FACE = ("**No face found.** Try a photo where the face is larger, frontal and well lit "
           "(faces narrower than about a tenth of the picture can be missed).")
FAILED = "**Something went wrong while analysing this image.** Please try another one."


@dataclass
class Session:
    """One browser tab's last analysis (kept in ``gr.State``: server memory only)."""

    faces: list[FaceResult]

    @classmethod
    def keep(cls, faces: list[FaceResult]) -> "Session":
        """Without the full-size heatmaps (1.6 MB a face): they are redrawn from the patch-grid
        maps kept with each face when asked, so a tab's state stays a few hundred KB a face."""
        return cls([replace(face, heatmaps={}) for face in faces])


class FaceView(NamedTuple):
    probabilities: dict[str, float] | None
    heatmap: Image.Image | None  # the predicted class
    class_heatmap: Image.Image | None  # the class picked in the dropdown
    gradcam: dict[str, Any]  # a gr.update for the Grad-CAM image (hidden when off)
    regions: list[list[Any]]


class AnalyzeOutputs(NamedTuple):
    annotated: Image.Image | None
    message: str
    face_selector: dict[str, Any]  # gr.update: choices, value, visible
    probabilities: dict[str, float] | None
    heatmap: Image.Image | None
    class_heatmap: Image.Image | None
    gradcam: dict[str, Any]
    regions: list[list[Any]]
    session: Session | None


class ProbeOutputs(NamedTuple):
    heatmap: Image.Image | None
    message: str
    scores: list[list[Any]]


EMPTY_FACE = FaceView(None, None, None, gr.update(value=None, visible=False), [])


# ---- drawing -----------------------------------------------------------------------------------

PALETTE = [(255, 196, 0), (0, 200, 255), (255, 90, 160), (120, 230, 90), (190, 140, 255)]


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(10, size))


def face_caption(number: int, face: FaceResult) -> str:
    return f"{number}: {face.label} {face.confidence:.0%}"


def annotate(image: Image.Image, faces: list[FaceResult], heat: bool = False) -> Image.Image:
    """A copy of ``image`` with a numbered box and label per face (and, with ``heat``, the
    predicted class's heatmap blended into each face's crop square). The copy carries no
    metadata: EXIF (camera, GPS) of an upload never reaches what is served back."""
    canvas = Image.fromarray(np.asarray(image.convert("RGB")))
    if heat:
        for face in faces:
            _paste_heat(canvas, face)
    draw = ImageDraw.Draw(canvas)
    scale = max(canvas.size) / 640
    width = max(2, round(2 * scale))
    font = _font(round(16 * scale))
    for number, face in enumerate(faces, 1):
        colour = PALETTE[(number - 1) % len(PALETTE)]
        x0, y0, x1, y1 = face.box
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        text = face_caption(number, face)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        label_h = bottom - top + 2 * width
        ty = y0 - label_h if y0 - label_h >= 0 else y1  # above the box, or below when no room
        draw.rectangle((x0, ty, x0 + right - left + 2 * width, ty + label_h), fill=colour)
        draw.text((x0 + width, ty + width - top), text, fill=(0, 0, 0), font=font)
    return canvas


def _paste_heat(canvas: Image.Image, face: FaceResult) -> None:
    heat = face.heatmaps.get(face.label)
    if heat is None:
        return
    info = face.crop_info
    x0, y0, x1, y1 = (round(v) for v in info.box_to_image((0.0, 0.0, info.size, info.size)))
    side = x1 - x0
    if side < 2:
        return
    tile = overlay(face.crop, heat, alpha=0.4).resize((side, side), Image.Resampling.BILINEAR)
    canvas.paste(tile, (x0, y0))  # PIL clips what falls outside the frame


def heatmap_image(face: FaceResult, heat: np.ndarray) -> Image.Image:
    return overlay(face.crop, heat)


# ---- results to UI values --------------------------------------------------------------------------


def region_rows(face: FaceResult) -> list[list[Any]]:
    rows = []
    for region, items in face.regions.items():
        for item in items:
            mark = " (predicted)" if item.predicted else ""
            rows.append([region, item.text, item.class_name + mark, round(item.score, 3), f"{item.rank}/{item.of}"])
    return rows


def _face_at(session: Session | None, index: Any) -> FaceResult | None:
    if session is None or not session.faces:
        return None
    try:
        position = int(index)
    except (TypeError, ValueError):
        position = 0
    return session.faces[min(max(position, 0), len(session.faces) - 1)]


def face_view(predictor: Predictor, session: Session | None, index: Any, heat_class: str | None,
              gradcam: bool) -> FaceView:
    """Everything shown for the selected face."""
    face = _face_at(session, index)
    if face is None:
        return EMPTY_FACE
    try:
        chosen = heat_class if heat_class in predictor.classes else face.label
        picked = heatmap_image(face, predictor.class_heatmap(face, chosen))
        return FaceView(
            probabilities=dict(face.probabilities),
            heatmap=heatmap_image(face, predictor.class_heatmap(face, face.label)),
            class_heatmap=picked,
            gradcam=gradcam_update(predictor, face, gradcam),
            regions=region_rows(face),
        )
    except Exception:  # noqa: BLE001 - the UI shows an empty panel, the log keeps the cause
        log.exception("could not render the face view")
        return EMPTY_FACE


def gradcam_update(predictor: Predictor, face: FaceResult, enabled: bool) -> dict[str, Any]:
    if not enabled:
        return gr.update(value=None, visible=False)
    if face.gradcam is None:
        predictor.add_gradcam([face])  # computed once per face, then kept with it
    return gr.update(value=overlay(face.crop, face.gradcam), visible=True)


# ---- handlers ------------------------------------------------------------------------------------


def image_source(value: Any) -> Any:
    """What ``load_image`` should read: Gradio's file payload (a dict with ``path``, or a
    ``data:`` URL, decoded in memory) becomes a path or bytes; anything else is passed on."""
    if not isinstance(value, dict):
        return value
    if value.get("path"):
        return value["path"]
    url = value.get("url") or ""
    if url.startswith("data:") and "," in url:
        try:
            return base64.b64decode(url.split(",", 1)[1], validate=False)
        except (binascii.Error, ValueError) as err:
            raise ImageError(f"the uploaded data is not valid base64 ({err})") from err
    raise ImageError("the upload carried no file")



def _failure(message: str) -> AnalyzeOutputs:
    return AnalyzeOutputs(None, message, gr.update(choices=[], value=None, visible=False), *EMPTY_FACE, None)


def describe_faces(faces: list[FaceResult]) -> str:
    if len(faces) == 1:
        face = faces[0]
        return f"**One face:** {face.label} ({face.confidence:.0%})."
    listed = "; ".join(f"{n}: {f.label} ({f.confidence:.0%})" for n, f in enumerate(faces, 1))
    return f"**{len(faces)} faces**, numbered left to right. {listed}. Pick one below to see why."


def _reason(err: Exception, image: Any) -> str:
    """The loader's reason, with Gradio's temp path replaced by the name the user knows."""
    text = str(err)
    if isinstance(image, dict) and image.get("path"):
        text = text.replace(str(image["path"]), str(image.get("orig_name") or "the upload"))
    return text[:300]


def analyze(predictor: Predictor, image: Any, gradcam: bool = False, heat_class: str | None = None
            ) -> AnalyzeOutputs:
    """Find, classify and explain every face in an uploaded image (path, bytes, array, PIL
    image or Gradio file payload)."""
    if image is None:
        return _failure(NO_IMAGE)
    try:
        picture = load_image(image_source(image), max_side=UPLOAD_MAX_SIDE)
        faces = predictor.predict(picture, explain=True, gradcam=bool(gradcam), max_side=None)
    except (ImageError, TypeError) as err:
        return _failure(f"**This file could not be read as an image.** {_reason(err, image)}")
    except Exception:  # noqa: BLE001 - never a stack trace in the UI
        log.exception("analysis failed")
        return _failure(FAILED)
    if not faces:
        return AnalyzeOutputs(picture, NO_FACE, gr.update(choices=[], value=None, visible=False),
                              *EMPTY_FACE, None)
    session = Session.keep(faces)
    choices = [(f"Face {face_caption(n, face)}", n - 1) for n, face in enumerate(faces, 1)]
    return AnalyzeOutputs(
        annotate(picture, faces),
        describe_faces(faces),
        gr.update(choices=choices, value=0, visible=len(faces) > 1),
        *face_view(predictor, session, 0, heat_class, bool(gradcam)),
        session,
    )


def select_face(predictor: Predictor, session: Session | None, index: Any, heat_class: str | None,
                gradcam: bool) -> FaceView:
    """Re-render the panel for another face, class or Grad-CAM setting: no new forward pass."""
    return face_view(predictor, session, index, heat_class, bool(gradcam))


def probe(predictor: Predictor, session: Session | None, index: Any, text: str | None) -> ProbeOutputs:
    """Where a typed description matches the selected face, and how it scores against each class."""
    face = _face_at(session, index)
    if face is None:
        return ProbeOutputs(None, "Analyse a photo with a face first, then type a description.", [])
    if not text or not text.strip():
        return ProbeOutputs(None, "Type a description, e.g. *wrinkled nose* or *eyes wide open*.", [])
    try:
        result = predictor.probe(face, text)
    except ValueError as err:
        return ProbeOutputs(None, str(err), [])
    except Exception:  # noqa: BLE001
        log.exception("probe failed")
        return ProbeOutputs(None, "**The probe failed.** Please try another description.", [])
    ranked = sorted(result.class_similarity.items(), key=lambda item: -item[1])
    message = (f"**“{result.text}”**: mean match over the face {result.mean_activation:.3f}, "
               f"peak {result.peak_activation:.3f}; closest class prompt: **{result.closest_class}**.")
    return ProbeOutputs(overlay(face.crop, result.heatmap), message,
                        [[name, round(value, 3)] for name, value in ranked])


def live(predictor: Predictor, frame: np.ndarray | None) -> np.ndarray | None:
    """One webcam frame in, the annotated frame out: detection, one batched forward, the
    predicted class's heatmap on each face. No descriptions, no Grad-CAM: this must keep up."""
    if frame is None:
        return None
    try:
        picture = load_image(frame, max_side=LIVE_MAX_SIDE)
        faces = predictor.predict(picture, explain=False, max_side=None)
        return np.asarray(annotate(picture, faces, heat=True))
    except ImageError as err:  # an empty or broken frame: skip it
        log.debug("live frame skipped: %s", err)
        return None
    except Exception:  # noqa: BLE001 - a bad frame must not end the stream
        log.exception("live frame failed")
        return None
