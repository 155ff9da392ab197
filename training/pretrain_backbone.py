"""Stage 0 of the offline default model: pre-train a compact open_clip image tower on FERPlus
against a frozen, pretrained text tower.

No pretrained CLIP weights can be fetched offline, so the product trains its own image tower
(from scratch, on this CPU) to meet a real English sentence encoder, as LiT does with the roles
swapped: all-MiniLM-L6-v2 (``mpafer.text_tower``) stays frozen, and only a linear text
projection learns beside the image tower. The projection starts as the identity and an
orthogonality penalty keeps it close to a rotation, so MiniLM's neighbourhoods survive: a
paraphrase the bank never used ("a big grin") still lands next to "smiling".

Objective: each step samples one hard prompt per class (coarse, face-level or one LLM
description) and scores every image against those C texts the way CGLA does at inference,
scale * (cos(global, text) + mean of the top-k patch-to-text cosines); cross-entropy against
the FERPlus vote distribution. With ``--text-image-weight``, also CLIP's second direction on the
global feature: each sampled class text against the batch's images, so that a class's faces come
first for its texts (what the paraphrase probe reads: image-to-text cross-entropy alone leaves every
face free to sit nearer all face sentences at once). Text features of the frozen tower are computed once.

    python training/pretrain_backbone.py --data ../shared/data/ferplus --out runs/stage0

``--ema-decay 0.998`` validates and keeps an exponential moving average of the weights instead of the
live ones (the live weights' validation accuracy is recorded beside it, as ``live_valid_acc``).

``--init-from runs/stage0`` starts a further run (its own schedule, e.g. a few epochs at a lower
peak learning rate) from a finished stage-0 folder instead of a random image tower.

Re-running the same command continues an interrupted run from its last finished epoch (``last/``),
exactly (same seed, same weights); other settings in the same folder are refused. The best epoch
on the validation split is the model folder itself (``--out``), a 'local-dir:' open_clip model
loadable with ``BackboneConfig("local-dir:runs/stage0")``. Beside it: pretrain_metrics.csv and tb/
(one row per epoch), pretrain_summary.json, config.yaml.

This file is the command line only: the stage is ``training.stages.stage0_backbone`` and the loop,
saved state and record are the engine's (``training.engine``), shared with stage 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mpafer.backbone import BackboneError  # noqa: E402
from mpafer.checkpoint import CheckpointError  # noqa: E402
from mpafer.data import DatasetError  # noqa: E402
from training.engine.config import ConfigError  # noqa: E402
from training.engine.distributed import init_distributed  # noqa: E402
from training.engine.loop import Callback, RunSpec, Trainer  # noqa: E402
from training.stages.stage0_backbone import BackboneTask  # noqa: E402

# what a resumed run must share with the run it continues (the rest may change: --no-progress ...)
HASHED = ("model", "bank", "text_pool", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "topk",
          "text_lr", "ortho_weight", "precision", "seed", "limit_per_class", "class_mean_weight",
          "text_image_weight", "init_from", "rotate", "ema_decay")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="FERPlus pack folder (train_1..3.npz, valid.npz, test.npz)")
    parser.add_argument("--out", required=True, help="output model folder (best epoch) and run state")
    parser.add_argument("--model", default="mpafer-face-minilm-deepstem",
                        help="model config name (mpafer/model_configs); the default is the bundled model's")
    parser.add_argument("--bank", default="ferplus")
    parser.add_argument("--text-pool", choices=("bank", "bank+descriptions"), default="bank+descriptions",
                        help="training texts: the bank's prompts, or also each description without its class "
                             "name ('a photo of a face with {description}.'), so descriptions align by content")
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate of the image tower")
    parser.add_argument("--text-lr", type=float, default=2e-4, help="learning rate of the text projection")
    parser.add_argument("--ortho-weight", type=float, default=1.0,
                        help="weight of ||P^T P - I||^2 on the text projection P (keeps MiniLM's geometry)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--topk", type=int, default=16)
    parser.add_argument("--class-mean-weight", type=float, default=0.0,
                        help="weight of a second cross-entropy against each class's mean bank-prompt feature: "
                             "the zero-shot classifier evaluation and stage 1 start from")
    parser.add_argument("--text-image-weight", type=float, default=0.0,
                        help="weight of the text-to-image cross-entropy (each sampled class text against the "
                             "batch's images, on the global feature): CLIP's second direction, which ranks a "
                             "class's faces first for its texts, as the paraphrase probe reads them")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast (CPUs with AVX-512-BF16 or AMX, and GPUs; float32 with a "
                             "warning elsewhere) or plain fp32")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--limit-per-class", type=int, default=None, help="use at most N training images per class")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N validation images")
    parser.add_argument("--half", action="store_true", help="save the model folder as float16 (halves the file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--init-from", default=None, metavar="FOLDER",
                        help="start from a finished stage-0 model folder of the same --model (a second, shorter "
                             "cosine cycle on an earlier run's weights) instead of a random image tower")
    parser.add_argument("--rotate", type=float, default=0.0, metavar="DEGREES",
                        help="also turn each training face by up to this many degrees (0: upright, as before)")
    parser.add_argument("--ema-decay", type=float, default=0.0, metavar="DECAY",
                        help="validate and keep an exponential moving average of the weights, e.g. 0.998 "
                             "(about 500 steps; 0: the live weights, as before)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, callbacks: Sequence[Callback] = ()) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0.0 <= args.ema_decay < 1.0:
        raise ConfigError(f"--ema-decay must lie in [0, 1) (0: no average), got {args.ema_decay}")
    settings = dict(vars(args))
    for key in ("rotate", "ema_decay"):  # off: absent from the hashed settings, so older run folders still resume
        if not settings[key]:
            del settings[key]
    spec = RunSpec(out=Path(args.out), config=settings, not_hashed=tuple(k for k in settings if k not in HASHED),
                   epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, warmup_epochs=args.warmup_epochs,
                   resume=None, progress=not args.no_progress, callbacks=callbacks)
    ctx = init_distributed(args.device)
    try:
        if ctx.world > 1:
            raise ConfigError("stage 0 runs in one process (no torchrun)")
        Trainer(spec, ctx).fit(lambda resume_from: BackboneTask(settings, ctx, resume_from))
    finally:
        ctx.close()
    return 0


def main(argv: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> int:
    """``callbacks``: ``training.engine.loop.Callback`` objects that see every step and epoch (tests)."""
    args = parse_args(argv)
    try:
        return run(args, callbacks)
    except (ConfigError, DatasetError, BackboneError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
