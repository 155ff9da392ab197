"""What the demo's handlers return, in the order the app wires it to components.

Each handler answers with one of these named tuples; ``demo/app.py`` lists the components in
the same order (``tests/test_demo_handlers.py`` checks that the orders agree). ``Session`` is
one browser tab's last analysis, kept in ``gr.State`` (server memory only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import gradio as gr
from PIL import Image

from mpafer.predictor import FaceResult


@dataclass
class Session:
    """One browser tab's last analysis: the faces, each with its explanation. What is computed
    on demand for a face (its occlusion check, Grad-CAM) is kept in its explanation."""

    faces: list[FaceResult]


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
