"""training/train.py and mpafer.augment: a tiny run end to end, kill -9 and resume, config checks.

The data is a generated FERPlus pack (48 x 48 faces whose brightness and a bright band encode
the class); the backbone is the tiny random one. Runs are in-process where possible (the
imports are already paid for); the crash needs its own process.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mpafer.augment import AugmentConfig, apply_augment, sample_augment
from mpafer.transforms import as_nchw, to_model_input

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "training" / "train.py"
TINY_CONFIG = REPO / "training" / "configs" / "tiny_cpu.yaml"
HOOKS = Path(__file__).resolve().parent / "training_hooks.py"  # runs a script with test-only callbacks
from fakes import make_ferplus_pack  # noqa: E402
from training_hooks import load_script  # noqa: E402  (also puts the repo root on sys.path)

from training.engine.schedule import lr_factor  # noqa: E402
from training.engine.state import flatten_optimizer, unflatten_optimizer  # noqa: E402

train_script = load_script(TRAIN_SCRIPT, "mpafer_training_train")


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(TINY_CONFIG), "--data", str(data), "--out", str(out), "--device", "cpu",
            "--no-progress", *extra]


def subprocess_env(cache: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPAFER_CACHE": str(cache), **extra}


def learnable(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(folder / "mpafer.safetensors")).items() if k.startswith("learnable.")}


def read_metrics(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {"data": make_ferplus_pack(root / "ferplus"), "cache": root / "cache", "root": root}


@pytest.fixture(scope="module")
def finished_run(workspace):
    """An uninterrupted two-epoch run (in this process): the reference for the other tests."""
    out = workspace["root"] / "uninterrupted"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPAFER_CACHE", str(workspace["cache"]))
        assert train_script.main(train_args(workspace["data"], out)) == 0
    return out


# ------------------------------------------------------------------------------------ augment

def test_to_model_input_takes_either_layout_and_normalises():
    rng = np.random.default_rng(1)
    nhwc = rng.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    a = to_model_input(nhwc, 32, mean, std)
    b = to_model_input(torch.from_numpy(nhwc).permute(0, 3, 1, 2), 32, mean, std)
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    same = to_model_input(nhwc, 48, mean, std)  # no resize: exact normalisation
    expected = (torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(same, expected, atol=1e-6)
    with pytest.raises(ValueError, match="colour channels"):
        to_model_input(np.zeros((2, 8, 8, 4), np.uint8), 8, mean, std)


def test_augment_without_randomness_is_a_resize_and_a_flip_mirrors():
    x = torch.randint(0, 256, (4, 48, 48, 3), dtype=torch.uint8)
    plain = AugmentConfig(scale=(1, 1), ratio=(1, 1), flip=0, erase=0)
    out = apply_augment(x, sample_augment(4, plain), 48, (0, 0, 0), (1, 1, 1))
    assert torch.allclose(out, as_nchw(x).float() / 255, atol=1e-5)
    mirrored = AugmentConfig(scale=(1, 1), ratio=(1, 1), flip=1, erase=0)
    out = apply_augment(x, sample_augment(4, mirrored), 48, (0, 0, 0), (1, 1, 1))
    assert torch.allclose(out, as_nchw(x).float().flip(-1) / 255, atol=1e-5)


def test_augment_erases_to_the_mean_and_crops_within_bounds():
    config = AugmentConfig(erase=1.0, erase_scale=(0.1, 0.1), erase_ratio=(1, 1))
    draws = sample_augment(64, config, torch.Generator().manual_seed(0))
    assert bool((draws.crop[:, 2] * draws.crop[:, 3] >= 0.8 * 0.75).all())  # scale 0.8-1, clamped aspect
    assert bool((draws.crop[:, :2] - draws.crop[:, 2:] / 2 >= -1e-6).all())
    assert bool((draws.crop[:, :2] + draws.crop[:, 2:] / 2 <= 1 + 1e-6).all())
    x = torch.full((64, 40, 40, 3), 200, dtype=torch.uint8)
    out = apply_augment(x, draws, 40, (0.1, 0.1, 0.1), (1, 1, 1))
    erased = (out == 0).all(dim=1).float().mean(dim=(1, 2))  # fraction of pixels at the mean colour
    assert torch.allclose(erased, torch.full_like(erased, 0.1), atol=0.03)


def test_augment_draws_come_only_from_the_generator_and_slice_per_rank():
    config = AugmentConfig()
    whole = sample_augment(8, config, torch.Generator().manual_seed(5))
    again = sample_augment(8, config, torch.Generator().manual_seed(5))
    assert torch.equal(whole.crop, again.crop) and torch.equal(whole.erase, again.erase)
    x = torch.randint(0, 256, (8, 48, 48, 3), dtype=torch.uint8)
    full = apply_augment(x, whole, 32, (0.5,) * 3, (0.5,) * 3)
    half = apply_augment(x[4:], whole.slice(4, 8), 32, (0.5,) * 3, (0.5,) * 3)
    assert torch.equal(full[4:], half)


def test_augment_rotation_turns_the_face_and_leaves_the_other_draws_alone():
    plain = AugmentConfig(scale=(1, 1), ratio=(1, 1), flip=0, erase=0)
    turned = AugmentConfig(scale=(1, 1), ratio=(1, 1), flip=0, erase=0, rotate=15)
    before = sample_augment(16, plain, torch.Generator().manual_seed(3))
    after = sample_augment(16, turned, torch.Generator().manual_seed(3))
    assert before.angle is None  # rotate=0 draws nothing: older runs replay exactly
    assert torch.equal(before.crop, after.crop) and torch.equal(before.erase, after.erase)
    assert float(after.angle.abs().max()) <= np.radians(15) + 1e-6 and float(after.angle.abs().min()) > 0
    # the same turn as torchvision's rotate (counter-clockwise for a positive angle), pixel for pixel
    from torchvision.transforms.functional import InterpolationMode, rotate
    x = torch.zeros(1, 48, 48, 3, dtype=torch.uint8)
    x[:, 4:44, 22:26] = 255
    draws = sample_augment(1, turned, torch.Generator().manual_seed(0))
    degrees = float(np.degrees(draws.angle[0].item()))
    out = apply_augment(x, draws, 48, (0, 0, 0), (1, 1, 1))
    reference = rotate(as_nchw(x).float() / 255, degrees, InterpolationMode.BILINEAR)
    inner = (slice(None), slice(None), slice(8, 40), slice(8, 40))  # away from the borders' padding rules
    assert float((out[inner] - reference[inner]).abs().max()) < 1e-3
    assert float((out[inner] - (as_nchw(x).float() / 255)[inner]).abs().mean()) > 0.03  # it did turn
    with pytest.raises(ValueError, match="rotate"):
        AugmentConfig(rotate=90)
    # off, it is absent from the saved (hashed) settings, so runs from before the option still resume
    assert "rotate" not in AugmentConfig().to_dict() and AugmentConfig(rotate=5).to_dict()["rotate"] == 5
    assert AugmentConfig.from_dict(AugmentConfig(rotate=5).to_dict()).rotate == 5


# ------------------------------------------------------------------------------ training runs

def test_run_writes_metrics_checkpoints_and_test_results(finished_run, workspace, monkeypatch):
    out = finished_run
    rows = read_metrics(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        for key in ("train_accuracy", "val_accuracy", "val_mean_class_accuracy"):
            assert 0.0 <= float(row[key]) <= 1.0
        assert float(row["images_per_s"]) > 0
        for term in train_script.GRAD_TERMS:  # each term's gradient norm, for reading an ablation
            assert float(row[f"train_grad_{term}"]) > 0, term
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns something
    for folder in ("best", "last"):
        assert (out / folder / "mpafer.json").is_file() and (out / folder / "mpafer.safetensors").is_file()
    assert (out / "last" / "train_state.safetensors").is_file()
    state = json.loads((out / "last" / "train_state.json").read_text())
    assert state["epoch"] == 2 and state["config_hash"] == train_script.config_hash(state["config"])
    assert list((out / "tb").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(out / "tb")).Reload().Tags()["scalars"]
    assert {"train/grad_ce", "train/grad_t", "train/grad_v", "train/ce", "train/v"} <= set(tags)
    assert (out / "test_confusion.png").stat().st_size > 1000

    test = json.loads((out / "test_metrics.json").read_text())
    assert test["n"] == 16 and 0.0 <= test["accuracy"] <= 1.0
    assert sum(map(sum, test["confusion"])) == 16
    best_epoch = max(range(2), key=lambda i: (float(rows[i]["val_accuracy"]), -i)) + 1
    assert test["epoch"] == best_epoch and test["selected_on"] == "valid"

    from mpafer.checkpoint import load_checkpoint, read_metadata
    from mpafer.data import load_dataset
    from mpafer.evaluate import evaluate

    model = load_checkpoint(out / "best")
    assert model.prototypes.shape == (8, model.clip.text_projection.shape[-1])
    assert read_metadata(out / "best")["extra"]["data"] == {"dataset": "ferplus", "image_size": None,
                                                            "soft_labels": True}
    monkeypatch.setenv("MPAFER_CACHE", str(workspace["cache"]))
    again = evaluate(model, load_dataset("ferplus", workspace["data"], "test", image_size=None, progress=False),
                     progress=False)
    assert again["accuracy"] == test["accuracy"] and again["confusion"] == test["confusion"]


def test_resume_after_kill_ends_where_an_uninterrupted_run_ends(finished_run, workspace, monkeypatch):
    out = workspace["root"] / "killed"
    crashed = subprocess.run([sys.executable, str(HOOKS), "--crash-after-steps", "9", str(TRAIN_SCRIPT),
                              *train_args(workspace["data"], out)], env=subprocess_env(workspace["cache"]),
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    assert json.loads((out / "last" / "train_state.json").read_text())["epoch"] == 1  # died in epoch 2
    assert [int(r["epoch"]) for r in read_metrics(out)] == [1]
    assert not (out / "test_metrics.json").exists()

    monkeypatch.setenv("MPAFER_CACHE", str(workspace["cache"]))
    assert train_script.main(train_args(workspace["data"], out, "--resume")) == 0
    resumed, reference = learnable(out / "last"), learnable(finished_run / "last")
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name
    assert [int(r["epoch"]) for r in read_metrics(out)] == [1, 2]
    assert json.loads((out / "test_metrics.json").read_text())["accuracy"] == \
        json.loads((finished_run / "test_metrics.json").read_text())["accuracy"]


def test_resume_with_a_changed_config_is_refused(finished_run, workspace, capsys):
    before = (finished_run / "last" / "train_state.json").read_text()
    assert train_script.main(train_args(workspace["data"], finished_run, "--resume", "--lr", "0.01")) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "train.lr: 0.032 -> 0.01" in err
    assert train_script.main(train_args(workspace["data"], finished_run)) == 2  # no --resume: not overwritten
    assert "pass --resume" in capsys.readouterr().err
    assert (finished_run / "last" / "train_state.json").read_text() == before


def test_hard_labels_without_validation_or_test_and_a_per_class_limit(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MPAFER_CACHE", str(workspace["cache"]))
    out = tmp_path / "run"
    assert train_script.main(train_args(workspace["data"], out, "--epochs", "1", "--limit-per-class", "2", "--set",
                                        "data.soft_labels=false", "data.val_split=null", "data.test_split=null")) == 0
    assert "16 training images, 2 steps of 8" in capsys.readouterr().out
    (row,) = read_metrics(out)
    assert row["val_accuracy"] == "" and 0 <= float(row["train_accuracy"]) <= 1
    assert (out / "best" / "mpafer.json").is_file()  # no validation: the last epoch is the best
    assert not (out / "test_metrics.json").exists()


def test_config_mistakes_are_clear_errors(workspace, tmp_path, capsys):
    assert train_script.main(train_args(workspace["data"], tmp_path / "a", "--set", "train.lrr=1")) == 2
    assert "unknown key" in capsys.readouterr().err
    assert train_script.main(["--config", str(TINY_CONFIG), "--out", str(tmp_path / "b")]) == 2
    assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_paper_config_fails_fast_offline_without_clip_weights(workspace, tmp_path, monkeypatch, capsys):
    import open_clip

    from mpafer.offline_weights import cached_weights

    if cached_weights(open_clip.get_pretrained_cfg("ViT-B-16", "openai"), None):
        pytest.skip("the CLIP ViT-B/16 weights are cached here: the run would really start")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPAFER_CACHE", str(workspace["cache"]))
    config = REPO / "training" / "configs" / "ferplus_vitb16.yaml"
    code = train_script.main(["--config", str(config), "--data", str(workspace["data"]), "--out",
                              str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "ViT-B-16" in err and "openai" in err and "offline" in err.lower()


def test_every_shipped_config_parses_and_its_bank_fits_its_dataset(workspace):
    from mpafer import data
    from mpafer.descriptions import load_bank

    dataset_classes = {"ferplus": data.FERPLUS_CLASSES, "ferplus-folder": data.FERPLUS_CLASSES,
                       "rafdb": data.RAFDB_CLASSES, "affectnet7": data.AFFECTNET7_CLASSES,
                       "affectnet8": data.AFFECTNET8_CLASSES}
    for path in sorted((REPO / "training" / "configs").glob("*.yaml")):
        args = train_script.build_parser().parse_args(["--config", str(path), "--data", str(workspace["data"])])
        config = train_script.build_config(args)
        assert config["train"]["epochs"] >= 1, path
        classes = dataset_classes[config["data"]["dataset"]]
        bank = load_bank(config["model"]["bank"])
        assert sorted(bank.classes) == sorted(classes), path  # the model's outputs are the data's classes
        if config["model"]["classes"] is not None:
            assert list(config["model"]["classes"]) == list(classes), path


def test_learning_rate_warms_up_then_follows_a_cosine():
    factor = lr_factor
    assert factor(0, 100, 10, 0.01, 0.0) == pytest.approx(0.01)
    assert factor(10, 100, 10, 0.01, 0.0) == pytest.approx(1.0)
    assert factor(55, 100, 10, 0.01, 0.0) == pytest.approx(0.5)
    assert factor(100, 100, 10, 0.01, 0.1) == pytest.approx(0.1)


def test_optimizer_state_round_trips_through_safetensors_and_json():
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    for make in (lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9), lambda: torch.optim.AdamW(params)):
        optimizer = make()
        sum(p.sum() for p in params).backward()
        optimizer.step()
        tensors, meta = flatten_optimizer(optimizer.state_dict())
        meta = json.loads(json.dumps(meta))
        fresh = make()
        fresh.load_state_dict(unflatten_optimizer(tensors, meta))
        original, restored = optimizer.state_dict(), fresh.state_dict()
        assert json.dumps(original["param_groups"]) == json.dumps(restored["param_groups"])
        for pid, values in original["state"].items():
            for key, value in values.items():
                assert torch.equal(restored["state"][pid][key], value)


def test_the_library_never_imports_training_or_demo():
    import ast

    for path in sorted((REPO / "mpafer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                assert name.split(".")[0] not in ("training", "demo", "tests"), f"{path}: imports {name}"


def test_no_module_of_the_training_engine_is_long():
    for path in [*(REPO / "training" / "engine").glob("*.py"), *(REPO / "training" / "stages").glob("*.py"),
                 REPO / "training" / "train.py", REPO / "training" / "pretrain_backbone.py"]:
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 350, path
