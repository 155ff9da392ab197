"""The per-face latency benchmark runs and reports what it measured (not its speed: benchmarks are scripts)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_hooks import load_script

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a Predictor each: the face detector loads


def run_bench(capsys, *extra: str) -> dict:
    bench = load_script(ROOT / "training" / "bench_face_latency.py")
    assert bench.main(["--model", "mpafer-tiny", "--runs", "3", "--warmup", "1", "--threads", "1", "--json",
                       *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_benchmark_reports_float32_by_default(capsys):
    report = run_bench(capsys)
    assert report["precision"] == "fp32" and report["runs"] == 3
    assert 0 < report["p10_ms"] <= report["median_ms"] <= report["p90_ms"]


def test_bf16_is_reported_as_what_ran(capsys):
    report = run_bench(capsys, "--precision", "bf16")
    native = any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                         "_is_amx_tile_supported"))
    assert report["precision"] == ("bf16" if native else "fp32")  # no emulated bf16: float32 with a warning
