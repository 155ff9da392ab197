"""Test-only callbacks for the training loop (``training.engine.loop.Callback``), and a launcher that
runs a training script with them in its own process (for a real ``kill -9``, or under torchrun):

    python tests/training_hooks.py [--crash-after-steps N] [--dump-weights DIR] SCRIPT [SCRIPT ARGS...]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from safetensors.torch import save_file  # noqa: E402

from training.engine.loop import Callback  # noqa: E402


class Killed(Exception):
    """Stands for a kill -9, in this process."""


class CrashAfterSteps(Callback):
    """Die after ``steps`` optimiser steps of the whole run, mid-epoch, without any clean-up:
    ``os._exit(137)`` like ``kill -9``, or raising ``Killed`` (in-process tests)."""

    def __init__(self, steps: int, hard: bool = True):
        self.steps, self.hard = steps, hard

    def on_step_end(self, trainer) -> None:
        if trainer.global_step == self.steps:
            if self.hard:
                os._exit(137)
            raise Killed(f"after step {self.steps}")


class DumpWeights(Callback):
    """Every rank writes its learnable weights to ``folder/rank{N}.safetensors`` at the end."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def on_train_end(self, trainer) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in trainer.task.parameters().items()}
        save_file(weights, str(self.folder / f"rank{trainer.ctx.rank}.safetensors"))


def load_script(path: str | Path, name: str | None = None):
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or f"mpafer_training_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crash-after-steps", type=int)
    parser.add_argument("--dump-weights")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    callbacks = []
    if args.crash_after_steps:
        callbacks.append(CrashAfterSteps(args.crash_after_steps))
    if args.dump_weights:
        callbacks.append(DumpWeights(args.dump_weights))
    return load_script(args.script).main(args.args, callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(main())
