"""The demo's event handlers, as plain functions of a ``Predictor`` and the UI's values.

Nothing here needs a browser or a running server, so each handler is tested directly.
Handlers never raise: unreadable input, a missing face or an unexpected failure becomes a
short message for the user (the details of unexpected failures go to the server log).
Uploads arrive as Gradio's raw file payload (the app turns Gradio's own image decoding
off, which would fail on a non-image before a handler could answer, and would decode a huge
photo at full size), webcam frames as numpy arrays. Both are read with
``mpafer.images.load_image``, so EXIF rotation, transparency, grey scale, 16-bit and huge
images are handled in one place. Gradio's file of an upload is deleted as soon as it is
decoded (``discard_upload``).

What the screen says is written here too: scores in words (``match_words``), the colour
legend drawn under every heatmap (``with_legend``), the occlusion check in words
(``occlusion_rows``), the probe's messages. The model reads
facial *expressions* (how a face looks), not what a person feels; the wording keeps to that.
"""
from __future__ import annotations

import base64
import binascii
import filecmp
import logging
import math
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mpafer.description_scores import DescriptionScore
from mpafer.explain import overlay
from mpafer.heatmaps import HeatScale, contrast_overlay, outline_cells, upsample
from mpafer.images import MIN_SIDE, ImageError, load_image
from mpafer.occlusion import OcclusionResult
from mpafer.predictor import FaceResult, Predictor
from mpafer.tracking import FaceTracker

log = logging.getLogger("mpafer.demo")

UPLOAD_MAX_SIDE = 1600  # longest side kept from an upload: enough for small faces in groups
LIVE_MAX_SIDE = 480  # webcam frames are downscaled to this first: detection and drawing stay cheap
REGION_HEADERS = ["region", "description", "written for", "match", "rank in region"]
SHORT_TABLE_ROWS = 3  # descriptions per region in the short table; the rest are behind an accordion
PROBE_MAX_CHARS = 200  # longer probes are cut (and the user told): text encoders read ~77 tokens at most
PROBE_CHART_X, PROBE_CHART_Y = "expression", "closeness"
OCCLUSION_HEADERS = ["part of the face blurred", "predicted expression's probability", "change", "what it means"]
OCCLUSION_LOT, OCCLUSION_SOME = 0.10, 0.02  # probability changes said "a lot" / "a little" (0.02 = 2 points)

NO_IMAGE = "Upload a photo, take one with the webcam, or pick an example."
NO_PROBE_FACE = "Analyse a photo with a face first, then type a description."
PROBE_EXAMPLE = "e.g. wrinkled nose, or eyes wide open"
NO_FACE = ("**No face found.** Try a photo where the faces are frontal and well lit, and at least "
           "about 40 pixels tall (faces that are smaller, turned away or covered can be missed).")
FAILED = "**Something went wrong while analysing this image.** Please try another one."


@dataclass
class Session:
    """One browser tab's last analysis (kept in ``gr.State``: server memory only)."""

    faces: list[FaceResult]
    # what is computed on demand for one face, kept for the next look at it: (face index, kind) ->
    # its occlusion check ("occlusion"), its last Grad-CAM of a class other than the predicted one
    # ("gradcam": (class, map))
    extras: dict[tuple[int, str], Any] = field(default_factory=dict)

    @classmethod
    def keep(cls, faces: list[FaceResult]) -> "Session":
        """Without the full-size heatmaps (1.6 MB a face): they are redrawn from the patch-grid
        maps kept with each face when asked, so a tab's state stays a few hundred KB a face."""
        return cls([replace(face, heatmaps={}) for face in faces])


class FaceView(NamedTuple):
    probabilities: dict[str, float] | None
    heatmap: Image.Image | None  # the predicted class, with its colour legend below
    class_heatmap: Image.Image | None  # the class picked in the dropdown, on the same scale
    gradcam: dict[str, Any]  # a gr.update for the Grad-CAM image (hidden when off)
    regions: list[list[Any]]  # the best SHORT_TABLE_ROWS descriptions per region
    more_regions: list[list[Any]]  # the other scored descriptions (behind an accordion)
    heat_legend: str  # what red and blue mean, the scale and the outlines (markdown)
    score_key: str  # what the match words and numbers mean (markdown)
    heat_class: dict[str, Any]  # gr.update for the class picker: the class its heatmap shows
    contrast: Image.Image | None  # "why A rather than B": A (the picked class) minus B, with its legend
    contrast_legend: str  # what red and blue mean on the contrast view (markdown)
    contrast_class: dict[str, Any]  # gr.update for B's picker (starts at the runner-up)
    occlusion: list[list[Any]]  # OCCLUSION_HEADERS rows: each region blurred out, largest drop first
    occlusion_summary: str  # the occlusion check in a sentence (markdown)


class ContrastOutputs(NamedTuple):
    contrast: Image.Image | None
    contrast_legend: str
    contrast_class: dict[str, Any]


class ProbeOutputs(NamedTuple):
    heatmap: Image.Image | None
    message: str  # plain text: shown in a Textbox, never rendered as markdown or HTML
    chart: Any  # pandas DataFrame (PROBE_CHART_X, PROBE_CHART_Y) for a bar chart, or None


class AnalyzeOutputs(NamedTuple):
    annotated: Image.Image | None
    message: str
    face_selector: dict[str, Any]  # gr.update: choices, value, visible
    probabilities: dict[str, float] | None
    heatmap: Image.Image | None
    class_heatmap: Image.Image | None
    gradcam: dict[str, Any]
    regions: list[list[Any]]
    more_regions: list[list[Any]]
    heat_legend: str
    score_key: str
    heat_class: dict[str, Any]
    contrast: Image.Image | None
    contrast_legend: str
    contrast_class: dict[str, Any]
    occlusion: list[list[Any]]
    occlusion_summary: str
    probe_heatmap: Image.Image | None  # a new photo clears the last probe's results
    probe_message: str
    probe_chart: Any
    session: Session | None


EMPTY_CONTRAST = ContrastOutputs(None, "", gr.update())
EMPTY_FACE = FaceView(None, None, None, gr.update(value=None, visible=False), [], [], "", "", gr.update(),
                      *EMPTY_CONTRAST, [], "")
EMPTY_PROBE = ProbeOutputs(None, "", None)
UNCHANGED = AnalyzeOutputs(*(gr.skip() for _ in AnalyzeOutputs._fields))  # every output left as it is


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


# ---- colour legends -----------------------------------------------------------------------------

HEAT_CMAP = "jet"  # what mpafer.heatmaps.overlay colours with: blue (0) ... red (1)
CONTRAST_CMAP = "RdBu_r"  # what mpafer.heatmaps.contrast_overlay colours with: blue (B) ... red (A)
WEAK_STRONG = ("blue: weak match", "red: strong match")
OUTLINE_COLOUR = (255, 255, 255)


def legend_strip(width: int, left: str, right: str, notes: Iterable[str] = (), cmap: str = HEAT_CMAP
                 ) -> Image.Image:
    """A white strip ``width`` wide: the colormap from its cold end (left) to its hot end, the
    words for both ends under it, then centred lines of ``notes`` (the scale)."""
    from matplotlib import colormaps  # no pyplot: no GUI backend

    notes = [n for n in notes if n]
    pad, bar_h = 3, 8
    size = 11
    font = _font(size)
    while size > 8 and max([font.getlength(f"{left}  {right}"), *map(font.getlength, notes)]) > width - 2 * pad:
        size -= 1
        font = _font(size)
    line = size + 3
    strip = Image.new("RGB", (width, pad + bar_h + pad + line * (1 + len(notes)) + pad), (255, 255, 255))
    colours = colormaps[cmap](np.linspace(0.0, 1.0, max(1, width - 2 * pad)))[:, :3]
    bar = np.repeat((colours[None] * 255 + 0.5).astype(np.uint8), bar_h, axis=0)
    strip.paste(Image.fromarray(bar), (pad, pad))
    draw = ImageDraw.Draw(strip)
    y = pad + bar_h + pad
    draw.text((pad, y), left, fill=(0, 0, 0), font=font)
    draw.text((width - pad - font.getlength(right), y), right, fill=(0, 0, 0), font=font)
    for row, note in enumerate(notes, 1):
        draw.text(((width - font.getlength(note)) / 2, y + row * line), note, fill=(70, 70, 70), font=font)
    return strip


def with_legend(image: Image.Image, left: str, right: str, notes: Iterable[str] = (), cmap: str = HEAT_CMAP
                ) -> Image.Image:
    """``image`` with a colour legend (``legend_strip``) below it: what red and blue mean, on what scale."""
    strip = legend_strip(image.width, left, right, notes, cmap)
    out = Image.new("RGB", (image.width, image.height + strip.height), (255, 255, 255))
    out.paste(image, (0, 0))
    out.paste(strip, (0, image.height))
    return out


def outline_note(count: int) -> str:
    """What the white outlines on a class heatmap are, in the legend's words."""
    return f"outlined: the {count} patches that entered the score"


def heatmap_image(face: FaceResult, heat: np.ndarray, scale: HeatScale | None = None,
                  cells: np.ndarray | None = None) -> Image.Image:
    """A class heatmap on the face's crop; with ``cells`` ((h, w) boolean, ``Predictor.topk_cells``)
    the patches that entered the class's score outlined in white; with ``scale`` (the face's one
    scale for all classes), the colour legend below it, which says what the outlines are."""
    picture = overlay(face.crop, heat)
    if cells is not None:
        picture = outline_cells(picture, cells, colour=OUTLINE_COLOUR)
    if scale is None:
        return picture
    notes = [f"cosine {scale.low:.3f} (blue) to {scale.high:.3f} (red)", "one scale for all expressions"]
    if cells is not None:
        notes.append(outline_note(int(np.count_nonzero(cells))))
    return with_legend(picture, *WEAK_STRONG, notes)


def heat_legend(scale: HeatScale, gradcam: bool = False, outlined: int | None = None, cells: int | None = None
                ) -> str:
    """The words beside the class heatmaps: what the colours mean, the face's one scale and, with
    ``outlined`` (how many of the ``cells`` patches entered the score), what the outlines are."""
    text = (f"**Reading the colours.** Red marks the parts of the face whose features are closest to the "
            f"expression's text, blue the furthest. Both heatmaps use one scale for every expression of this "
            f"face (cosine similarity {scale.low:.3f} at blue to {scale.high:.3f} at red), so an expression "
            f"that matches weakly everywhere stays blue.")
    if outlined:
        of = f" of the {cells}" if cells else ""
        text += (f" Outlined in white: the {outlined} patches that entered the score, the {outlined}{of} "
                 f"patches that match the expression best (the mean of their matches is the local half of its "
                 f"score; the other half is the match of the face as a whole).")
    text += " A heatmap shows where the model looked, not a reason a person would give."
    if gradcam:
        text += (" Grad-CAM has a scale of its own: red marks what raised the picked expression's score most, "
                 "blue what did not raise it.")
    return text


def contrast_legend(first: str, second: str, limit: float) -> str:
    """The words beside the "why A rather than B" view."""
    return (f"**Why {first} rather than {second}?** Red: parts of the face that match the text of *{first}* "
            f"better than that of *{second}* (evidence for {first}); blue: the reverse (evidence for {second}); "
            f"pale: both match equally. The colours run from a cosine difference of -{limit:.3f} (blue) to "
            f"+{limit:.3f} (red), this pair's own scale.")


# ---- scores in words -----------------------------------------------------------------------------

STRONG_Z, SOME_Z = 1.0, 0.0  # calibrated scores: standard deviations above the average face
STRONG_GAIN, SOME_GAIN = 0.05, 0.0  # region_minus_face: cosine above the rest of the face
STRONG_SHARE, SOME_SHARE = 0.1, 1 / 3  # uncalibrated scores: best tenth / third of the region's descriptions


def match_level(score: DescriptionScore) -> str:
    """"strong match", "some match" or "no match" for one description's score on a face."""
    if score.method == "zscore":
        strong, some = score.score >= STRONG_Z, score.score >= SOME_Z
    elif score.method == "region_minus_face":
        strong, some = score.score >= STRONG_GAIN, score.score > SOME_GAIN
    else:  # raw cosines are not comparable between descriptions: compare ranks within the region
        strong = score.rank <= max(1, math.ceil(score.of * STRONG_SHARE))
        some = score.rank <= max(1, math.ceil(score.of * SOME_SHARE))
    return "strong match" if strong else "some match" if some else "no match"


def match_words(score: DescriptionScore) -> str:
    """What a teacher can read aloud: the words, with the number beside them ("strong match (+1.4)")."""
    number = f"{score.score:.3f}" if score.method == "raw" else (
        f"{score.score:+.1f}" if score.method == "zscore" else f"{score.score:+.3f}")
    return f"{match_level(score)} ({number})"


def score_key(face: FaceResult) -> str:
    """What the match words and numbers of ``face``'s description table mean."""
    first = next((item for items in face.regions.values() for item in items), None)
    if first is None:
        return ""
    method = first.method
    if method == "zscore":
        how = (f"the number is how far above the average face the description scores, in standard "
               f"deviations of faces it was calibrated on: **strong match** {STRONG_Z:+.0f} or more, "
               f"**some match** {SOME_Z:.0f} to {STRONG_Z:+.0f}, **no match** below {SOME_Z:.0f}.")
    elif method == "region_minus_face":
        how = (f"the number is how much better the description matches its region than the rest of this "
               f"face (a cosine difference): **strong match** {STRONG_GAIN:+.2f} or more, **some match** "
               f"above 0, **no match** 0 or less.")
    else:
        how = ("the scores are **uncalibrated**: no calibration is stored with this model, so the number is the "
               "raw cosine similarity and the words compare the descriptions of a region with one another on "
               "this face: **strong match** the best tenth, **some match** the best third, **no match** the rest.")
    return (f"**Match** says how well a written description fits its part of this face; {how} "
            f"*Rank in region*: 1/{first.of} is the best of the {first.region} region's {first.of} descriptions. "
            f"*Written for*: the expression whose description it is (descriptions are scored without "
            f"the expression's name); *(predicted)*: the expression the model sees.")


def confidence_words(probability: float) -> str:
    if probability >= 0.8:
        return "the model is quite sure"
    if probability >= 0.5:
        return "the model is fairly sure"
    return "the model is unsure: other expressions score close"


# ---- results to UI values --------------------------------------------------------------------------


def _row(item: DescriptionScore) -> list[Any]:
    mark = " (predicted)" if item.predicted else ""
    return [item.region, item.text, item.class_name + mark, match_words(item), f"{item.rank}/{item.of}"]


def region_tables(face: FaceResult, short: int = SHORT_TABLE_ROWS) -> tuple[list[list[Any]], list[list[Any]]]:
    """(short table, the rest): per region, its ``short`` best-ranked descriptions, then the others."""
    first, rest = [], []
    for items in face.regions.values():
        ranked = sorted(items, key=lambda item: item.rank)
        first.extend(_row(item) for item in ranked[:short])
        rest.extend(_row(item) for item in ranked[short:])
    return first, rest


def region_rows(face: FaceResult) -> list[list[Any]]:
    """Every scored description of ``face`` as table rows, best-ranked first within each region."""
    first, rest = region_tables(face, short=10**6)
    return first + rest


def _position(session: Session | None, index: Any) -> int | None:
    """The selected face's index into ``session.faces``, clamped; None without faces."""
    if session is None or not session.faces:
        return None
    try:
        position = int(index)
    except (TypeError, ValueError):
        position = 0
    return min(max(position, 0), len(session.faces) - 1)


def _face_at(session: Session | None, index: Any) -> FaceResult | None:
    position = _position(session, index)
    return None if position is None else session.faces[position]


def picked_class(predictor: Predictor, face: FaceResult, heat_class: str | None) -> str:
    """The class of the second heatmap: ``heat_class`` when it is one, else the predicted class."""
    return heat_class if heat_class in predictor.classes else face.label


def runner_up(face: FaceResult, other_than: str | None = None) -> str:
    """The most probable class other than ``other_than`` (the predicted class by default): for the
    predicted class, the runner-up; for any other, the prediction itself."""
    other_than = other_than or face.label
    ranked = sorted(face.probabilities, key=lambda c: -face.probabilities[c])
    return next((c for c in ranked if c != other_than), other_than)


def contrast_view(predictor: Predictor, face: FaceResult, first: str, second: str | None) -> ContrastOutputs:
    """"Why ``first`` rather than ``second``": first's class map minus second's on the crop (red for
    first, blue for second, on the pair's own symmetric scale), its legend, and B's picker.
    ``second`` None, unknown or equal to ``first``: ``runner_up(face, first)``."""
    if second not in predictor.classes or second == first:
        second = runner_up(face, first)
    diff = predictor.contrast(face, first, second)  # (h, w) cosine differences
    up = upsample(np.asarray(diff, dtype=np.float32), (face.crop.height, face.crop.width)).numpy()
    limit = float(np.abs(up).max()) if up.size else 0.0
    picture = with_legend(contrast_overlay(face.crop, up), f"blue: for {second}", f"red: for {first}",
                          [f"cosine difference -{limit:.3f} to +{limit:.3f}", "pale: both match equally"],
                          cmap=CONTRAST_CMAP)
    return ContrastOutputs(picture, contrast_legend(first, second, limit), gr.update(value=second))


# ---- the occlusion check in words -----------------------------------------------------------------


def occlusion_words(change: float, class_name: str, now_sees: str | None = None) -> str:
    """What blurring a region out did to ``class_name``'s probability, said for a teacher."""
    if change <= -OCCLUSION_LOT:
        words = f"matters a lot: without it the model is much less sure of {class_name}"
    elif change <= -OCCLUSION_SOME:
        words = f"matters a little: without it the model is a little less sure of {class_name}"
    elif change >= OCCLUSION_LOT:
        words = f"works strongly against {class_name}: without it the model is much surer of it"
    elif change >= OCCLUSION_SOME:
        words = f"works a little against {class_name}: without it the model is a little surer of it"
    else:
        words = "hardly matters"
    if now_sees and now_sees != class_name:
        words += f"; it then sees {now_sees}"
    return words


def occlusion_rows(result: OcclusionResult, classes: Iterable[str]) -> list[list[Any]]:
    """``OCCLUSION_HEADERS`` rows, the region whose blurring lowers the class most first."""
    classes = list(classes)
    name = classes[result.target]
    return [[r.region, f"{result.probability:.0%} → {r.probability:.0%}", f"{100 * r.change:+.1f} points",
             occlusion_words(r.change, name, classes[r.label])] for r in result.regions]


def occlusion_summary(result: OcclusionResult, classes: Iterable[str]) -> str:
    """The occlusion check in two sentences: what was done, and which part matters most."""
    classes = list(classes)
    name = classes[result.target]
    text = (f"**Blurring check for {name}** ({result.probability:.0%} on the whole face): each part of the face "
            f"was blurred out in turn and the model asked again.")
    top = result.regions[0] if result.regions else None
    if top is not None and top.change <= -OCCLUSION_SOME:
        text += f" Blurring the {top.region} lowers {name} most, to {top.probability:.0%}."
    else:
        text += (f" No single part lowers {name} by {100 * OCCLUSION_SOME:.0f} points or more: the model does "
                 f"not rest on any one part of this face.")
    return text + " The check uses only the model's answers, so it tests the heatmaps from the outside."


def occlusion_of(predictor: Predictor, session: Session, position: int) -> OcclusionResult:
    """The predicted class's occlusion check of one face: one batched pass, once per face."""
    key = (position, "occlusion")
    if key not in session.extras:
        session.extras[key] = predictor.occlusion(session.faces[position])
    return session.extras[key]


def face_view(predictor: Predictor, session: Session | None, index: Any, heat_class: str | None,
              gradcam: bool, contrast_class: str | None = None) -> FaceView:
    """Everything shown for the selected face. ``heat_class``: the class of the second heatmap;
    None (or an unknown name) is the face's predicted class, and the picker is set to it. It is
    also Grad-CAM's class and A of the contrast view, whose B is ``contrast_class`` (by default
    the runner-up, see ``contrast_view``). The occlusion check (predicted class) and Grad-CAM run
    for this face only, and are kept in ``session`` for the next look."""
    position = _position(session, index)
    if position is None:
        return EMPTY_FACE
    face = session.faces[position]
    try:
        chosen = picked_class(predictor, face, heat_class)
        scale = predictor.heat_scale(face)
        own_cells = predictor.topk_cells(face, face.label)
        cells = own_cells if chosen == face.label else predictor.topk_cells(face, chosen)
        picked = heatmap_image(face, predictor.class_heatmap(face, chosen), scale, cells)
        short, more = region_tables(face)
        view = FaceView(
            probabilities=dict(face.probabilities),
            heatmap=heatmap_image(face, predictor.class_heatmap(face, face.label), scale, own_cells),
            class_heatmap=picked,
            gradcam=gradcam_update(predictor, session, position, bool(gradcam), chosen),
            regions=short,
            more_regions=more,
            heat_legend=heat_legend(scale, bool(gradcam), int(np.count_nonzero(cells)), int(cells.size)),
            score_key=score_key(face),
            heat_class=gr.update(value=chosen),
            contrast=None, contrast_legend="", contrast_class=gr.update(), occlusion=[], occlusion_summary="",
        )
    except Exception:  # noqa: BLE001 - the UI shows an empty panel, the log keeps the cause
        log.exception("could not render the face view")
        return EMPTY_FACE
    try:  # the two checks fail on their own, leaving the rest of the panel
        view = view._replace(**contrast_view(predictor, face, chosen, contrast_class)._asdict())
    except Exception:  # noqa: BLE001
        log.exception("could not draw the contrast view")
        view = view._replace(contrast_legend="The comparison could not be drawn for this face.")
    try:
        result = occlusion_of(predictor, session, position)
        view = view._replace(occlusion=occlusion_rows(result, predictor.classes),
                             occlusion_summary=occlusion_summary(result, predictor.classes))
    except Exception:  # noqa: BLE001
        log.exception("occlusion check failed")
        view = view._replace(occlusion_summary="The blurring check could not run on this face.")
    return view


def gradcam_map(predictor: Predictor, session: Session, position: int, class_name: str) -> np.ndarray:
    """Grad-CAM of ``class_name`` for one face: the predicted class's is kept with the face, the
    last other class's in ``session`` (one per face)."""
    face = session.faces[position]
    if class_name == face.label:
        if face.gradcam is None:
            predictor.add_gradcam([face])  # computed once per face, then kept with it
        return face.gradcam
    key = (position, "gradcam")
    kept = session.extras.get(key)
    if kept is None or kept[0] != class_name:
        kept = (class_name, predictor.gradcam_map(face, class_name))
        session.extras[key] = kept
    return kept[1]


def gradcam_update(predictor: Predictor, session: Session, position: int, enabled: bool,
                   class_name: str | None = None) -> dict[str, Any]:
    """The Grad-CAM image (hidden when off) for ``class_name``, by default the predicted class."""
    if not enabled:
        return gr.update(value=None, visible=False)
    face = session.faces[position]
    class_name = class_name or face.label
    cam = gradcam_map(predictor, session, position, class_name)
    picture = with_legend(overlay(face.crop, cam), "blue: no influence", "red: most",
                          [f"Grad-CAM for {class_name}: what raised its score,",
                           "0 (blue) to this face's most (red)"])
    which = "the predicted expression" if class_name == face.label else "the expression picked above"
    return gr.update(value=picture, visible=True, label=f"Grad-CAM for {class_name} ({which})")


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


def _same_file(path: Path, other: Path) -> bool:
    try:
        return path.stat().st_size == other.stat().st_size and filecmp.cmp(path, other, shallow=False)
    except OSError:
        return False


# Uploads deleted lately. Gradio's page fires the image's change event twice when a photo replaces
# another, both times with the same upload; the second finds the file gone and changes nothing.
_DISCARDED: "OrderedDict[str, None]" = OrderedDict()
_DISCARDED_MAX = 4096
_DISCARDED_LOCK = threading.Lock()


def already_discarded(value: Any) -> bool:
    """True for a file payload whose upload this process has already analysed and deleted."""
    if not isinstance(value, dict) or not value.get("path"):
        return False
    try:
        path = Path(value["path"]).resolve()
    except (OSError, RuntimeError, TypeError, ValueError):
        return False
    with _DISCARDED_LOCK:
        known = str(path) in _DISCARDED
    return known and not path.exists()


def _remember_discarded(path: Path) -> None:
    with _DISCARDED_LOCK:
        _DISCARDED[str(path)] = None
        while len(_DISCARDED) > _DISCARDED_MAX:
            _DISCARDED.popitem(last=False)


def discard_upload(value: Any, uploads: str | Path | None, keep: Iterable[str | Path] = ()) -> bool:
    """Delete Gradio's file of an upload (and its folder, when empty) once it has been decoded.

    Only a file payload (a dict with ``path``) inside ``uploads`` (the app's private temp folder)
    is deleted, never a file elsewhere, and never a copy of one of the ``keep`` files (the
    bundled examples, which Gradio hands out again each time an example is clicked). True when
    a file was deleted.
    """
    if uploads is None or not isinstance(value, dict) or not value.get("path"):
        return False
    try:
        root = Path(uploads).resolve()
        path = Path(value["path"]).resolve()
    except (OSError, RuntimeError, TypeError, ValueError):
        return False
    if root not in path.parents or not path.is_file():
        return False
    if any(_same_file(path, Path(k)) for k in keep):
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError:
        log.warning("could not delete an upload", exc_info=True)
        return False
    _remember_discarded(path)
    if path.parent != root:
        try:
            path.parent.rmdir()  # Gradio gives each upload a folder of its own
        except OSError:
            pass
    return True


def _failure(message: str) -> AnalyzeOutputs:
    return AnalyzeOutputs(None, message, gr.update(choices=[], value=None, visible=False), *EMPTY_FACE,
                          *EMPTY_PROBE, None)


def describe_faces(faces: list[FaceResult]) -> str:
    """The details below the annotated image: each face's number, label and confidence. Says
    so when the face limit was reached (``faces.found``, from ``Predictor.predict``)."""
    found = getattr(faces, "found", len(faces))
    if len(faces) == 1 and found == 1:
        face = faces[0]
        return f"**One face:** {face.label} ({face.confidence:.0%}): {confidence_words(face.confidence)}."
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


def _unreadable(err: Exception, image: Any) -> str:
    reason = _reason(err, image)
    for start, heading in (("image too small: ", "This picture is too small to look for a face in"),
                           ("image too large to open safely: ", "This picture is too large to open safely")):
        if reason.startswith(start):
            return f"**{heading}:** {reason[len(start):]}."
    return f"**This file could not be read as an image.** {reason}"


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
        # Grad-CAM (a backward pass) is left to face_view: it runs for the face on screen only
        faces = predictor.predict(picture, explain=True, max_side=None)
    except (ImageError, TypeError) as err:
        return _failure(_unreadable(err, image))
    except Exception:  # noqa: BLE001 - never a stack trace in the UI
        log.exception("analysis failed")
        return _failure(FAILED)
    if not faces:
        return AnalyzeOutputs(picture, NO_FACE, gr.update(choices=[], value=None, visible=False),
                              *EMPTY_FACE, *EMPTY_PROBE, None)
    session = Session.keep(faces)
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
    face = _face_at(session, index)
    if face is None:
        return EMPTY_CONTRAST
    try:
        return contrast_view(predictor, face, picked_class(predictor, face, heat_class), contrast_class)
    except Exception:  # noqa: BLE001
        log.exception("could not draw the contrast view")
        return ContrastOutputs(None, "The comparison could not be drawn for this face.", gr.update())


def change_face(predictor: Predictor, session: Session | None, index: Any, gradcam: bool
                ) -> tuple[FaceView, ProbeOutputs]:
    """Another face picked: its panel, with the class picker back on its predicted class, and
    the last probe's results (which were about the other face) cleared."""
    return face_view(predictor, session, index, None, bool(gradcam)), EMPTY_PROBE


# ---- the probe -----------------------------------------------------------------------------------

# Common words of other languages that are not English words: a probe with one gets a notice.
NOT_ENGLISH = frozenset("""
    le les des du une est et avec sans yeux bouche sourire très
    el los las una con sin del ojos boca sonrisa muy
    der das und mit ein eine nicht ist augen mund lächeln sehr
    il della gli occhi bocca sorriso molto
    het een niet ogen mond glimlach och ett inte ögon leende não com uma olhos sorriso
""".split())
PROBE_STRONG_SHARE, PROBE_SOME_SHARE = 0.8, 0.5  # share of the written descriptions a probe beats


def clean_probe(text: Any) -> tuple[str | None, str]:
    """(the words to probe, or None; what to tell the user). Control characters and runs of
    spaces are dropped, text longer than ``PROBE_MAX_CHARS`` is cut at a word (and the note
    says so); anything that is not text with letters in it is refused with a message."""
    if not isinstance(text, str):
        return None, f"The probe takes text: type a few words that describe a face ({PROBE_EXAMPLE})."
    printable = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    cleaned = " ".join(printable.split())
    if not cleaned:
        return None, f"Type a description of a face first ({PROBE_EXAMPLE})."
    if not any(ch.isalpha() for ch in cleaned):
        return None, f"Type words, not only numbers or symbols ({PROBE_EXAMPLE})."
    if len(cleaned) <= PROBE_MAX_CHARS:
        return cleaned, ""
    cut = cleaned[:PROBE_MAX_CHARS]
    if " " in cut and not cleaned[PROBE_MAX_CHARS].isspace():
        cut = cut.rsplit(" ", 1)[0]
    return cut, (f"Your text was {len(cleaned)} characters long; probes are limited to {PROBE_MAX_CHARS}, "
                 f"so only the first {len(cut)} were used.")


def language_notice(text: str) -> str:
    """A notice when ``text`` does not look like English (other scripts, accents, common words of
    other languages): the text encoders learned English, so the match would mean little."""
    letters = [ch for ch in text if ch.isalpha()]
    names = [unicodedata.name(ch, "") for ch in letters]
    other_script = any("LATIN" not in name for name in names)
    accented = any("LATIN" in name and " WITH " in name for name in names)
    words = {"".join(ch for ch in word if ch.isalpha()) for word in text.lower().split()}
    if not (other_script or accented or words & NOT_ENGLISH):
        return ""
    return ("Notice: this does not look like English. The model's text encoder learned English, so in "
            "another language the match means little; try the same words in English.")


def _probe_share(predictor: Predictor, face: FaceResult, mean: float) -> tuple[float, int] | None:
    """(share of the model's written descriptions that match ``face`` less than a probe whose mean
    cosine over the face is ``mean``, how many there are), measured the same way on the same face."""
    import torch

    try:
        with torch.no_grad():
            maps = predictor.explainer.description_maps(face.patch_features)  # (K, h, w) cosines
        values = maps.float().cpu().numpy().reshape(maps.shape[0], -1)
        mask = face.region_masks.get("face")
        if mask is not None and np.asarray(mask).any():
            values = values[:, np.asarray(mask, dtype=bool).reshape(-1)]
        means = values.mean(axis=1)
    except Exception:  # noqa: BLE001 - the words are a help; the probe stands without them
        log.exception("could not compare the probe with the written descriptions")
        return None
    if means.size == 0:
        return None
    return float((means < mean).mean()), int(means.size)


def probe_level(share: float) -> str:
    if share >= PROBE_STRONG_SHARE:
        return "strong match"
    if share >= PROBE_SOME_SHARE:
        return "some match"
    return "no match"


def probe_chart(class_similarity: dict[str, float]):
    """The bar chart's data: how much closer the probe's text is to each expression's text than
    to the average expression (cosine minus the mean over expressions), largest first."""
    import pandas as pd

    mean = sum(class_similarity.values()) / max(1, len(class_similarity))
    ranked = sorted(class_similarity.items(), key=lambda item: -item[1])
    return pd.DataFrame({PROBE_CHART_X: [name for name, _ in ranked],
                         PROBE_CHART_Y: [round(value - mean, 4) for _, value in ranked]})


def probe(predictor: Predictor, session: Session | None, index: Any, text: Any) -> ProbeOutputs:
    """Where a typed description matches the selected face, and how close it is to each
    expression. ``Predictor.probe`` puts the words in the same face template as the model's
    descriptions (``mpafer.explain.probe_prompt``); the message says how they were read. The
    message is plain text: the user's words are never rendered."""
    face = _face_at(session, index)
    if face is None:
        return ProbeOutputs(None, NO_PROBE_FACE, None)
    words, note = clean_probe(text)
    if words is None:
        return ProbeOutputs(None, note, None)
    try:
        result = predictor.probe(face, words)
    except ValueError as err:
        return ProbeOutputs(None, str(err), None)
    except Exception:  # noqa: BLE001
        log.exception("probe failed")
        return ProbeOutputs(None, "The probe failed. Please try another description.", None)
    share = _probe_share(predictor, face, result.mean_activation)
    if share is None:
        verdict = f"Mean match over the face: {result.mean_activation:.3f} (cosine)."
    else:
        verdict = (f"{probe_level(share[0]).capitalize()} ({result.mean_activation:.3f}): it matches this "
                   f"face better than {share[0]:.0%} of the model's {share[1]} written descriptions do.")
    read_as = result.prompt or words
    lines = [f'"{words}", read by the model as "{read_as}" (the wording of its own descriptions).', verdict,
             f"Red on the heatmap: where it matches best. Closest expression: {result.closest_class}.",
             note, language_notice(words)]
    low, high = float(np.min(result.map)), float(np.max(result.map))
    picture = with_legend(overlay(face.crop, result.heatmap), *WEAK_STRONG,
                          [f"cosine {low:.3f} (blue) to {high:.3f} (red)", "this description's own scale"])
    return ProbeOutputs(picture, "\n".join(line for line in lines if line), probe_chart(result.class_similarity))


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
