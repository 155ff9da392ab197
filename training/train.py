"""Train MPA-FER prompts on a frozen open_clip backbone.

One GPU (or CPU):

    python training/train.py --config training/configs/ferplus_vitb16.yaml --data /path/to/ferplus --out runs/ferplus

Several GPUs on one machine (torch DDP; --batch-size is per GPU, so the global batch is N times it):

    torchrun --standalone --nproc_per_node N training/train.py --config training/configs/ferplus_vitb16.yaml \\
        --data /path/to/ferplus --out runs/ferplus

Continue an interrupted run (killed, preempted, out of time) from its last finished epoch:

    python training/train.py --config ... --data ... --out runs/ferplus --resume

What it writes into --out: config.yaml (the resolved config), metrics.csv and tb/ (TensorBoard) with
one row per epoch (each loss term's epoch mean, and its gradient norm on the learnable parameters
on the epoch's first batch: train_grad_ce, _ta, _pa, _t, _v, _total), best/ (the checkpoint with
the best validation accuracy, loadable by ``mpafer.load_checkpoint`` and ``python -m mpafer
evaluate``), last/ (the resumable state after the last finished epoch: a checkpoint plus
train_state.safetensors/.json), test_metrics.json and test_confusion.png (the best checkpoint on
the test split; ``selected_on`` names the split that chose it).

How it runs: the whole split is held as uint8 tensors (on the GPU when it fits, else in pinned
host memory), so an epoch never decodes an image; each epoch is a seeded permutation (drop_last),
each rank takes its slice of every global batch; augmentation runs on the device (mpafer.augment)
with random draws that depend only on (seed, epoch, step), so a resumed run, and a run on any
number of GPUs with the same global batch, sees the same images. bf16 autocast on CUDA;
--compile wraps the model in torch.compile. Class prototypes (L_v) are computed once, before the
first epoch, from the frozen encoder, and stored in every checkpoint.

This file is the command line only: the stage is ``training.stages.stage1_prompts`` and the loop,
saved state and record are the engine's (``training.engine``), shared with stage 0.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpafer.backbone import BackboneError  # noqa: E402
from mpafer.checkpoint import CheckpointError  # noqa: E402
from mpafer.data import DatasetError  # noqa: E402
from training.engine.config import ConfigError  # noqa: E402
from training.engine.distributed import init_distributed  # noqa: E402
from training.engine.loop import Callback, Trainer  # noqa: E402
from training.stages.stage1_prompts import (GRAD_TERMS, PromptTask, build_config, config_hash,  # noqa: E402,F401
                                            run_spec)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (training/configs/*.yaml)")
    parser.add_argument("--data", help="dataset folder (overrides data.root)")
    parser.add_argument("--out", help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="per process (the global batch is this times the GPU count)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    parser.add_argument("--limit-per-class", type=int, help="at most N images per class in train and valid")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable image files")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                        help="override any config value, e.g. --set model.topk=8 train.warmup_epochs=2")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace, callbacks: Sequence[Callback] = ()) -> int:
    config = build_config(args)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    ctx = init_distributed(args.device)
    progress = not args.no_progress
    try:
        Trainer(run_spec(config, out, args.resume, progress, callbacks), ctx).fit(
            lambda resume_from: PromptTask(config, ctx, out, resume_from, progress, compile=args.compile))
    finally:
        ctx.close()
    return 0


def main(argv: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> int:
    """``callbacks``: ``training.engine.loop.Callback`` objects that see every step and epoch (tests)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args, callbacks)
    except (ConfigError, DatasetError, BackboneError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
