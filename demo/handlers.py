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
from mpafer.tracking import FaceTracker

log = logging.getLogger("mpafer.demo")

UPLOAD_MAX_SIDE = 1600  # longest side kept from an upload: enough for small faces in groups
LIVE_MAX_SIDE = 480  # webcam frames are downscaled to this first: detection and drawing stay cheap
REGION_HEADERS = ["region", "description", "written for", "score", "rank"]
PROBE_HEADERS = ["class", "cosine to the class prompt"]

NO_IMAGE = "Upload a photo, take one with the webcam, or pick an example."
NO_FACE = ("**No face found.** Try a photo where the faces are frontal and well lit, and at least "
           "about 40 pixels tall (faces that are smaller, turned away or covered can be missed).")
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
Rect = tuple[float, float, float, float]


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(10, size))


def face_caption(number: int, face: FaceResult) -> str:
    return f"{number}: {face.label} {face.confidence:.0%}"


@dataclass(frozen=True)
class Tag:
    """One label drawn on the annotated image: its text, where, and the face it belongs to."""

    rect: Rect  # x0, y0, x1, y1 in image pixels, inside the image
    text: str
    face: int  # index into the faces


@dataclass(frozen=True)
class Layout:
    tags: list[Tag]
    legend: list[str]  # lines drawn in a strip at the bottom (live view, when tags had to be numbers)
    legend_rect: Rect | None
    font_size: int
    line_width: int


def _overlap(a: Rect, b: Rect) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _place(w: float, h: float, box: Rect, size: tuple[int, int], taken: list[Rect], faces: list[Rect],
           gap: float) -> tuple[Rect, int]:
    """Where a ``w`` x ``h`` tag for ``box`` goes, and how well it fits: 0, the first spot
    around the box (above, below, beside, then inside its corners), moved into the picture,
    that overlaps no other tag and no other face; 1, the first that overlaps no other tag;
    2, the nearest free spot further out (a crowd); 3, the least-overlapping spot."""
    x0, y0, x1, y1 = box
    spots = [(x0, y0 - h - gap), (x1 - w, y0 - h - gap), (x0, y1 + gap), (x1 - w, y1 + gap),
             (x0 - w - gap, y0), (x1 + gap, y0), (x0 + gap, y0 + gap), (x1 - w - gap, y1 - h - gap)]
    rects = []
    for sx, sy in spots:
        sx = min(max(sx, 0.0), max(0.0, size[0] - w))
        sy = min(max(sy, 0.0), max(0.0, size[1] - h))
        rects.append((sx, sy, sx + w, sy + h))
    others = [f for f in faces if f != box]
    for rect in rects:
        if not any(_overlap(rect, t) for t in taken) and not any(_overlap(rect, f) for f in others):
            return rect, 0
    for rect in rects:
        if not any(_overlap(rect, t) for t in taken):
            return rect, 1
    # crowded: search a grid around the box for a free spot before giving up
    step = max(2.0, h / 2)
    for ring in range(1, 12):
        for dx in range(-ring, ring + 1):
            for dy in (-ring, ring) if abs(dx) != ring else range(-ring, ring + 1):
                sx = min(max(x0 + dx * step, 0.0), max(0.0, size[0] - w))
                sy = min(max(y0 - h + dy * step, 0.0), max(0.0, size[1] - h))
                rect = (sx, sy, sx + w, sy + h)
                if not any(_overlap(rect, t) for t in taken):
                    return rect, 2
    return min(rects, key=lambda r: sum(_overlap(r, t) for t in taken)), 3


def layout(size: tuple[int, int], faces: list[FaceResult], labels: bool = False) -> Layout:
    """Where the tags of ``faces`` go on a picture of ``size``.

    Each face gets a numbered marker (its position in ``faces``: reading order) beside its
    box; the details (label, confidence) are listed below the picture by the UI. With
    ``labels`` (the live view, which has no text beside it) the tag carries them, "1
    happiness 82%", and when any of those cannot be placed clear of the others, every face
    gets a number and the details go to a strip at the bottom of the picture. Tags never
    overlap one another or the strip and never leave the picture.
    """
    width, height = size
    boxes = [tuple(float(v) for v in face.box) for face in faces]
    heights = sorted(b[3] - b[1] for b in boxes) or [0.0]
    median = heights[len(heights) // 2]
    scale = max(size) / 640
    font_size = int(min(max(round(0.42 * median), 11), max(11, round(18 * scale))))
    line_width = int(max(1, min(round(2 * scale), round(median / 20))))
    font = _font(font_size)
    pad = max(2, font_size // 5)

    def tag_size(text: str) -> tuple[float, float]:
        left, top, right, bottom = font.getbbox(text)
        return right - left + 2 * pad, font_size + 2 * pad

    def place_all(texts: list[str], reserved: list[Rect]) -> tuple[list[Tag], int]:
        taken, tags, worst = list(reserved), [], 0
        for i, (box, text) in enumerate(zip(boxes, texts)):
            rect, fit = _place(*tag_size(text), box, size, taken, boxes, gap=line_width)
            worst = max(worst, fit)
            taken.append(rect)
            tags.append(Tag(rect, text, i))
        return tags, worst

    numbers = [str(n) for n in range(1, len(faces) + 1)]
    if labels and faces:
        tags, worst = place_all([f"{n} {f.label} {f.confidence:.0%}" for n, f in enumerate(faces, 1)], [])
        if worst == 0:  # every label beside its own face, covering no other
            return Layout(tags, [], None, font_size, line_width)
        legend = _legend_lines([face_caption(n, f) for n, f in enumerate(faces, 1)], font, width - 2 * pad)
        strip_h = len(legend) * (font_size + pad) + pad
        strip = (0.0, max(0.0, height - strip_h), float(width), float(height))
        tags, _ = place_all(numbers, [strip])
        return Layout(tags, legend, strip, font_size, line_width)
    tags, _ = place_all(numbers, [])
    return Layout(tags, [], None, font_size, line_width)


def _legend_lines(entries: list[str], font: ImageFont.ImageFont, width: float) -> list[str]:
    lines, line = [], ""
    for entry in entries:
        candidate = f"{line}   {entry}" if line else entry
        if line and font.getlength(candidate) > width:
            lines.append(line)
            candidate = entry
        line = candidate
    return lines + ([line] if line else [])


def annotate(image: Image.Image, faces: list[FaceResult], heat: bool = False, labels: bool = False
             ) -> Image.Image:
    """A copy of ``image`` with a box and a numbered marker per face (see ``layout``; with
    ``labels`` the marker also says the label), and, with ``heat``, the predicted class's
    heatmap blended into each face's crop square. The copy carries no metadata: EXIF
    (camera, GPS) of an upload never reaches what is served back."""
    canvas = Image.fromarray(np.asarray(image.convert("RGB")))
    if heat:
        for face in faces:
            _paste_heat(canvas, face)
    plan = layout(canvas.size, faces, labels)
    draw = ImageDraw.Draw(canvas)
    font = _font(plan.font_size)
    pad = max(2, plan.font_size // 5)
    for number, face in enumerate(faces, 1):
        draw.rectangle(face.box, outline=PALETTE[(number - 1) % len(PALETTE)], width=plan.line_width)
    for tag in plan.tags:
        colour = PALETTE[tag.face % len(PALETTE)]
        draw.rectangle(tag.rect, fill=colour)
        top = font.getbbox(tag.text)[1]
        draw.text((tag.rect[0] + pad, tag.rect[1] + pad - top), tag.text, fill=(0, 0, 0), font=font)
    if plan.legend_rect is not None:
        draw.rectangle(plan.legend_rect, fill=(20, 20, 20))
        for row, line in enumerate(plan.legend):
            draw.text((pad, plan.legend_rect[1] + pad + row * (plan.font_size + pad)), line,
                      fill=(255, 255, 255), font=font)
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
    """The details below the annotated image: each face's number, label and confidence. Says
    so when the face limit was reached (``faces.found``, from ``Predictor.predict``)."""
    found = getattr(faces, "found", len(faces))
    if len(faces) == 1 and found == 1:
        face = faces[0]
        return f"**One face:** {face.label} ({face.confidence:.0%})."
    listed = "; ".join(f"{n}: {f.label} ({f.confidence:.0%})" for n, f in enumerate(faces, 1))
    head = (f"**Showing the {len(faces)} largest of {found} faces**" if found > len(faces)
            else f"**{len(faces)} faces**")
    return (f"{head}, numbered in reading order (rows top to bottom, each left to right). "
            f"{listed}. Pick one below to see why.")


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


def smooth(predictor: Predictor, faces: list[FaceResult], tracker: FaceTracker,
           now: float | None = None) -> list[FaceResult]:
    """``faces`` of one video frame with each label and probabilities replaced by their mean
    over the face's track (``mpafer.tracking``: about the last half second), and the heatmap
    redrawn for that label when it is not the frame's own."""
    smoothed = tracker.update([f.box for f in faces], [f.probabilities for f in faces], now)
    out = []
    for face, mean in zip(faces, smoothed):
        heat = face.heatmaps.get(mean.label)
        if heat is None:
            heat = predictor.class_heatmap(face, mean.label)
        out.append(replace(face, label=mean.label, probabilities=mean.probabilities, heatmaps={mean.label: heat}))
    return out


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
        faces = predictor.predict(picture, explain=False, max_side=None)
        if tracker is not None:
            faces = smooth(predictor, faces, tracker)
        return np.asarray(annotate(picture, faces, heat=True, labels=True))
    except ImageError as err:  # an empty or broken frame: skip it
        log.debug("live frame skipped: %s", err)
        return None
    except Exception:  # noqa: BLE001 - a bad frame must not end the stream
        log.exception("live frame failed")
        return None
