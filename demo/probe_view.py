"""The probe: a description the user types, where it matches the selected face and how close
it is to each expression. The words are shown as plain text, never rendered."""
from __future__ import annotations

import logging
import unicodedata
from typing import Any

import numpy as np

from demo.legends import WEAK_STRONG, with_legend
from demo.outputs import ProbeOutputs, Session
from demo.face_panel import face_at
from mpafer.heatmaps import overlay
from mpafer.predictor import Predictor

log = logging.getLogger("mpafer.demo")

PROBE_MAX_CHARS = 200  # longer probes are cut (and the user told): text encoders read ~77 tokens at most
PROBE_CHART_X, PROBE_CHART_Y = "expression", "closeness"
NO_PROBE_FACE = "Analyse a photo with a face first, then type a description."
PROBE_EXAMPLE = "e.g. wrinkled nose, or eyes wide open"

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
    face = face_at(session, index)
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
    if result.share is None:
        verdict = f"Mean match over the face: {result.mean_activation:.3f} (cosine)."
    else:  # the library measured the written descriptions the same way on the same face
        verdict = (f"{probe_level(result.share).capitalize()} ({result.mean_activation:.3f}): it matches this "
                   f"face better than {result.share:.0%} of the model's {result.described} written descriptions do.")
    read_as = result.prompt or words
    lines = [f'"{words}", read by the model as "{read_as}" (the wording of its own descriptions).', verdict,
             f"Red on the heatmap: where it matches best. Closest expression: {result.closest_class}.",
             note, language_notice(words)]
    low, high = float(np.min(result.map)), float(np.max(result.map))
    picture = with_legend(overlay(face.crop, result.heatmap), *WEAK_STRONG,
                          [f"cosine {low:.3f} (blue) to {high:.3f} (red)", "this description's own scale"])
    return ProbeOutputs(picture, "\n".join(line for line in lines if line), probe_chart(result.class_similarity))
