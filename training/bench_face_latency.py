"""CPU time to classify one face crop (batch 1, preprocessing included): the 5 ms target.

    python training/bench_face_latency.py                          # the bundled default model
    python training/bench_face_latency.py --checkpoint PATH
    python training/bench_face_latency.py --model mpafer-face-vit  # an architecture, random weights
    python training/bench_face_latency.py --profile                # and where the time goes (torch.profiler)
    python training/bench_face_latency.py --precision bf16         # under bf16 autocast (Predictor runs float32)

Timed per run, as ``Predictor`` does it: a 224x224 RGB face crop (PIL, the demo's crop size) ->
the model's input protocol (resize to its input size, grey if it says so, normalise) -> prompted
image encoder + CGLA (text features cached, as in the demo; with flip TTA the mirror image rides
in the same batch) -> probabilities.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mpafer.backbone import BackboneConfig  # noqa: E402
from mpafer.checkpoint import load_checkpoint  # noqa: E402
from mpafer.defaults import default_checkpoint  # noqa: E402
from mpafer.model import MPAFERConfig, create_model  # noqa: E402
from mpafer.precision import PRECISIONS, cpu_bf16_autocast, effective_precision  # noqa: E402
from mpafer.predictor import Predictor  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--model", default=None, help="an architecture with random weights instead of a checkpoint")
    parser.add_argument("--depth", type=int, default=8, help="visual prompt depth with --model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (what Predictor does) or bf16 autocast, to measure what it would gain")
    parser.add_argument("--json", action="store_true", help="print one JSON object (what the model card reads)")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's table of where the timed runs spent their CPU time")
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
    precision = effective_precision("cpu", args.precision)  # float32, with a warning, where bf16 would be emulated
    # float32 runs exactly as Predictor does (no autocast, no attention-kernel pin)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    predictor = Predictor(model)
    crop = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    times, ran_bf16 = [], False
    try:
        with torch.inference_mode(), context:
            ran_bf16 = cpu_bf16_autocast()
            for run in range(args.warmup + args.runs):
                start = time.perf_counter()
                predictor.forward(predictor.preprocess([crop]))
                if run >= args.warmup:
                    times.append((time.perf_counter() - start) * 1000)
            if args.profile:  # separate runs: the profiler's overhead stays out of the timings above
                with torch.profiler.profile(record_shapes=True) as profiler:
                    for _ in range(args.runs):
                        predictor.forward(predictor.preprocess([crop]))
                # per input shape: each layer's time, so its FLOP rate can be read against the CPU's peak
                print(profiler.key_averages(group_by_input_shape=True).table(
                    sort_by="self_cpu_time_total", row_limit=16, max_name_column_width=28,
                    max_shapes_column_width=64), file=sys.stderr)
    finally:
        predictor.close()
    times.sort()
    protocol = model.config.input
    if args.json:
        print(json.dumps({"model": source, "image_size": model.image_size, "grey": protocol.grey,
                          "tta_flip": protocol.tta_flip, "threads": args.threads, "runs": args.runs,
                          "precision": "bf16" if ran_bf16 else "fp32",
                          "cpu": torch.backends.cpu.get_cpu_capability(),  # AVX2 and AVX-512 differ ~2.5x here
                          "median_ms": round(statistics.median(times), 3),
                          "p10_ms": round(times[len(times) // 10], 3), "p90_ms": round(times[9 * len(times) // 10], 3)}))
        return 0
    print(f"{source}: {model.image_size} px, grey {protocol.grey}, flip TTA {protocol.tta_flip}, "
          f"{'bf16' if ran_bf16 else 'fp32'}, {args.threads} threads, {args.runs} runs: median "
          f"{statistics.median(times):.2f} ms per face (p10 {times[len(times) // 10]:.2f}, "
          f"p90 {times[9 * len(times) // 10]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
