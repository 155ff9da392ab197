"""The annotated picture: a box and a numbered marker per face, placed so that markers never
overlap one another or leave the picture (and, in the live view, labels or a legend strip)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mpafer.heatmaps import overlay
from mpafer.predictor import FaceResult

PALETTE = [(255, 196, 0), (0, 200, 255), (255, 90, 160), (120, 230, 90), (190, 140, 255)]
Rect = tuple[float, float, float, float]


def load_font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` (never below 10 px): no font files to ship."""
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
    font = load_font(font_size)
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
    font = load_font(plan.font_size)
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
    heat = face.explanation.heatmap(face.label)  # the label shown, which the live view may smooth
    info = face.crop_info
    x0, y0, x1, y1 = (round(v) for v in info.box_to_image((0.0, 0.0, info.size, info.size)))
    side = x1 - x0
    if side < 2:
        return
    tile = overlay(face.crop, heat, alpha=0.4).resize((side, side), Image.Resampling.BILINEAR)
    canvas.paste(tile, (x0, y0))  # PIL clips what falls outside the frame

