"""Ablation of MPA-FER's parts on one frozen backbone (issue 4's table), each row measured.

    python training/ablation.py --config training/configs/ferplus_default.yaml --data PATH --out runs/ablation \
        [--set model.backbone.model_name=local-dir:runs/stage0] [--epochs N] [--device cuda]

Rows, each adding one part to the row above:
  zero-shot hard prompts  frozen backbone, class feature = mean of the class's hard prompts, global score only
  + text soft prompts     CoOp context vectors (CE only)
  + visual prompts        deep visual prompts
  + soft-hard alignment   L_ta + L_pa (beta)
  + prototype alignment   L_v (gamma)
  + CGLA local term       top-k patch-to-text score added to the global score (the full method)
and one reference row, not cumulative:
  zero-shot hard prompts, CGLA  the first row scored as the full method scores (global + top-k local):
                          what stage 1 has to beat on a backbone that stage 0 trained with exactly that score
Every trained row is a train.py run with the same recipe; the table reports accuracy on the
validation and test splits of its best-on-validation checkpoint. Writes ablation.md and ablation.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpafer.checkpoint import load_checkpoint  # noqa: E402
from mpafer.data import load_dataset  # noqa: E402
from mpafer.evaluate import evaluate  # noqa: E402
from mpafer.model import MPAFERConfig, create_model  # noqa: E402

ZERO_SHOT = ["model.use_text_prompts=false", "model.visual_prompt_tokens=0", "model.loss.beta=0",
             "model.loss.gamma=0"]
ROWS = [
    ("zero-shot hard prompts", [*ZERO_SHOT, "model.use_local=false"]),
    ("+ text soft prompts", ["model.visual_prompt_tokens=0", "model.use_local=false", "model.loss.beta=0",
                             "model.loss.gamma=0"]),
    ("+ visual prompts", ["model.use_local=false", "model.loss.beta=0", "model.loss.gamma=0"]),
    ("+ soft-hard alignment", ["model.use_local=false", "model.loss.gamma=0"]),
    ("+ prototype alignment", ["model.use_local=false"]),
    ("+ CGLA local term (full)", []),
    ("zero-shot hard prompts, CGLA (reference)", ZERO_SHOT),
]


def load_train_script():
    path = Path(__file__).resolve().parent / "train.py"
    spec = importlib.util.spec_from_file_location("mpafer_training_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def zero_shot_model(train, config_path: str, data: str, overrides: list[str]):
    """The zero-shot row has nothing to train: build it from train.py's resolved config directly."""
    config = train.build_config(train.build_parser().parse_args(
        ["--config", config_path, "--data", data, "--set", *overrides]))
    return create_model(MPAFERConfig.from_dict(config["model"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--tta-flip", action="store_true")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every row")
    args = parser.parse_args(argv)
    train = load_train_script()
    common = []
    for flag, value in (("--device", args.device), ("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value is not None:
            common += [flag, str(value)]

    results = []
    splits = {}
    for index, (name, overrides) in enumerate(ROWS):
        row_dir = args.out / f"row{index}"
        if "model.use_text_prompts=false" in overrides:  # hard prompts, nothing to train
            model = zero_shot_model(train, args.config, args.data, args.set + overrides)
        else:
            # --resume: a re-run after a late failure continues the finished rows instead of refusing
            code = train.main(["--config", args.config, "--data", args.data, "--out", str(row_dir), "--no-progress",
                               "--resume", *common, "--set", *args.set, *overrides])
            if code != 0:
                raise SystemExit(f"row {name!r} failed (train.py exit {code})")
            model = load_checkpoint(row_dir / "best")
        if args.device:
            model.to(args.device)
        row = {"row": name, "learnable": model.num_learnable(), "local_term": model.config.use_local}
        for split in ("valid", "test"):
            if split not in splits:
                splits[split] = load_dataset("ferplus", args.data, split, image_size=None, progress=False)
            metrics = evaluate(model, splits[split], tta_flip=args.tta_flip, progress=False)
            row[split] = metrics["accuracy"]
            row[f"{split}_mean_class"] = metrics["mean_class_accuracy"]
        results.append(row)
        print(json.dumps(row))

    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["| row | learnable | valid acc | test acc | test mean-class acc |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['row']} | {r['learnable']:,} | {100 * r['valid']:.2f} | {100 * r['test']:.2f} | "
              f"{100 * r['test_mean_class']:.2f} |" for r in results]
    table = "\n".join(lines)
    (args.out / "ablation.md").write_text(table + "\n")
    (args.out / "ablation.json").write_text(json.dumps(results, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
