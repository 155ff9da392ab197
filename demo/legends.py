"""Colour legends: the strip under every heatmap (what blue and red mean, on what scale) and
the words beside the heatmaps and the contrast view."""
from __future__ import annotations

from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from demo.annotate import load_font
from mpafer.heatmaps import HeatScale, outline_cells, overlay

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
    font = load_font(size)
    while size > 8 and max([font.getlength(f"{left}  {right}"), *map(font.getlength, notes)]) > width - 2 * pad:
        size -= 1
        font = load_font(size)
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


def heatmap_image(crop: Image.Image, heat: np.ndarray, scale: HeatScale | None = None,
                  cells: np.ndarray | None = None) -> Image.Image:
    """A class heatmap on a face's crop; with ``cells`` ((h, w) boolean, ``FaceExplanation.cells``)
    the patches that entered the class's score outlined in white; with ``scale`` (the face's one
    scale for all classes), the colour legend below it, which says what the outlines are."""
    picture = overlay(crop, heat)
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

