"""The model card writer: a continued stage 0 (second cycle) and a carried first-cycle line, from run files."""
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


def second_cycle(runs: Path) -> None:
    rows = [{"epoch": e, "train_acc": 0.9, "valid_acc": 0.86 + e / 1000, "valid_mean_class_acc": 0.6, "loss": 1.0,
             "images_per_s": 70, "seconds": 330} for e in (1, 2)]
    write_csv(runs / "stage0b" / "pretrain_metrics.csv", rows)
    summary = {"epochs": 2, "images": 25057, "train_seconds": 660, "precision": "fp32", "threads": 2,
               "best": {"epoch": 2, "valid_acc": 0.862}, "history": rows,
               "command": "pretrain_backbone.py --epochs 2 --lr 5e-4 --warmup-epochs 0.5 --init-from x"}
    (runs / "stage0b" / "pretrain_summary.json").write_text(json.dumps(summary))
    write_csv(runs / "stage1" / "metrics.csv", [{"epoch": 1, "train_accuracy": 0.88, "val_accuracy": 0.867,
                                                 "val_mean_class_accuracy": 0.66, "epoch_seconds": 360}])


def test_a_continued_stage0_carries_its_first_cycle_and_describes_the_second(tmp_path):
    writer = load_script(ROOT / "training" / "write_model_card.py")
    bundle, runs = fake_bundle(tmp_path / "bundle"), tmp_path / "runs"
    second_cycle(runs)
    old_card = tmp_path / "old.md"
    old_card.write_text("# old\n\n* **Stage 0** (24 epochs, 82.9 min): AdamW, one-cycle warmup. Best 86.7 %.\n"
                        "* **Stage 1** (3 epochs, 6.7 min): ...\n")
    assert writer.main(["--bundle", str(bundle), "--runs", str(runs), "--first-cycle-from", str(old_card)]) == 0
    card = (bundle / "README.md").read_text()
    assert "* **Stage 0, first cycle** (24 epochs, 82.9 min): AdamW, one-cycle warmup. Best 86.7 %." in card
    assert "carried from the previous bundle's card" in card
    assert "* **Stage 0, second cycle** (2 epochs, 11.0 min, fp32)" in card
    assert "peak learning rate 0.0005" in card and "warmup (0.5 epochs)" in card and "86.2 %" in card
    assert "anchored to the hard prompts' ensemble" in card
    assert "82.9" in card and "99.9 minutes of training" in card  # 82.9 + 11.0 + 6.0
    assert (bundle / "curves.png").stat().st_size > 1000


def test_a_card_written_inside_its_own_bundle_can_carry_its_old_self(tmp_path):
    """write the card in place: the old card is read before it is replaced."""
    writer = load_script(ROOT / "training" / "write_model_card.py")
    bundle, runs = fake_bundle(tmp_path / "bundle"), tmp_path / "runs"
    second_cycle(runs)
    (bundle / "README.md").write_text("* **Stage 0** (10 epochs, 30.0 min): first.\n")
    assert writer.main(["--bundle", str(bundle), "--runs", str(runs), "--first-cycle-from",
                        str(bundle / "README.md")]) == 0
    assert "* **Stage 0, first cycle** (10 epochs, 30.0 min): first." in (bundle / "README.md").read_text()
