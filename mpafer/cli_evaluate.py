"""``python -m mpafer evaluate``: a checkpoint's accuracy, per-class metrics and confusion matrix on a split.

    python -m mpafer evaluate --dataset ferplus --data /path/to/ferplus --split test
    python -m mpafer evaluate --dataset rafdb --data /path/to/RAF-DB --checkpoint runs/rafdb/best --json

Without --checkpoint the bundled default model is used (or $MPAFER_CHECKPOINT). With --json exactly
one JSON object is printed on stdout; progress bars go to stderr. Exit status 2 on a usage or data error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import defaults
from .cli_types import whole_number

NATIVE = "native"


def build_parser() -> argparse.ArgumentParser:
    from .data import ADAPTERS

    parser = argparse.ArgumentParser(prog="python -m mpafer evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ferplus", choices=sorted(ADAPTERS),
                        help="dataset adapter (default: ferplus)")
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--split", default="test", help="train, valid or test (default: test)")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: the bundled model, or $MPAFER_CHECKPOINT; "
                                             "'untrained' for random weights, as in predict)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every metric")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each face's prediction with its mirror image's "
                             "(default: as the checkpoint's input protocol says)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto (default): float32 on a CPU, exact on every machine; bf16 autocast on a GPU. "
                             "bf16: wherever bfloat16 is native (on a CPU the bfloat16 image-tower copy that "
                             "Predictor's auto runs there; float32, with a warning, where it would be emulated)")
    parser.add_argument("--confusion", metavar="PATH.png", help="also save the confusion matrix as a PNG")
    parser.add_argument("--image-size", type=whole_number(1, words=(NATIVE,)), default=None,
                        help="size faces are decoded at before the model resizes them: pixels or 'native' "
                             "(default: what the checkpoint was trained with, else the model's input size; "
                             "FERPlus: native 48)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable image files instead of failing")
    parser.add_argument("--cache-dir", default=None, help="decoded-dataset cache (default: $MPAFER_CACHE/datasets)")
    return parser


def decode_size(requested, dataset: str, model_size: int, trained_data: dict) -> int | None:
    """The size to decode faces at: asked for, else as in training, else native FERPlus or the model's size."""
    if requested == NATIVE:
        return None
    if requested is not None:
        return requested
    if trained_data.get("dataset") == dataset and "image_size" in trained_data:
        return trained_data["image_size"]
    return None if dataset == "ferplus" else model_size


def _human_report(metrics: dict, checkpoint: Path | str, dataset: str, split: str) -> str:
    lines = [f"{dataset} {split}: n = {metrics['n']}, checkpoint {checkpoint}"
             + (" (flip TTA)" if metrics.get("tta_flip") else ""),
             f"accuracy             {metrics['accuracy']:.4f}",
             f"mean class accuracy  {metrics['mean_class_accuracy']:.4f}",
             f"macro F1             {metrics['macro_f1']:.4f}",
             "",
             f"{'class':<12} {'precision':>9} {'recall':>8} {'f1':>8} {'support':>8}"]

    def cell(value):
        return f"{value:.4f}" if value is not None else "-"

    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<12} {cell(row['precision']):>9} {cell(row['recall']):>8} "
                     f"{cell(row['f1']):>8} {row['support']:>8}")
    return "\n".join(lines)


UNTRAINED_WARNING = "WARNING: untrained model with random weights; its accuracy is chance level, not a result"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # "untrained" means what it means to predict and the demo: the seeded random-weight model
    # (a folder called "untrained" can be given as ./untrained)
    untrained = args.checkpoint == "untrained"
    if untrained:
        checkpoint = None
    else:
        checkpoint = Path(args.checkpoint).expanduser() if args.checkpoint else defaults.default_checkpoint()
    if checkpoint is None and not untrained:
        print(f"error: no checkpoint given and no bundled model is present yet "
              f"(expected {defaults.MODELS_DIR / defaults.DEFAULT_MODEL_NAME}). "
              f"Pass --checkpoint PATH (a folder with mpafer.json, e.g. runs/<name>/best), "
              f"set ${defaults.CHECKPOINT_ENV}, or try the pipeline with --checkpoint untrained.", file=sys.stderr)
        return 2

    from .backbone import BackboneError
    from .checkpoint import CheckpointError, load_checkpoint, read_metadata
    from .data import load_dataset
    from .evaluate import evaluate, plot_confusion

    from .devices import resolve_device
    from .precision import effective_precision

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"error: --batch-size must be at least 1, got {args.batch_size}", file=sys.stderr)
        return 2
    try:
        if untrained:
            from .predictor import FALLBACK_BACKBONE, untrained_model

            if args.json:  # stdout is the one JSON object (with "untrained": true); the table says it itself
                print(UNTRAINED_WARNING, file=sys.stderr)
            trained_data, model = {}, untrained_model(device)
            checkpoint = f"untrained fallback ({FALLBACK_BACKBONE}, random weights)"
        else:
            trained_data = (read_metadata(checkpoint).get("extra") or {}).get("data") or {}
            model = load_checkpoint(checkpoint, device=device)
        size = decode_size(args.image_size, args.dataset, model.image_size, trained_data)
        data = load_dataset(args.dataset, args.data, args.split, image_size=size, skip_bad=args.skip_bad,
                            cache_dir=args.cache_dir)
        precision = effective_precision(device, args.precision)  # what runs (warns once where bf16 is emulated)
        metrics = evaluate(model, data, batch_size=args.batch_size, tta_flip=args.tta_flip, precision=precision)
        if args.confusion:
            title = f"{args.dataset} {args.split}: accuracy {metrics['accuracy']:.2%} (n = {metrics['n']})"
            plot_confusion(metrics["confusion"], metrics["classes"], args.confusion, title=title)
    except (CheckpointError, BackboneError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics.update({"dataset": args.dataset, "split": args.split, "checkpoint": str(checkpoint),
                    "untrained": untrained, "precision": precision})
    if args.json:
        print(json.dumps(metrics))
    else:
        if untrained:
            print(UNTRAINED_WARNING)
        print(_human_report(metrics, checkpoint, args.dataset, args.split))
        if args.confusion:
            print(f"confusion matrix saved to {args.confusion}")
    return 0
