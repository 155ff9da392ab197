"""Measure the crop a FERPlus model wants, and what the whole detector pipeline costs in accuracy.

FERPlus faces are 48 x 48 frames cut tightly around the face; the face detector's box is not
that frame. To calibrate, each face is upscaled to 256 px and placed in the middle of a
512 x 512 grey canvas, the detector runs on the canvas, and its box is compared with the known
256 px frame:

    margin  = (frame side / box side - 1) / 2     (the crop's side is box * (1 + 2 * margin))
    shift_y = (frame centre y - box centre y) / box side

``calibrate`` measures both on the *validation* split (medians over the faces found) and can
write them into a stage-1 YAML's ``model.input`` (``--write-config``); ``pipeline`` reports the
accuracy on the *test* split through the whole ``Predictor`` (canvas -> detector -> crop -> grey ->
model, flip TTA as the protocol says) beside the direct accuracy on the 48 px faces.

    python training/crop_protocol.py calibrate --data ../shared/data/ferplus --split valid
    python training/crop_protocol.py pipeline --data ../shared/data/ferplus --split test [--checkpoint P] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mpafer.data import load_dataset  # noqa: E402

FACE_SIDE, CANVAS_SIDE, CANVAS_GREY = 256, 512, 128


def on_canvas(face: np.ndarray) -> Image.Image:
    """A 48 px grey face, upscaled to 256 px, in the middle of a 512 px grey RGB canvas."""
    big = Image.fromarray(face[..., 0] if face.ndim == 3 else face).resize((FACE_SIDE, FACE_SIDE),
                                                                        Image.Resampling.BICUBIC)
    canvas = Image.new("L", (CANVAS_SIDE, CANVAS_SIDE), CANVAS_GREY)
    offset = (CANVAS_SIDE - FACE_SIDE) // 2
    canvas.paste(big, (offset, offset))
    return canvas.convert("RGB")


def frame_offsets(box) -> tuple[float, float]:
    """(margin, shift_y) that turn the detector's ``box`` into the known face frame."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    frame_centre = CANVAS_SIDE / 2
    return (FACE_SIDE / side - 1) / 2, (frame_centre - (y0 + y1) / 2) / side


def central_face(faces):
    """The detected face (anything with a ``box``) nearest the canvas centre: the pasted one."""
    if not faces:
        return None
    centre = CANVAS_SIDE / 2

    def distance(face) -> float:
        x0, y0, x1, y1 = face.box
        return abs((x0 + x1) / 2 - centre) + abs((y0 + y1) / 2 - centre)

    return min(faces, key=distance)


def calibrate(args) -> int:
    from mpafer.faces import FaceDetector

    data = load_dataset("ferplus", args.data, args.split, image_size=None)
    picks = np.arange(len(data)) if not args.limit else np.arange(min(args.limit, len(data)))
    margins, shifts, missed = [], [], 0
    with FaceDetector() as detector:
        for i in tqdm(picks, desc=f"detect ({args.split})", unit="face", disable=args.no_progress):
            face = central_face(detector.detect(on_canvas(data.images[i])))
            if face is None:
                missed += 1
                continue
            margin, shift = frame_offsets(face.box)
            margins.append(margin)
            shifts.append(shift)
    result = {"split": args.split, "faces": len(picks), "found": len(margins), "missed": missed,
              "margin": round(float(np.median(margins)), 3), "shift_y": round(float(np.median(shifts)), 3),
              "margin_iqr": [round(float(q), 3) for q in np.percentile(margins, [25, 75])],
              "shift_y_iqr": [round(float(q), 3) for q in np.percentile(shifts, [25, 75])]}
    print(json.dumps(result, indent=1))
    if args.write_config:
        write_protocol(Path(args.write_config), result["margin"], result["shift_y"])
    return 0


def write_protocol(path: Path, margin: float, shift_y: float) -> None:
    import yaml

    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config.setdefault("model", {}).setdefault("input", {}).update({"margin": margin, "shift_y": shift_y})
    lines = path.read_text(encoding="utf-8").splitlines()
    # keep the file's comments: rewrite only the input line (the config keeps it on one line)
    text = json.dumps(config["model"]["input"]).replace('"', "")
    out = [f"  input: {text}   # measured by training/crop_protocol.py calibrate"
           if line.strip().startswith("input:") else line for line in lines]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"wrote margin {margin}, shift_y {shift_y} into {path}")


def pipeline(args) -> int:
    from mpafer.evaluate import evaluate
    from mpafer.predictor import Predictor

    data = load_dataset("ferplus", args.data, args.split, image_size=None)
    picks = np.arange(len(data)) if not args.limit else np.arange(min(args.limit, len(data)))
    predictor = Predictor(args.checkpoint)
    direct = evaluate(predictor.model, data.subset(picks) if args.limit else data, progress=not args.no_progress,
                      precision=predictor.precision)  # as the Predictor computes
    correct = missed = 0
    started = time.perf_counter()
    try:
        for i in tqdm(picks, desc=f"pipeline ({args.split})", unit="face", disable=args.no_progress):
            nearest = central_face(predictor.predict(on_canvas(data.images[i]), explain=False))
            if nearest is None:
                missed += 1  # counts as wrong
                continue
            correct += int(nearest.label == data.classes[data.labels[i]])
    finally:
        predictor.close()
    seconds = time.perf_counter() - started
    n = len(picks)
    out = {"split": args.split, "n": n, "direct_accuracy": direct["accuracy"],
           "pipeline_accuracy": correct / n, "missed_faces": missed, "gap_points": 100 * (direct["accuracy"] - correct / n),
           "protocol": predictor.protocol.to_dict(), "model": predictor.source, "precision": predictor.precision, "seconds": round(seconds, 1)}
    print(json.dumps(out, indent=1) if args.json else
          f"direct {out['direct_accuracy']:.4f}, pipeline {out['pipeline_accuracy']:.4f} "
          f"(gap {out['gap_points']:.2f} points, {missed} faces not found) on {n} {args.split} faces")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("calibrate", "pipeline"):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True)
        p.add_argument("--split", default="valid" if name == "calibrate" else "test")
        p.add_argument("--limit", type=int, default=None, help="only the first N faces")
        p.add_argument("--no-progress", action="store_true")
        if name == "calibrate":
            p.add_argument("--write-config", default=None, help="stage-1 YAML whose model.input gets the result")
        else:
            p.add_argument("--checkpoint", default=None)
            p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return calibrate(args) if args.command == "calibrate" else pipeline(args)


if __name__ == "__main__":
    sys.exit(main())
