"""mpafer.evaluate and ``python -m mpafer evaluate`` on a tiny checkpoint and generated faces."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ferplus_dir
from mpafer import cli_evaluate, defaults
from mpafer.backbone import BackboneConfig
from mpafer.checkpoint import save_checkpoint
from mpafer.data import FaceDataset
from mpafer.evaluate import class_order, classification_metrics, evaluate, plot_confusion
from mpafer.model import MPAFERConfig, create_model
from fakes import FERPLUS_CLASSES, make_ferplus_pack


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    config = MPAFERConfig(backbone=BackboneConfig("mpafer-tiny"), topk=4, visual_prompt_tokens=2,
                          visual_prompt_depth=-1, n_ctx=4)
    return save_checkpoint(create_model(config), tmp_path_factory.mktemp("evaluate") / "checkpoint")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return make_ferplus_pack(tmp_path_factory.mktemp("evaluate") / "ferplus", {"train": 1, "valid": 1, "test": 3})


@pytest.fixture(scope="module")
def learnt_checkpoint(tmp_path_factory):
    """A checkpoint that has learnt the generated classes: stage 0's tiny tower (seconds) under zero-shot
    prompts, so the CLI's accuracy can be checked against chance, not just against [0, 1]."""
    from training_hooks import REPO, load_script

    root = tmp_path_factory.mktemp("learnt")
    data = make_ferplus_pack(root / "ferplus", {"train": 32, "valid": 4, "test": 4})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPAFER_CACHE", str(root / "cache"))
        assert load_script(REPO / "training" / "pretrain_backbone.py").main([
            "--data", str(data), "--out", str(root / "stage0"), "--model", "mpafer-face-minilm-tiny",
            "--epochs", "10", "--batch-size", "16", "--device", "cpu", "--no-progress"]) == 0
    config = MPAFERConfig(backbone=BackboneConfig(f"local-dir:{root / 'stage0'}"), topk=4, visual_prompt_tokens=0,
                          use_text_prompts=False)
    return save_checkpoint(create_model(config), root / "checkpoint"), data


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MPAFER_CACHE", str(tmp_path / "cache"))


def test_metrics_of_a_known_confusion():
    labels = [0, 0, 0, 1, 1, 2]
    predictions = [0, 0, 1, 1, 0, 0]
    m = classification_metrics(labels, predictions, ["a", "b", "c"])
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(3 / 6)
    assert m["confusion"] == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert m["per_class"]["c"] == {"precision": None, "recall": 0.0, "f1": None, "support": 1}
    assert m["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_class_order_maps_names_and_refuses_other_classes():
    assert class_order(["x", "y", "z"], ["z", "x", "y"]) == [2, 0, 1]
    with pytest.raises(ValueError, match="labelled with"):
        class_order(["x", "y"], ["x", "w"])


def test_evaluate_follows_the_dataset_class_order(tiny_checkpoint):
    from mpafer.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 40, 40, 3), dtype=np.uint8)
    labels = np.arange(10) % 8
    data = FaceDataset(images, labels, None, FERPLUS_CLASSES, "gen", "test")
    reversed_classes = tuple(reversed(FERPLUS_CLASSES))
    flipped = FaceDataset(images, 7 - labels, None, reversed_classes, "gen", "test")
    a, b = evaluate(model, data, batch_size=4, progress=False), evaluate(model, flipped, batch_size=4, progress=False)
    assert a["accuracy"] == b["accuracy"] and a["n"] == 10
    assert b["classes"] == list(reversed_classes)
    tta = evaluate(model, data, batch_size=3, tta_flip=True, progress=False)
    assert tta["tta_flip"] and sum(map(sum, tta["confusion"])) == 10


def test_cli_prints_one_json_object_and_saves_the_confusion_png(tiny_checkpoint, pack, tmp_path, capsys):
    png = tmp_path / "plots" / "confusion.png"
    code = cli_evaluate.main(["--dataset", "ferplus", "--data", str(pack), "--split", "test", "--checkpoint",
                              str(tiny_checkpoint), "--json", "--batch-size", "5", "--device", "cpu",
                              "--confusion", str(png)])
    assert code == 0
    out = capsys.readouterr().out
    metrics = json.loads(out)  # the whole of stdout is one JSON object
    for key in ("accuracy", "mean_class_accuracy", "n", "per_class", "confusion", "classes"):
        assert key in metrics
    assert metrics["n"] == 24 and 0.0 <= metrics["accuracy"] <= 1.0  # an untrained tiny model: format only
    assert sum(map(sum, metrics["confusion"])) == 24
    assert set(metrics["per_class"]) == set(FERPLUS_CLASSES)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["precision"] == "fp32"  # auto on a CPU


@pytest.mark.parametrize("native", [True, False])
def test_cli_precision_bf16_runs_the_bf16_tower_only_where_the_cpu_has_it(tiny_checkpoint, pack, capsys,
                                                                           monkeypatch, native):
    """on a CPU bf16 is the Predictor's bfloat16 image-tower copy, never autocast."""
    import contextlib

    import mpafer.evaluate
    import mpafer.precision

    monkeypatch.setattr(mpafer.precision, "_native_bf16", lambda kind: native)
    seen, towers = [], []
    real = mpafer.evaluate.autocast

    @contextlib.contextmanager
    def spy(device, precision="auto"):
        with real(device, precision):
            seen.append(torch.is_autocast_enabled("cpu"))
            yield

    class Counted(mpafer.evaluate.Bf16ImageTower):
        def encode_image(self, images):
            towers.append(images.shape[0])
            return super().encode_image(images)

    monkeypatch.setattr(mpafer.evaluate, "autocast", spy)
    monkeypatch.setattr(mpafer.evaluate, "Bf16ImageTower", Counted)
    with contextlib.nullcontext() if native else pytest.warns(RuntimeWarning, match="no native bfloat16"):
        code = cli_evaluate.main(["--data", str(pack), "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
                                  "--json", "--precision", "bf16"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["precision"] == ("bf16" if native else "fp32")
    assert seen and not any(seen)
    assert (sum(towers) > 0) == native


def test_cli_accuracy_of_a_learnt_checkpoint_is_well_above_chance(learnt_checkpoint, capsys):
    checkpoint, data = learnt_checkpoint
    assert cli_evaluate.main(["--dataset", "ferplus", "--data", str(data), "--split", "test", "--checkpoint",
                              str(checkpoint), "--json", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 32
    assert metrics["accuracy"] >= 0.35 and metrics["mean_class_accuracy"] >= 0.35, metrics  # chance: 0.125


def test_cli_human_report(tiny_checkpoint, pack, capsys):
    assert cli_evaluate.main(["--data", str(pack), "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "contempt" in out and "n = 24" in out


def test_cli_without_a_checkpoint_says_no_model_is_bundled(pack, monkeypatch, capsys):
    monkeypatch.setattr(defaults, "default_checkpoint", lambda: None)
    assert cli_evaluate.main(["--data", str(pack)]) == 2
    captured = capsys.readouterr()
    assert "no bundled model is present" in captured.err and "--checkpoint" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_cli_reports_a_missing_checkpoint_or_dataset_cleanly(tiny_checkpoint, tmp_path, pack, capsys):
    assert cli_evaluate.main(["--data", str(pack), "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_evaluate.main(["--data", str(tmp_path / "nodata"), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "error:" in capsys.readouterr().err


def test_default_checkpoint_lookup(tmp_path, monkeypatch):
    monkeypatch.delenv(defaults.CHECKPOINT_ENV, raising=False)
    monkeypatch.setattr(defaults, "MODELS_DIR", tmp_path)
    assert defaults.default_checkpoint() is None
    bundled = tmp_path / defaults.DEFAULT_MODEL_NAME
    bundled.mkdir()
    assert defaults.default_checkpoint() is None  # a folder without mpafer.json is not a model
    (bundled / "mpafer.json").write_text("{}")
    assert defaults.default_checkpoint() == bundled
    monkeypatch.setenv(defaults.CHECKPOINT_ENV, str(tmp_path / "mine"))
    assert defaults.default_checkpoint() == tmp_path / "mine"


def test_plot_confusion_handles_empty_rows(tmp_path):
    path = plot_confusion([[3, 1], [0, 0]], ["a", "b"], tmp_path / "c.png")
    assert path.stat().st_size > 1000


@pytest.mark.skipif(ferplus_dir() is None, reason="the FERPlus pack is not available")
def test_real_ferplus_test_split_through_a_tiny_model(tiny_checkpoint, capsys):
    code = cli_evaluate.main(["--dataset", "ferplus", "--data", str(ferplus_dir()), "--split", "test",
                              "--checkpoint", str(tiny_checkpoint), "--json", "--device", "cpu"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 3152
    assert sum(map(sum, metrics["confusion"])) == 3152
    assert sum(row["support"] for row in metrics["per_class"].values()) == 3152


def test_bad_device_and_batch_size_are_one_line_errors(tiny_checkpoint, capsys):
    from mpafer.cli_evaluate import main

    common = ["--dataset", "ferplus", "--data", "nowhere", "--split", "test", "--checkpoint", str(tiny_checkpoint)]
    assert main([*common, "--device", "xpu9"]) == 2
    assert "unknown device 'xpu9'" in capsys.readouterr().err
    assert main([*common, "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    from mpafer.devices import resolve_device
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
