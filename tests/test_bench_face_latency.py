"""The per-face latency benchmark runs and reports what it ran (not its speed: benchmarks are scripts)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from training_hooks import load_script

import mpafer.precision

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a Predictor each: the face detector loads


def run_bench(capsys, *extra: str) -> dict:
    bench = load_script(ROOT / "training" / "bench_face_latency.py")
    assert bench.main(["--model", "mpafer-tiny", "--runs", "3", "--warmup", "1", "--threads", "1", "--json",
                       *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("native", [True, False])
def test_the_benchmark_runs_what_predictor_runs_by_default(capsys, monkeypatch, native):
    """bf16 (the image-tower copy) where the CPU computes it natively, else float32."""
    monkeypatch.setattr(mpafer.precision, "_native_bf16", lambda kind: native)
    report = run_bench(capsys)
    assert report["precision"] == ("bf16" if native else "fp32") and report["runs"] == 3
    assert 0 < report["p10_ms"] <= report["median_ms"] <= report["p90_ms"]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_runs_under_autocast_only_where_the_cpu_has_it(capsys, monkeypatch, native):
    """emulated bf16 falls back to float32, with a warning."""
    monkeypatch.setattr(mpafer.precision, "_native_bf16", lambda kind: native)
    with contextlib.nullcontext() if native else pytest.warns(RuntimeWarning, match="no native bfloat16"):
        report = run_bench(capsys, "--precision", "bf16")
    assert report["precision"] == ("bf16" if native else "fp32")


def test_two_checkpoints_and_the_unfolded_stem_are_timed_interleaved(capsys, tmp_path):
    """one line per case, the fold switch restored after; --json reports a single model only."""
    from mpafer.backbone import BackboneConfig
    from mpafer.checkpoint import save_checkpoint
    from mpafer.model import MPAFERConfig, create_model
    from mpafer.stems import Stem

    model = create_model(MPAFERConfig(backbone=BackboneConfig("mpafer-tiny-stem")))
    assert any(isinstance(m, Stem) for m in model.modules())
    save_checkpoint(model, tmp_path / "a")
    save_checkpoint(model, tmp_path / "b")
    bench = load_script(ROOT / "training" / "bench_face_latency.py")
    assert bench.main(["--checkpoint", str(tmp_path / "a"), "--checkpoint", str(tmp_path / "b"),
                       "--compare-unfolded", "--runs", "3", "--warmup", "1", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and sum("(stem unfolded)" in line for line in lines) == 2
    assert Stem.fold_for_inference  # the switch is per module, the class default untouched
    assert bench.main(["--checkpoint", str(tmp_path / "a"), "--compare-unfolded", "--json"]) == 2


@pytest.mark.parametrize("native", [True, False])
def test_compare_precision_adds_a_bf16_case_only_where_the_cpu_has_it(capsys, monkeypatch, native):
    monkeypatch.setattr(mpafer.precision, "_native_bf16", lambda kind: native)
    bench = load_script(ROOT / "training" / "bench_face_latency.py")
    assert bench.main(["--model", "mpafer-tiny", "--precision", "fp32", "--compare-precision", "--runs", "3",
                       "--warmup", "1", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    if native:  # each line says what its case's model call ran under
        assert len(lines) == 2 and ", fp32, " in lines[0] and "(bf16)" in lines[1] and ", bf16, " in lines[1]
    else:
        assert len(lines) == 1 and ", fp32, " in lines[0]


def test_compare_unfolded_skips_a_model_without_a_conv_stem(capsys):
    bench = load_script(ROOT / "training" / "bench_face_latency.py")
    assert bench.main(["--model", "mpafer-tiny", "--compare-unfolded", "--precision", "fp32", "--runs", "3",
                       "--warmup", "1", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1 and "nothing to unfold" in captured.err


def test_two_architectures_are_timed_interleaved(capsys):
    bench = load_script(ROOT / "training" / "bench_face_latency.py")
    assert bench.main(["--model", "mpafer-tiny", "--model", "mpafer-tiny-stem", "--precision", "fp32", "--runs", "3",
                       "--warmup", "1", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("mpafer-tiny (random weights)") and lines[1].startswith("mpafer-tiny-stem (random")


def test_compare_traced_adds_a_traced_case_per_model(capsys, tmp_path):
    from mpafer.backbone import BackboneConfig
    from mpafer.checkpoint import save_checkpoint
    from mpafer.model import MPAFERConfig, create_model

    save_checkpoint(create_model(MPAFERConfig(backbone=BackboneConfig("mpafer-tiny-stem"))), tmp_path / "a")
    bench = load_script(ROOT / "training" / "bench_face_latency.py")
    assert bench.main(["--checkpoint", str(tmp_path / "a"), "--compare-traced", "--runs", "3", "--warmup", "1",
                       "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "(traced)" in lines[1] and "fp32" in lines[1]
    assert bench.main(["--checkpoint", str(tmp_path / "a"), "--compare-traced", "--json"]) == 2


def test_compare_no_tta_times_the_model_with_and_without_its_flip(capsys, tmp_path):
    import dataclasses

    from mpafer.backbone import BackboneConfig
    from mpafer.checkpoint import save_checkpoint
    from mpafer.model import MPAFERConfig, create_model

    model = create_model(MPAFERConfig(backbone=BackboneConfig("mpafer-tiny-stem")))
    model.config.input = dataclasses.replace(model.config.input, tta_flip=True)
    save_checkpoint(model, tmp_path / "a")
    bench = load_script(ROOT / "training" / "bench_face_latency.py")
    assert bench.main(["--checkpoint", str(tmp_path / "a"), "--compare-no-tta", "--runs", "3", "--warmup", "1",
                       "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "flip TTA True" in lines[0]
    assert "(no flip TTA)" in lines[1] and "flip TTA False" in lines[1]
