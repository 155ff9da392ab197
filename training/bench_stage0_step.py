"""CPU time of one stage-0 training step of the image tower (forward and backward, bf16 autocast), with
and without the two CPU paths that made it faster: the written-out bf16 attention
(``mpafer.cpu_attention``) and the channels-last stem (``mpafer.stems.Stem``).

    python training/bench_stage0_step.py                 # mpafer-face-minilm, batch 128, 5 rounds
    python training/bench_stage0_step.py --rounds 3 --steps 3

The two settings alternate round by round (the machine's two cores are shared: interleaving keeps
a busy neighbour from favouring one of them); the median step of each round is printed, then the
median over rounds. Weights are random: the cost does not depend on their values.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import open_clip  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mpafer import prompts, stems  # noqa: E402
from mpafer.backbone import build_from_config  # noqa: E402
from mpafer.precision import autocast, native_bf16  # noqa: E402


def plain_paths():
    """open_clip's own block call and torch's default stem layout: what stage 0 ran before."""
    return mock.patch.multiple(prompts, run_block=lambda block, x: block(x)), \
        mock.patch.object(stems.Stem, "forward", nn.Sequential.forward)


def step_seconds(visual, images: torch.Tensor, steps: int) -> float:
    times = []
    for _ in range(steps + 1):  # the first step is a warm-up
        start = time.perf_counter()
        with autocast(images.device, "bf16"):
            features = prompts.visual_features(visual, images)
        (features.pooled.float().square().mean() + features.patches.float().square().mean()).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mpafer-face-minilm")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round and setting")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not native_bf16("cpu"):
        print("this CPU has no native bfloat16: stage 0 trains in float32 here, and these paths do not apply",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    visual = build_from_config(open_clip.get_model_config(args.model)).visual.train()
    images = torch.randn(args.batch_size, 3, *visual.image_size)
    results: dict[str, list[float]] = {"written-out attention, NHWC stem": [], "open_clip block, NCHW stem": []}
    for round_ in range(args.rounds):
        fast = step_seconds(visual, images, args.steps)
        block_patch, stem_patch = plain_paths()
        with block_patch, stem_patch:
            plain = step_seconds(visual, images, args.steps)
        for name, value in zip(results, (fast, plain)):
            results[name].append(value)
        print(f"round {round_ + 1}: {fast * 1000:.0f} ms against {plain * 1000:.0f} ms per step", flush=True)
    print(f"{args.model}, batch {args.batch_size}, {args.threads} threads, bf16 autocast, "
          f"{torch.backends.cpu.get_cpu_capability()}:")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name}: {median * 1000:.0f} ms per step ({args.batch_size / median:.0f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
