"""Stage 0 on the frozen MiniLM text tower: resumes exactly after a crash mid-epoch, keeps the text
projection a rotation, and writes a loadable backbone folder without the text tower's own weights."""
import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fakes import make_ferplus_pack
from training_hooks import CrashAfterSteps, Killed, load_script

REPO = Path(__file__).resolve().parents[1]


def load_stage0():
    return load_script(REPO / "training" / "pretrain_backbone.py", "mpafer_stage0_under_test")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage0")
    return make_ferplus_pack(root / "ferplus", {"train": 4, "valid": 2, "test": 2}), root


def run(stage0, data, out, cache, extra=(), callbacks=()):
    return stage0.main(["--data", str(data), "--out", str(out), "--model", "mpafer-face-minilm-tiny",
                        "--epochs", "3", "--batch-size", "16", "--device", "cpu", "--cache-dir", str(cache),
                        "--no-progress", *extra], callbacks=callbacks)


def test_a_crashed_run_continues_to_the_same_weights(pack, tmp_path):
    data, root = pack
    stage0 = load_stage0()
    turn = ("--rotate", "10", "--ema-decay", "0.9")  # the rotation draws and the weight average replay too
    assert run(stage0, data, tmp_path / "straight", root / "cache", turn) == 0  # 32 images: 2 steps per epoch

    with pytest.raises(Killed):  # like kill -9 in epoch 2, after its first step: last/ holds epoch 1
        run(stage0, data, tmp_path / "resumed", root / "cache", turn, callbacks=[CrashAfterSteps(3, hard=False)])
    assert json.loads((tmp_path / "resumed" / "last" / "train_state.json").read_text())["epoch"] == 1
    assert run(load_stage0(), data, tmp_path / "resumed", root / "cache", turn) == 0

    a = load_file(str(tmp_path / "straight" / "last" / "stage0_weights.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last" / "stage0_weights.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("buffer.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    summary = json.loads((tmp_path / "resumed" / "pretrain_summary.json").read_text())
    assert [r["epoch"] for r in summary["history"]] == [1, 2, 3] and summary["rotate"] == 10
    assert summary["ema_decay"] == 0.9 and all(r["live_valid_acc"] != "" for r in summary["history"])
    assert any(k.startswith("ema.") for k in a)
    straight = json.loads((tmp_path / "straight" / "pretrain_summary.json").read_text())
    assert summary["best"] == straight["best"]
    with open(tmp_path / "resumed" / "pretrain_metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    assert list((tmp_path / "resumed" / "tb").glob("events.out.tfevents.*"))


def test_other_settings_in_the_same_folder_are_refused(pack, tmp_path, capsys):
    data, root = pack
    assert run(load_stage0(), data, tmp_path / "run", root / "cache") == 0
    assert run(load_stage0(), data, tmp_path / "run", root / "cache", ("--lr", "0.01")) == 2
    assert run(load_stage0(), data, tmp_path / "run", root / "cache", ("--rotate", "5")) == 2
    assert run(load_stage0(), data, tmp_path / "run", root / "cache", ("--ema-decay", "0.99")) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "lr: 0.002 -> 0.01" in err


def test_with_a_weight_average_the_best_folder_holds_the_average(pack, tmp_path):
    data, root = pack
    # one epoch: the best epoch is the last, so the saved model must be last/'s average, not its live weights
    assert run(load_stage0(), data, tmp_path / "run", root / "cache", ("--ema-decay", "0.5", "--epochs", "1")) == 0
    state = load_file(str(tmp_path / "run" / "last" / "stage0_weights.safetensors"))
    best = load_file(str(tmp_path / "run" / "open_clip_model.safetensors"))
    name = "visual.transformer.resblocks.0.mlp.c_fc.weight"
    # two steps moved them apart, and validation put the live weights back before last/ was saved
    assert not torch.equal(state[f"ema.model.{name}"], state[f"model.{name}"])
    assert torch.equal(best[name], state[f"ema.model.{name}"].to(best[name].dtype))
    stats = [k for k in best if k.endswith("running_var")]
    assert stats and all(torch.equal(best[k], state[f"ema.buffer.{k}"]) for k in stats)


def test_a_decay_outside_zero_to_one_is_a_clear_error(pack, tmp_path, capsys):
    data, root = pack
    assert run(load_stage0(), data, tmp_path / "run", root / "cache", ("--ema-decay", "1")) == 2
    assert "--ema-decay must lie in [0, 1)" in capsys.readouterr().err and not (tmp_path / "run").exists()


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


def test_init_from_continues_a_finished_folder_and_refuses_another_architecture(pack, tmp_path, capsys):
    from mpafer.backbone import load_backbone

    data, root = pack
    assert run(load_stage0(), data, tmp_path / "first", root / "cache") == 0
    first = load_backbone(f"local-dir:{tmp_path / 'first'}")
    # a learning rate of zero: the second run's parameters are the first run's, bit for bit (only the
    # stem's batch-norm statistics move, as in any training epoch)
    assert run(load_stage0(), data, tmp_path / "second", root / "cache",
               ("--init-from", str(tmp_path / "first"), "--lr", "0", "--text-lr", "0", "--weight-decay", "0")) == 0
    a = load_file(str(tmp_path / "first" / "open_clip_model.safetensors"))
    b = load_file(str(tmp_path / "second" / "open_clip_model.safetensors"))
    assert a.keys() == b.keys()
    fixed = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(fixed) > 10 and all(torch.equal(a[k], b[k]) for k in fixed)
    summary = json.loads((tmp_path / "second" / "pretrain_summary.json").read_text())
    assert summary["init_fingerprint"] == first.fingerprint and summary["init_from"] == str(tmp_path / "first")

    config = tmp_path / "first" / "open_clip_config.json"
    other = json.loads(config.read_text())
    other["model_cfg"]["vision_cfg"]["layers"] += 1
    config.write_text(json.dumps(other))
    assert run(load_stage0(), data, tmp_path / "third", root / "cache", ("--init-from", str(tmp_path / "first"))) == 2
    assert "another architecture" in capsys.readouterr().err


def test_text_to_image_term_reads_the_images_side_that_image_to_text_ignores():
    from training.stages.stage0_backbone import text_to_image_ce

    targets = torch.eye(4)[:3]  # three images of classes 0, 1, 2; class 3 absent from the batch
    logits = 5 * torch.eye(4)[:3]
    base = text_to_image_ce(logits, targets)
    assert torch.isfinite(base) and base < 0.02  # each text ranks its image first; the absent class is left out
    # one image nearer every text: image-to-text cross-entropy cannot see it, this term can
    shifted = logits.clone()
    shifted[2] += 3.0
    image_to_text = torch.nn.functional.cross_entropy
    torch.testing.assert_close(image_to_text(shifted, targets), image_to_text(logits, targets))
    assert text_to_image_ce(shifted, targets) > base + 0.05
    # a class text scoring all images alike higher changes nothing (softmax over images)
    column = logits.clone()
    column[:, 1] += 4.0
    torch.testing.assert_close(text_to_image_ce(column, targets), base)
    # vote shares as targets: an image with half a vote for class 0 shares that text's mass
    soft = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0]])
    assert text_to_image_ce(torch.tensor([[4.0, 0, 0, 0], [4.0, 4.0, 0, 0]]), soft) < text_to_image_ce(
        torch.tensor([[4.0, 0, 0, 0], [-4.0, 4.0, 0, 0]]), soft)
