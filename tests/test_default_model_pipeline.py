"""Issue 4 on CPU: stage 0 (pre-train a compact backbone) -> stage 1 (MPA-FER on it, frozen)
-> bundle -> `python -m mpafer evaluate` with the bundle as the default model. Generated faces."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import make_ferplus_pack
from mpafer.backbone import load_backbone
from mpafer.checkpoint import load_checkpoint, read_metadata

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"mpafer_training_{name}", REPO / "training" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    # 32 faces a class: enough for the tiny tower to learn the generated classes in seconds (chance is 1/8)
    data = make_ferplus_pack(root / "ferplus", {"train": 32, "valid": 4, "test": 4})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPAFER_CACHE", str(root / "cache"))
        stage0 = root / "stage0"
        assert load_script("pretrain_backbone").main([
            "--data", str(data), "--out", str(stage0), "--model", "mpafer-face-minilm-tiny", "--epochs", "10",
            "--batch-size", "16", "--device", "cpu", "--cache-dir", str(root / "cache"), "--no-progress"]) == 0
        stage1 = root / "stage1"
        assert load_script("train").main([
            "--config", str(REPO / "training" / "configs" / "ferplus_default.yaml"), "--data", str(data),
            "--out", str(stage1), "--device", "cpu", "--no-progress", "--epochs", "1", "--batch-size", "8",
            "--set", f"model.backbone.model_name=local-dir:{stage0}", "model.visual_prompt_depth=2",
            "model.topk=4", "train.eval_batch_size=16"]) == 0
        bundle = root / "bundle" / "mpafer-ferplus-default"
        load_script("bundle_default_model").main([str(stage1 / "best"), str(bundle)])
    return {"root": root, "data": data, "stage0": stage0, "stage1": stage1, "bundle": bundle}


def test_stage0_writes_a_loadable_backbone_folder(pipeline):
    backbone = load_backbone(f"local-dir:{pipeline['stage0']}")
    assert tuple(backbone.model.visual.grid_size) == (4, 4)
    summary = json.loads((pipeline["stage0"] / "pretrain_summary.json").read_text())
    assert summary["epochs"] == 10
    assert summary["best"]["valid_acc"] >= 0.4, summary  # chance: 0.125
    assert backbone.mean != (0.48145466, 0.4578275, 0.40821073)  # FERPlus's own statistics


def test_bundle_is_self_contained_fp16_and_small(pipeline):
    bundle = pipeline["bundle"]
    meta = read_metadata(bundle)
    assert meta["backbone"]["model_name"] == "local-dir:backbone"
    from safetensors.torch import load_file
    weights = load_file(str(bundle / "backbone" / "open_clip_model.safetensors"))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {__import__("torch").float16}
    model = load_checkpoint(bundle)
    assert model.classes[0] == "neutral" and model.prototypes.shape[0] == 8


def test_evaluate_uses_the_bundle_as_default_model(pipeline):
    env = {**__import__("os").environ, "MPAFER_CHECKPOINT": str(pipeline["bundle"]),
           "MPAFER_CACHE": str(pipeline["root"] / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "mpafer", "evaluate", "--dataset", "ferplus", "--data",
                             str(pipeline["data"]), "--split", "test", "--json"],
                            capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 32
    assert metrics["accuracy"] >= 0.35, metrics  # stage 1 on the learnt backbone; chance: 0.125


def test_ablation_table_runs_every_row(pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv("MPAFER_CACHE", str(pipeline["root"] / "cache"))
    ablation = load_script("ablation")
    assert ablation.main(["--config", str(REPO / "training" / "configs" / "ferplus_default.yaml"),
                          "--data", str(pipeline["data"]), "--out", str(tmp_path), "--device", "cpu",
                          "--epochs", "1", "--batch-size", "16",
                          "--set", f"model.backbone.model_name=local-dir:{pipeline['stage0']}",
                          "model.visual_prompt_depth=1", "model.topk=4"]) == 0
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["learnable"] > 0 for r in rows] == [False, True, True, True, True, True, False]
    assert rows[1]["learnable"] < rows[2]["learnable"]  # visual prompts add parameters
    assert all(0.0 <= r["test"] <= 1.0 for r in rows)
    # the reference row is zero-shot but scores as the full method does
    assert [r["local_term"] for r in rows] == [False, False, False, False, False, True, True]
    assert (tmp_path / "ablation.md").read_text().count("\n") == 9
