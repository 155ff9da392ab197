"""The panel of one face, rendered from its ``FaceExplanation``: both class heatmaps with the
cells that entered the score, the contrast view, the occlusion table, Grad-CAM, the description
tables. One library call fills what the panel needs (``Predictor.explain``); the rest is drawing."""
from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import numpy as np

from demo.legends import CONTRAST_CMAP, contrast_legend, heat_legend, heatmap_image, with_legend
from demo.outputs import EMPTY_FACE, ContrastOutputs, FaceView, Session
from demo.wording import match_words, occlusion_rows, occlusion_summary, score_key
from mpafer.description_scores import DescriptionScore
from mpafer.heatmaps import contrast_overlay, overlay, upsample
from mpafer.predictor import FaceResult, Predictor

log = logging.getLogger("mpafer.demo")

REGION_HEADERS = ["region", "description", "written for", "match", "rank in region"]
SHORT_TABLE_ROWS = 3  # descriptions per region in the short table; the rest are behind an accordion


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


def face_at(session: Session | None, index: Any) -> FaceResult | None:
    """The selected face of a tab's analysis (the index clamped), or None without one."""
    position = _position(session, index)
    return None if position is None else session.faces[position]


def picked_class(face: FaceResult, heat_class: str | None) -> str:
    """The class of the second heatmap: ``heat_class`` when it is one, else the predicted class."""
    return heat_class if heat_class in face.explanation.classes else face.label


def runner_up(face: FaceResult, other_than: str | None = None) -> str:
    """The most probable class other than ``other_than`` (the predicted class by default): for the
    predicted class, the runner-up; for any other, the prediction itself."""
    other_than = other_than or face.label
    ranked = sorted(face.probabilities, key=lambda c: -face.probabilities[c])
    return next((c for c in ranked if c != other_than), other_than)


def contrast_view(face: FaceResult, first: str, second: str | None) -> ContrastOutputs:
    """"Why ``first`` rather than ``second``": first's class map minus second's on the crop (red for
    first, blue for second, on the pair's own symmetric scale), its legend, and B's picker.
    ``second`` None, unknown or equal to ``first``: ``runner_up(face, first)``."""
    if second not in face.explanation.classes or second == first:
        second = runner_up(face, first)
    diff = face.explanation.contrast(first, second)  # (h, w) cosine differences
    up = upsample(np.asarray(diff, dtype=np.float32), (face.crop.height, face.crop.width)).numpy()
    limit = float(np.abs(up).max()) if up.size else 0.0
    picture = with_legend(contrast_overlay(face.crop, up), f"blue: for {second}", f"red: for {first}",
                          [f"cosine difference -{limit:.3f} to +{limit:.3f}", "pale: both match equally"],
                          cmap=CONTRAST_CMAP)
    return ContrastOutputs(picture, contrast_legend(first, second, limit), gr.update(value=second))


def gradcam_update(face: FaceResult, enabled: bool, class_name: str | None = None) -> dict[str, Any]:
    """The Grad-CAM image of ``class_name`` (by default the predicted class), hidden when off or
    when the explanation has none."""
    class_name = class_name or face.label
    cam = face.explanation.gradcam(class_name) if enabled else None
    if cam is None:
        return gr.update(value=None, visible=False)
    picture = with_legend(overlay(face.crop, cam), "blue: no influence", "red: most",
                          [f"Grad-CAM for {class_name}: what raised its score,",
                           "0 (blue) to this face's most (red)"])
    which = "the predicted expression" if class_name == face.label else "the expression picked above"
    return gr.update(value=picture, visible=True, label=f"Grad-CAM for {class_name} ({which})")


def face_view(predictor: Predictor, session: Session | None, index: Any, heat_class: str | None,
              gradcam: bool, contrast_class: str | None = None) -> FaceView:
    """Everything shown for the selected face. ``heat_class``: the class of the second heatmap;
    None (or an unknown name) is the face's predicted class, and the picker is set to it. It is
    also Grad-CAM's class and A of the contrast view, whose B is ``contrast_class`` (by default
    the runner-up, see ``contrast_view``).

    One library call completes the face's explanation with what this view needs and it lacks
    (the occlusion check, Grad-CAM of the picked class: for this face only, once each); the
    rest is drawn from the explanation."""
    face = face_at(session, index)
    if face is None:
        return EMPTY_FACE
    chosen = picked_class(face, heat_class)
    try:
        explanation = predictor.explain(face, gradcam=chosen if gradcam else None, occlusion=True)
    except Exception:  # noqa: BLE001 - what the explanation holds is still drawn; the missing parts say so
        log.exception("could not complete the explanation")
        explanation = face.explanation
    try:
        scale = explanation.scale
        own_cells = explanation.cells(face.label)
        cells = explanation.cells(chosen)
        short, more = region_tables(face)
        view = FaceView(
            probabilities=dict(face.probabilities),
            heatmap=heatmap_image(face.crop, explanation.heatmap(face.label), scale, own_cells),
            class_heatmap=heatmap_image(face.crop, explanation.heatmap(chosen), scale, cells),
            gradcam=gradcam_update(face, bool(gradcam), chosen),
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
    try:  # the contrast fails on its own, leaving the rest of the panel
        view = view._replace(**contrast_view(face, chosen, contrast_class)._asdict())
    except Exception:  # noqa: BLE001
        log.exception("could not draw the contrast view")
        view = view._replace(contrast_legend="The comparison could not be drawn for this face.")
    result = explanation.occlusion
    if result is None:
        return view._replace(occlusion_summary="The blurring check could not run on this face.")
    return view._replace(occlusion=occlusion_rows(result, explanation.classes),
                         occlusion_summary=occlusion_summary(result, explanation.classes))
