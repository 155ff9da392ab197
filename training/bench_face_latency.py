"""CPU time to classify one face crop (batch 1, preprocessing included): the 5 ms target.

    python training/bench_face_latency.py                          # the bundled default model
    python training/bench_face_latency.py --checkpoint PATH
    python training/bench_face_latency.py --model mpafer-face-vit  # an architecture, random weights (repeat to compare)
    python training/bench_face_latency.py --profile                # and where the time goes (torch.profiler)
    python training/bench_face_latency.py --precision fp32         # in float32 (Predictor's default where the CPU
                                                                   # has no native bfloat16)
    python training/bench_face_latency.py --checkpoint A --checkpoint B   # A against B, call by call
    python training/bench_face_latency.py --compare-unfolded       # and the same with the stem run module by module
    python training/bench_face_latency.py --compare-precision      # and the same in the other precision (on a CPU,
                                                                   # bf16 is the bfloat16 image-tower copy)
    python training/bench_face_latency.py --compare-traced         # and through a frozen TorchScript copy
    python training/bench_face_latency.py --compare-compiled       # and through torch.compile (training/traced_forward.py)
    python training/bench_face_latency.py --compare-no-tta         # and without the protocol's flip TTA

Several models (or any ``--compare-*`` flag) are timed interleaved, one call each in turn in one
process, so a noisy shared machine slows them alike and their ratio survives when the absolute
times do not.

Timed per run, as ``Predictor`` does it: a 224x224 RGB face crop (PIL, the demo's crop size) ->
the model's input protocol (resize to its input size, grey if it says so, normalise) -> prompted
image encoder + CGLA (text features cached, as in the demo; with flip TTA the mirror image rides
in the same batch) -> probabilities.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mpafer.backbone import BackboneConfig  # noqa: E402
from mpafer.checkpoint import load_checkpoint  # noqa: E402
from mpafer.defaults import default_checkpoint  # noqa: E402
from mpafer.model import MPAFERConfig, create_model  # noqa: E402
from mpafer.faces import FaceDetector  # noqa: E402
from mpafer.precision import PRECISIONS, inference_precision, native_bf16  # noqa: E402
from mpafer.predictor import Predictor  # noqa: E402
from mpafer.stems import Stem  # noqa: E402
from training.traced_forward import CompiledForward, TracedForward  # noqa: E402


class Case(NamedTuple):
    """One timed path: ``models[index]`` with its stem folded or not, in ``precision``, as ``variant``."""

    label: str
    index: int
    fold: bool
    precision: str
    variant: str = "eager"  # or "traced", "compiled" (a compiled copy in the model's place), "no-tta"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=None,
                        help="a checkpoint folder (default: the bundled model); repeat to compare, interleaved")
    parser.add_argument("--model", action="append", default=None,
                        help="an architecture with random weights instead of a checkpoint; repeat to compare, "
                             "interleaved")
    parser.add_argument("--compare-unfolded", action="store_true",
                        help="also time each model with its conv stem's batch norms not folded (mpafer.stems.Stem)")
    parser.add_argument("--compare-precision", action="store_true",
                        help="also time each model in the other precision (bf16, the image-tower copy, against "
                             "float32)")
    parser.add_argument("--compare-traced", action="store_true",
                        help="also time each model's forward as a frozen TorchScript copy (float32; the Predictor runs it eagerly)")
    parser.add_argument("--compare-compiled", action="store_true",
                        help="also time it through torch.compile with freezing (float32; compiled before the timings)")
    parser.add_argument("--compare-no-tta", action="store_true",
                        help="also time each model without flip TTA (one image per face instead of two)")
    parser.add_argument("--depth", type=int, default=8, help="visual prompt depth with --model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="as Predictor(precision=...): auto (bf16 where the CPU has native bfloat16, else "
                             "float32), bf16 (the bfloat16 image-tower copy) or fp32")
    parser.add_argument("--json", action="store_true", help="print one JSON object (what the model card reads)")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's table of where the first model's runs spend their CPU time")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model:
        models = [(f"{name} (random weights)",
                   create_model(MPAFERConfig(backbone=BackboneConfig(name), visual_prompt_depth=args.depth)))
                  for name in args.model]
    else:
        paths = args.checkpoint or [default_checkpoint()]
        if paths[0] is None:
            print("no bundled default model yet: pass --checkpoint PATH or --model CONFIG", file=sys.stderr)
            return 2
        models = [(str(path), load_checkpoint(path)) for path in paths]
    precision = inference_precision("cpu", args.precision)  # what Predictor(precision=...) runs here
    # each case is a Predictor's own forward path: a model, its stem folded or not, a precision, and a
    # variant ("eager"; "traced"/"compiled": a compiled copy in the model's place; "no-tta": no flip)
    cases = [Case(source, index, True, precision) for index, (source, _) in enumerate(models)]
    stems = [[m for m in model.modules() if isinstance(m, Stem)] for _, model in models]
    if args.compare_unfolded:  # only models with a conv stem have something to unfold
        cases += [case._replace(label=case.label + " (stem unfolded)", fold=False) for case in list(cases)
                  if stems[case.index]]
        for source, _ in (m for m, found in zip(models, stems) if not found):
            print(f"{source}: no conv stem, nothing to unfold", file=sys.stderr)
    if args.compare_precision:
        other = "fp32" if precision == "bf16" else "bf16"
        if other == "fp32" or native_bf16("cpu"):
            cases += [case._replace(label=f"{case.label} ({other})", precision=other) for case in list(cases)]
        else:
            print("this CPU has no native bfloat16: no bf16 case to compare", file=sys.stderr)
    copies = {}  # (model index, variant) -> a compiled copy of that model's forward
    eager = [case for case in cases if case.fold]
    # the compiled copies are float32 graphs, whatever precision the eager case they stand beside runs in
    for wanted, variant, make in ((args.compare_traced, "traced", TracedForward),
                                  (args.compare_compiled, "compiled", CompiledForward)):
        for case in {case.index: case for case in eager}.values() if wanted else ():
            copies[(case.index, variant)] = make(models[case.index][1].eval())
            cases.append(case._replace(label=f"{case.label} ({variant})", variant=variant, precision="fp32"))
    for case in eager if args.compare_no_tta else ():
        if models[case.index][1].config.input.tta_flip:
            cases.append(case._replace(label=case.label + " (no flip TTA)", variant="no-tta"))
        else:
            print(f"{case.label}: no flip TTA in its protocol, nothing to compare", file=sys.stderr)
    if args.json and len(cases) > 1:
        print("--json reports one model: drop the extra --checkpoint or --model or the --compare-* flags",
              file=sys.stderr)
        return 2

    detector = FaceDetector()  # never used (crops are timed), but a Predictor wants one: share it
    predictors = {(case.index, case.precision): Predictor(models[case.index][1].eval(), detector=detector,
                                                          precision=case.precision) for case in cases}
    protocols = {key: predictor.protocol for key, predictor in predictors.items()}
    crop = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    times = [[] for _ in cases]

    def restore() -> None:
        for stem in (stem for model_stems in stems for stem in model_stems):
            stem.fold_for_inference = True
        for (index, p), predictor in predictors.items():
            predictor.model, predictor.protocol = models[index][1], protocols[(index, p)]

    def switch(case: Case) -> None:  # outside the timed window
        for stem in stems[case.index]:
            stem.fold_for_inference = case.fold
        predictor = predictors[(case.index, case.precision)]
        predictor.model = models[case.index][1]
        protocol = protocols[(case.index, case.precision)]
        predictor.protocol = dataclasses.replace(protocol, tta_flip=False) if case.variant == "no-tta" else protocol

    def one_call(case: Case) -> None:
        predictor = predictors[(case.index, case.precision)]
        batch = predictor.preprocess([crop])  # reads the model's input size and normalisation
        if (case.index, case.variant) in copies:  # Predictor.forward, the compiled copy in the model's place
            predictor.model = copies[(case.index, case.variant)]
        predictor.forward(batch)

    def ran_under_bf16(case: Case) -> bool:
        """Whether the case's model call really ran the bfloat16 image-tower copy (read once, outside the
        timings): on a CPU that is what bf16 means, never autocast."""
        if (case.index, case.variant) in copies:
            return False  # a frozen float32 graph
        seen = []

        def record(module, args, kwargs):
            seen.append(kwargs.get("image_encoder") is not None)

        hook = models[case.index][1].register_forward_pre_hook(record, with_kwargs=True)
        try:
            switch(case)
            one_call(case)
        finally:
            hook.remove()
        return seen[0]

    try:
        with torch.inference_mode():
            for run in range(args.warmup + args.runs):
                for index, case in enumerate(cases):
                    switch(case)
                    start = time.perf_counter()
                    one_call(case)
                    if run >= args.warmup:
                        times[index].append((time.perf_counter() - start) * 1000)
            ran_bf16 = [ran_under_bf16(case) for case in cases]
            if args.profile:  # separate runs: the profiler's overhead stays out of the timings above
                switch(cases[0])
                with torch.profiler.profile(record_shapes=True) as profiler:
                    for _ in range(args.runs):
                        one_call(cases[0])
                # per input shape: each layer's time, so its FLOP rate can be read against the CPU's peak
                print(profiler.key_averages(group_by_input_shape=True).table(
                    sort_by="self_cpu_time_total", row_limit=16, max_name_column_width=28,
                    max_shapes_column_width=64), file=sys.stderr)
    finally:
        restore()
        for predictor in predictors.values():
            predictor.close()
        detector.close()
    for case, samples, bf16 in zip(cases, times, ran_bf16):
        source, model = case.label, models[case.index][1]
        samples.sort()
        protocol = model.config.input
        if case.variant == "no-tta":
            protocol = dataclasses.replace(protocol, tta_flip=False)
        median, p10, p90 = statistics.median(samples), samples[len(samples) // 10], samples[9 * len(samples) // 10]
        if args.json:
            print(json.dumps({"model": source, "image_size": model.image_size, "grey": protocol.grey,
                              "tta_flip": protocol.tta_flip, "threads": args.threads, "runs": args.runs,
                              "precision": "bf16" if bf16 else "fp32",
                              "cpu": torch.backends.cpu.get_cpu_capability(),  # AVX2 and AVX-512 differ ~2.5x here
                              "median_ms": round(median, 3), "p10_ms": round(p10, 3), "p90_ms": round(p90, 3)}))
            continue
        print(f"{source}: {model.image_size} px, grey {protocol.grey}, flip TTA {protocol.tta_flip}, "
              f"{'bf16' if bf16 else 'fp32'}, {args.threads} threads, {args.runs} runs: median "
              f"{median:.2f} ms per face (p10 {p10:.2f}, p90 {p90:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
