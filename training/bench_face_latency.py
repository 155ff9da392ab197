"""CPU time to classify one face crop (batch 1, preprocessing included): issue 4's 15 ms target.

    python training/bench_face_latency.py                          # the bundled default model
    python training/bench_face_latency.py --checkpoint PATH
    python training/bench_face_latency.py --model mpafer-face-vit  # an architecture, random weights

Timed per run: a 160x160 RGB face crop (PIL) -> uint8 tensor -> resize + normalise -> prompted
image encoder + CGLA (text features cached, as in the demo) -> probabilities.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mpafer.augment import to_model_input  # noqa: E402
from mpafer.backbone import BackboneConfig  # noqa: E402
from mpafer.checkpoint import load_checkpoint  # noqa: E402
from mpafer.defaults import default_checkpoint  # noqa: E402
from mpafer.model import MPAFERConfig, create_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--model", default=None, help="an architecture with random weights instead of a checkpoint")
    parser.add_argument("--depth", type=int, default=8, help="visual prompt depth with --model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model:
        model = create_model(MPAFERConfig(backbone=BackboneConfig(args.model), visual_prompt_depth=args.depth))
        source = f"{args.model} (random weights)"
    else:
        path = args.checkpoint or default_checkpoint()
        if path is None:
            print("no bundled default model yet: pass --checkpoint PATH or --model CONFIG", file=sys.stderr)
            return 2
        model, source = load_checkpoint(path), str(path)
    model.eval()
    crop = Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))
    mean, std = model.backbone_info.mean, model.backbone_info.std
    times = []
    with torch.inference_mode():
        for run in range(args.warmup + args.runs):
            start = time.perf_counter()
            pixels = torch.from_numpy(np.array(crop)).unsqueeze(0)  # the copy is part of real preprocessing
            x = to_model_input(pixels, model.image_size, mean, std)
            model(x).probabilities
            if run >= args.warmup:
                times.append((time.perf_counter() - start) * 1000)
    times.sort()
    print(f"{source}: {model.image_size} px, {args.threads} threads, {args.runs} runs: median "
          f"{statistics.median(times):.2f} ms per face (p10 {times[len(times) // 10]:.2f}, "
          f"p90 {times[9 * len(times) // 10]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
