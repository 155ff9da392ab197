"""The model card writer: a new stage 1 on the previous bundle's backbone carries stage 0's line from its card."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from training_hooks import load_script

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def fake_bundle(folder: Path) -> Path:
    (folder / "backbone").mkdir(parents=True)
    config = {"embed_dim": 384, "vision_cfg": {"image_size": 48, "layers": 3, "width": 128, "patch_size": 4},
              "mpafer_stem": {"type": "vgg", "widths": [32, 64, 128]}, "mpafer_text_sha256": "abc"}
    (folder / "backbone" / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    meta = {"num_learnable": 5760, "config": {"loss": {"beta": 0.1, "gamma": 0.1}, "topk": 16, "text_anchor": True,
                                               "input": {"grey": True, "margin": 0.09, "shift_y": -0.1,
                                                         "tta_flip": True}}}
    (folder / "mpafer.json").write_text(json.dumps(meta))
    return folder


def stage1_run(runs: Path) -> None:
    write_csv(runs / "stage1" / "metrics.csv", [{"epoch": 1, "train_accuracy": 0.88, "val_accuracy": 0.867,
                                                 "val_mean_class_accuracy": 0.66, "epoch_seconds": 360}])


def test_a_new_stage1_on_the_previous_backbone_carries_stage0_from_the_previous_card(tmp_path):
    writer = load_script(ROOT / "training" / "write_model_card.py")
    bundle, runs = fake_bundle(tmp_path / "bundle"), tmp_path / "runs"
    stage1_run(runs)
    old_card = tmp_path / "old.md"
    old_card.write_text("# old\n\n* **Data**: FERPlus train, the 25057 majority-labelled faces; ...\n"
                        "* **Stage 0** (24 epochs, 82.9 min): AdamW, one-cycle warmup. Best 86.7 %.\n"
                        "* **Stage 1** (3 epochs, 6.7 min): ...\n")
    assert writer.main(["--bundle", str(bundle), "--runs", str(runs), "--carry-stage0-from", str(old_card)]) == 0
    card = (bundle / "README.md").read_text()
    assert "* **Stage 0** (24 epochs, 82.9 min): AdamW, one-cycle warmup. Best 86.7 %." in card
    assert "carried from the previous bundle's card" in card
    assert "the 25057 majority-labelled faces" in card
    assert "anchored to the hard prompts' ensemble" in card
    assert "generic face-sentence direction" not in card  # the option is off in this bundle
    assert "88.9 minutes of training" in card  # 82.9 carried + 6.0 of stage 1
    assert "VGG-style stem (double 3 x 3 convs, widths [32, 64, 128]" in card
    assert (bundle / "curves.png").stat().st_size > 1000


def test_a_card_written_inside_its_own_bundle_can_carry_its_old_self(tmp_path):
    """write the card in place: the old card is read before it is replaced, and carrying twice marks it once."""
    writer = load_script(ROOT / "training" / "write_model_card.py")
    bundle, runs = fake_bundle(tmp_path / "bundle"), tmp_path / "runs"
    stage1_run(runs)
    (bundle / "README.md").write_text("* **Stage 0** (10 epochs, 30.0 min): first.\n")
    for _ in range(2):
        assert writer.main(["--bundle", str(bundle), "--runs", str(runs), "--carry-stage0-from",
                            str(bundle / "README.md")]) == 0
    card = (bundle / "README.md").read_text()
    assert "* **Stage 0** (10 epochs, 30.0 min): first. (carried" in card
    assert card.count("carried from the previous bundle's card") == 1


def test_the_card_says_when_the_generic_direction_is_projected_out(tmp_path):
    writer = load_script(ROOT / "training" / "write_model_card.py")
    bundle, runs = fake_bundle(tmp_path / "bundle"), tmp_path / "runs"
    meta = json.loads((bundle / "mpafer.json").read_text())
    meta["config"]["generic_direction_out"] = True
    (bundle / "mpafer.json").write_text(json.dumps(meta))
    stage1_run(runs)
    (tmp_path / "old.md").write_text("* **Stage 0** (24 epochs, 82.9 min): first.\n")
    assert writer.main(["--bundle", str(bundle), "--runs", str(runs), "--carry-stage0-from",
                        str(tmp_path / "old.md")]) == 0
    assert "the generic face-sentence direction (the hard prompts' mean) is projected out" in (
        bundle / "README.md").read_text()


def test_a_stage0_with_rotation_and_a_narrow_mlp_says_so(tmp_path):
    writer = load_script(ROOT / "training" / "write_model_card.py")
    bundle, runs = fake_bundle(tmp_path / "bundle"), tmp_path / "runs"
    config_path = bundle / "backbone" / "open_clip_config.json"
    config = json.loads(config_path.read_text())
    config["model_cfg"]["vision_cfg"]["mlp_ratio"] = 2
    config_path.write_text(json.dumps(config))
    stage1_run(runs)
    summary = {"epochs": 30, "train_seconds": 3600, "rotate": 10.0, "ema_decay": 0.998, "images": 25057, "threads": 2,
               "best": {"valid_acc": 0.87, "epoch": 30}, "history": [{"images_per_s": 180}]}
    (runs / "stage0").mkdir(parents=True)
    (runs / "stage0" / "pretrain_summary.json").write_text(json.dumps(summary))
    assert writer.main(["--bundle", str(bundle), "--runs", str(runs)]) == 0
    card = (bundle / "README.md").read_text()
    assert "random resized crop / rotation up to 10 degrees / flip / erasing" in card
    assert "width 128 (MLP 2x wide)" in card
    assert "* **Stage 0** (30 epochs, 60.0 min)" in card
    assert "exponential moving average of the trained ones (decay 0.998" in card


def test_curves_draw_the_live_weights_beside_a_weight_average(tmp_path, monkeypatch):
    writer = load_script(ROOT / "training" / "write_model_card.py")
    rows = [{"epoch": e, "train_acc": 0.5, "valid_acc": 0.6, "valid_mean_class_acc": 0.4, "loss": 1.0,
             "live_valid_acc": 0.62 if e > 1 else ""} for e in (1, 2, 3)]
    labels = []
    original = writer.plt.Axes.plot

    def plot(ax, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return original(ax, *args, **kwargs)

    monkeypatch.setattr(writer.plt.Axes, "plot", plot)
    writer.plot_curves(rows, [], tmp_path / "curves.png")
    assert "validation, live weights" in labels and "validation (flip TTA, weight average)" in labels
    labels.clear()
    writer.plot_curves([{k: v for k, v in r.items() if k != "live_valid_acc"} for r in rows], [],
                       tmp_path / "plain.png")
    assert "validation, live weights" not in labels and "validation (flip TTA)" in labels
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_the_card_counts_the_convolutions_of_a_deeper_stem(tmp_path):
    writer = load_script(ROOT / "training" / "write_model_card.py")
    bundle, runs = fake_bundle(tmp_path / "bundle"), tmp_path / "runs"
    config_path = bundle / "backbone" / "open_clip_config.json"
    config = json.loads(config_path.read_text())
    config["model_cfg"]["mpafer_stem"]["depths"] = [2, 2, 4]
    config["model_cfg"]["vision_cfg"]["layers"] = 2
    config_path.write_text(json.dumps(config))
    stage1_run(runs)
    (tmp_path / "old.md").write_text("* **Stage 0** (24 epochs, 60.0 min): first.\n")
    assert writer.main(["--bundle", str(bundle), "--runs", str(runs), "--carry-stage0-from",
                        str(tmp_path / "old.md")]) == 0
    card = (bundle / "README.md").read_text()
    assert "VGG-style stem (3 x 3 convs, 2/2/4 per stage, widths [32, 64, 128]" in card
    assert "an open_clip ViT of 2 blocks" in card
