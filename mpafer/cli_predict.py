"""``python -m mpafer predict IMAGE``: the expression of every face in an image, and why.

Prints a table per face (probabilities, then the best-matching description of each facial
region), or one JSON object with ``--json``. An unreadable image or checkpoint is one line
on stderr and exit code 2; an image without faces is not an error.
"""
from __future__ import annotations

import argparse
import json
import sys

from .cli_types import whole_number
from .face_detection import DEFAULT_MAX_FACES
from .images import ImageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mpafer predict",
                                     description="The expression of every face in an image, and why.")
    parser.add_argument("image", help="image file (JPEG, PNG, WebP, ...)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder (default: the bundled model; 'untrained' for random weights)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--gradcam", action="store_true", help="also run Grad-CAM (one backward pass per image)")
    parser.add_argument("--heatmaps", action="store_true", help="with --json: include the maps on the patch grid")
    parser.add_argument("--max-faces", type=whole_number(1), default=DEFAULT_MAX_FACES,
                        help=f"most faces to analyse, the largest (default {DEFAULT_MAX_FACES})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 where the hardware computes it natively (on a CPU a bfloat16 copy of "
                             "the image tower, on a GPU autocast), else float32; bf16: the same, float32 with a "
                             "warning where it would be emulated; fp32: float32 everywhere")
    return parser


def format_table(faces, source: str, untrained: bool) -> str:
    lines = [f"model: {source}"]
    if untrained:
        lines.append("WARNING: untrained model with random weights; its predictions are not meaningful")
    if not faces:
        lines.append("no face found")
        return "\n".join(lines)
    for number, face in enumerate(faces, 1):
        box = ", ".join(f"{v:.0f}" for v in face.box)
        lines.append("")
        lines.append(f"face {number}: {face.label} ({face.confidence:.1%})   box ({box})   detector {face.score:.2f}")
        ranked = sorted(face.probabilities.items(), key=lambda item: -item[1])
        lines.extend(f"  {name:<12} {p:6.1%}  {'#' * round(p * 30)}" for name, p in ranked)
        if face.regions:
            lines.append(f"  {'region':<9} {'score':>6}  {'rank':>6}  {'class':<10} description")
            for region, items in face.regions.items():
                # the region's best description, and the predicted class's best when it is another
                best, own = items[0], next((d for d in items if d.predicted), None)
                shown = [best] if own is None or own is best else [best, own]
                for number, item in enumerate(shown):
                    rank = f"{item.rank}/{item.of}"
                    name = region if number == 0 else ""
                    lines.append(f"  {name:<9} {item.score:6.3f}  {rank:>6}  {item.class_name:<10} {item.text}")
        if face.gradcam_regions:
            top = sorted(face.gradcam_regions.items(), key=lambda item: -item[1])[:3]
            lines.append("  Grad-CAM strongest in: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad options (--max-faces 0) stop here, before any model loads
    from .images import MIN_SIDE, load_image

    try:  # before the model and the detector load: a bad path fails fast and quietly
        image = load_image(args.image, min_side=MIN_SIDE)
    except ImageError as err:
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        return 2

    from .backbone import BackboneError
    from .checkpoint import CheckpointError
    from .predictor import Predictor

    from .devices import resolve_device

    try:
        predictor = Predictor(args.checkpoint, device=resolve_device(args.device), max_faces=args.max_faces,
                              precision=args.precision)
    except (CheckpointError, BackboneError, ValueError) as err:
        print(f"error: cannot load the model: {err}".splitlines()[0], file=sys.stderr)
        return 2
    with predictor:
        faces = predictor.predict_picture(image, explain=True, gradcam=args.gradcam)  # decoded above
        if args.json:
            print(json.dumps({
                "image": args.image,
                "model": predictor.source,
                "untrained": predictor.untrained,
                "precision": predictor.precision,
                "classes": list(predictor.classes),
                "faces": [face.to_dict(heatmaps=args.heatmaps) for face in faces],
            }))
        else:
            print(format_table(faces, predictor.source, predictor.untrained))
    return 0
