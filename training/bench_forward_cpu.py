"""CPU forward time per image of MPA-FER (prompted image encoder + CGLA, cached text features).

    python training/bench_forward_cpu.py --model ViT-B-16 --threads 2 --batch 1 --runs 10

Random backbone weights: the cost does not depend on their values.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mpafer.backbone import BackboneConfig  # noqa: E402
from mpafer.model import MPAFERConfig, create_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = create_model(MPAFERConfig(backbone=BackboneConfig(args.model))).eval()
    print(f"built {args.model} in {time.perf_counter() - started:.1f} s; "
          f"learnable parameters: {model.num_learnable():,} "
          f"({model.num_learnable() * 4 / 1e6:.3f} MB as float32)")
    images = torch.randn(args.batch, 3, model.image_size, model.image_size)
    times = []
    with torch.inference_mode():
        model.class_text_features()  # cached once, as at inference
        for run in range(args.warmup + args.runs):
            start = time.perf_counter()
            model(images)
            if run >= args.warmup:
                times.append(time.perf_counter() - start)
    per_image = [t / args.batch * 1000 for t in times]
    print(f"{args.model}: batch {args.batch}, {args.threads} threads, {args.runs} runs: "
          f"median {statistics.median(per_image):.1f} ms/image (min {min(per_image):.1f}, max {max(per_image):.1f})")


if __name__ == "__main__":
    main()
