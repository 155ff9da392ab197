"""What the screen says in words: description scores ("strong match (+1.4)"), the model's
confidence, the faces found, the occlusion check. The model reads facial *expressions* (how
a face looks), not what a person feels; the wording keeps to that."""
from __future__ import annotations

import math
from typing import Any, Iterable

from mpafer.description_scores import DescriptionScore
from mpafer.occlusion import OcclusionResult
from mpafer.predictor import FaceResult

OCCLUSION_HEADERS = ["part of the face blurred", "predicted expression's probability", "change", "what it means"]
OCCLUSION_LOT, OCCLUSION_SOME = 0.10, 0.02  # probability changes said "a lot" / "a little" (0.02 = 2 points)

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

