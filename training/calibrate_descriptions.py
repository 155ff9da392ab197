"""Fit the description calibration of a checkpoint on validation faces.

Each description's region score (its mean patch cosine inside the facial region it was
written for) is collected over validation faces; its mean and standard deviation turn later
scores into z-scores (``mpafer.description_calibration``). The file goes beside the
checkpoint (``description_calibration.json``), where ``Predictor`` finds it.

    python training/calibrate_descriptions.py --data ../shared/data/ferplus \
        [--checkpoint PATH] [--split valid] [--limit N] [--method zscore] [--out PATH]

Without --out the file is written into the checkpoint folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mpafer.data import load_dataset  # noqa: E402
from mpafer.dataset_faces import framed_region_masks  # noqa: E402
from mpafer.description_calibration import fit_calibration, save_calibration  # noqa: E402
from mpafer.description_scores import METHODS, DescriptionScorer, region_scores_of_faces  # noqa: E402
from mpafer.predictor import resolve_model  # noqa: E402


def calibrate(model, images, method: str = "zscore", source: str = "", progress: bool = True):
    masks = framed_region_masks(model.image_size, model.grid, model.config.input)
    scorer = DescriptionScorer(model, method="raw")
    scores = region_scores_of_faces(scorer, images, masks, progress=progress)
    return fit_calibration(model, scorer.bank, scores, method=method, source=source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder (FERPlus)")
    parser.add_argument("--dataset", default="ferplus")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N faces")
    parser.add_argument("--method", default="zscore", choices=METHODS,
                        help="the scoring Predictor uses with this file (bench_faithfulness.py compares them)")
    parser.add_argument("--out", default=None, help="file or folder to write (default: the checkpoint folder)")
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    model, source, _ = resolve_model(args.checkpoint)
    data = load_dataset(args.dataset, args.data, args.split, image_size=None)
    images = data.images[:args.limit] if args.limit else data.images
    calibration = calibrate(model, images, args.method, f"{args.dataset} {args.split}, {len(images)} faces")
    out = args.out or source
    path = save_calibration(calibration, out)
    print(f"wrote {path}: {len(calibration.stats)} descriptions, {calibration.faces} faces, method {args.method}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
