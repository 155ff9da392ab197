"""Stage 0 on the frozen MiniLM text tower: resumes exactly after a crash, keeps the text projection a
rotation, and writes a loadable backbone folder without the text tower's own weights."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fakes import make_ferplus_pack

REPO = Path(__file__).resolve().parents[1]


class Killed(Exception):
    """Stands for a kill -9 between two epochs."""


def load_stage0():
    spec = importlib.util.spec_from_file_location("mpafer_stage0_under_test", REPO / "training" / "pretrain_backbone.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage0")
    return make_ferplus_pack(root / "ferplus", {"train": 4, "valid": 2, "test": 2}), root


def run(stage0, data, out, cache, extra=()):
    return stage0.main(["--data", str(data), "--out", str(out), "--model", "mpafer-face-minilm-tiny",
                        "--epochs", "3", "--batch-size", "16", "--device", "cpu", "--cache-dir", str(cache),
                        "--no-progress", *extra])


def test_a_crashed_run_continues_to_the_same_weights(pack, tmp_path, monkeypatch):
    data, root = pack
    stage0 = load_stage0()
    assert run(stage0, data, tmp_path / "straight", root / "cache") == 0

    crashing = load_stage0()
    real_save = crashing.save_state
    saved = []

    def save_then_die(out, *args, **kwargs):  # like kill -9 right after epoch 1's state is on disk
        real_save(out, *args, **kwargs)
        saved.append(1)
        if len(saved) == 1:
            raise Killed

    monkeypatch.setattr(crashing, "save_state", save_then_die)
    with pytest.raises(Killed):
        run(crashing, data, tmp_path / "resumed", root / "cache")
    assert json.loads((tmp_path / "resumed" / "last" / "stage0_state.json").read_text())["epoch"] == 1
    assert run(load_stage0(), data, tmp_path / "resumed", root / "cache") == 0

    a = load_file(str(tmp_path / "straight" / "last" / "stage0_weights.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last" / "stage0_weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = json.loads((tmp_path / "resumed" / "pretrain_summary.json").read_text())["history"]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_other_settings_in_the_same_folder_are_refused(pack, tmp_path):
    data, root = pack
    assert run(load_stage0(), data, tmp_path / "run", root / "cache") == 0
    with pytest.raises(SystemExit, match="other settings"):
        run(load_stage0(), data, tmp_path / "run", root / "cache", ("--lr", "0.01"))


def test_the_folder_holds_no_text_tower_weights_and_loads(pack, tmp_path):
    from mpafer.backbone import load_backbone

    data, root = pack
    assert run(load_stage0(), data, tmp_path / "run", root / "cache") == 0
    weights = load_file(str(tmp_path / "run" / "open_clip_model.safetensors"))
    assert not [k for k in weights if k.startswith("text.transformer.")]
    assert "text.proj.weight" in weights
    backbone = load_backbone(f"local-dir:{tmp_path / 'run'}")
    proj = backbone.model.text.proj.weight
    gram = proj @ proj.t()
    assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=0.05)  # still (close to) a rotation
    assert tuple(backbone.model.visual.grid_size) == (4, 4)
