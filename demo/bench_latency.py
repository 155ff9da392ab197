"""Median end-to-end latency of the demo's handlers on a 640x480 frame with one face.

    python demo/bench_latency.py [--runs 30] [--checkpoint PATH | --architecture NAME] [--threads N]

Times ``handlers.analyze`` (photo tab: detection, one forward pass, region descriptions,
the first face's panel with its occlusion check, drawing) and ``live_view.live`` (webcam fast path), in process, with
whatever model ``mpafer.defaults.default_checkpoint()`` gives unless ``--checkpoint`` says
otherwise; ``--architecture mpafer-face-vit`` times a random-weight model of the default
model's size instead (for before that model is bundled). The frame is the astronaut example
scaled to 640 px wide and cut to 480 rows.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def test_frame():
    import numpy as np
    from PIL import Image

    photo = Image.open(ROOT / "assets" / "examples" / "astronaut.jpg").convert("RGB")
    return np.asarray(photo.resize((640, 640), Image.Resampling.BICUBIC).crop((0, 0, 640, 480)))


def frame_without_a_face():
    """A 640x480 frame with nobody in it (the astronaut's suit, one of the test suite's face-free pictures):
    the detector's padded retry looks run on every such frame."""
    import numpy as np
    from PIL import Image

    picture = Image.open(ROOT / "tests" / "data" / "no_faces" / "19_astronaut_suit.jpg").convert("RGB")
    return np.asarray(picture.resize((640, 480), Image.Resampling.BICUBIC))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


WARMUP = 3  # untimed calls before each handler's timed runs


def measure(fn, runs: int, warmup: int = WARMUP) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per handler (at least 20)")
    parser.add_argument("--checkpoint", default=None, help="default: mpafer.defaults.default_checkpoint()")
    parser.add_argument("--architecture", default=None,
                        help="time a random-weight model of this open_clip config (e.g. mpafer-face-vit)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: what demo/app.py uses, cores // 2)")
    args = parser.parse_args(argv)
    if args.runs < 20:
        parser.error("--runs must be at least 20")

    import torch

    from demo import handlers, live_view
    from demo.app import torch_threads
    from mpafer.defaults import default_checkpoint
    from mpafer.predictor import Predictor

    torch.set_num_threads(args.threads or torch_threads())
    if args.architecture:
        from mpafer.backbone import BackboneConfig
        from mpafer.model import MPAFERConfig, create_model

        model = create_model(MPAFERConfig(backbone=BackboneConfig(args.architecture))).eval()
        predictor = Predictor(model)
        predictor.source = f"random-weight {args.architecture} (timing only)"
    else:
        predictor = Predictor(args.checkpoint)
    frame, empty = test_frame(), frame_without_a_face()
    faces = predictor.predict(frame)
    if len(faces) != 1 or predictor.predict(empty):
        print(f"expected one face in the test frame and none in the empty one, found {len(faces)} and "
              f"{len(predictor.predict(empty))}", file=sys.stderr)
        return 1

    print(f"model: {predictor.source}" + ("  (UNTRAINED fallback)" if predictor.untrained else ""))
    print(f"default_checkpoint(): {default_checkpoint()}")
    print(f"model input {predictor.model.image_size} px, grid {predictor.model.grid}, "
          f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, frame 640x480, {args.runs} runs")
    for name, fn in (("analyze (photo, full explanation)", lambda: handlers.analyze(predictor, frame)),
                     ("live (webcam fast path)", lambda: live_view.live(predictor, frame)),
                     ("predict only, explain=False", lambda: predictor.predict(frame, explain=False)),
                     ("live, a frame without a face", lambda: live_view.live(predictor, empty))):
        calls = predictor.detector.model_calls
        times = [t * 1000 for t in measure(fn, args.runs)]
        passes = (predictor.detector.model_calls - calls) / (args.runs + WARMUP)  # per call
        print(f"{name:<36} median {statistics.median(times):7.1f} ms   p90 {percentile(times, 90):7.1f} ms   "
              f"min {min(times):7.1f} ms   detector passes {passes:.0f}")
    predictor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
