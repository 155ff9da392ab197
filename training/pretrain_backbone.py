"""Stage 0 of the offline default model: pre-train a compact open_clip backbone on FERPlus.

No pretrained CLIP weights can be fetched offline, so the product pre-trains its own small
CLIP (both towers, from scratch) on FERPlus training faces paired with the descriptions of
their class, then freezes it; stage 1 trains MPA-FER prompts on it (training/train.py), the
same code path that real CLIP weights take.

Objective: each step samples one hard prompt per class (coarse, face-level or one LLM
description) and scores every image against those C texts the way CGLA does at inference,
scale * (cos(global, text) + mean of the top-k patch-to-text cosines); cross-entropy against
the FERPlus vote distribution. Sampling a different prompt each step makes every single
description align with its class's faces, and the local term makes the patch tokens
text-aligned, which is what the demo's heatmaps and description maps read.

    python training/pretrain_backbone.py --data ../shared/data/ferplus --out runs/stage0 \
        --model mpafer-face-vit --epochs 80 --batch-size 256 --device cuda

The output folder is a 'local-dir:' open_clip model (open_clip_config.json + safetensors),
loadable with ``BackboneConfig("local-dir:runs/stage0")``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mpafer.augment import AugmentConfig, augment, to_model_input  # noqa: E402
from mpafer.backbone import build_from_config, save_model_folder  # noqa: E402
from mpafer.cgla import cgla_scores  # noqa: E402
from mpafer.data import load_dataset  # noqa: E402
from mpafer.descriptions import load_bank  # noqa: E402
from mpafer.prompts import encode_image  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="FERPlus pack folder (train_1..3.npz, valid.npz, test.npz)")
    parser.add_argument("--out", required=True, help="output model folder")
    parser.add_argument("--model", default="mpafer-face-vit", help="model config name (mpafer/model_configs)")
    parser.add_argument("--bank", default="ferplus")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=float, default=3)
    parser.add_argument("--topk", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit-per-class", type=int, default=None, help="use at most N training images per class")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N validation images")
    parser.add_argument("--half", action="store_true", help="save the weights as float16 (halves the file)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    return parser.parse_args(argv)


def dataset_mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of a uint8 NHWC set (FERPlus is grey: the three channels agree)."""
    x = images.float().div(255)
    return x.mean(dim=(0, 1, 2)).tolist(), x.std(dim=(0, 1, 2)).tolist()


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, embeddings and the logit scale (as open_clip's trainer)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim < 2 or "embedding" in name or "logit_scale" in name or ".bn" in name or "norm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class PromptSampler:
    """One random hard prompt per class per step, drawn from a seeded generator."""

    def __init__(self, owner: torch.Tensor, num_classes: int, generator: torch.Generator):
        self.members = [torch.nonzero(owner == c).flatten() for c in range(num_classes)]
        self.generator = generator

    def __call__(self) -> torch.Tensor:
        picks = [m[torch.randint(len(m), (1,), generator=self.generator)] for m in self.members]
        return torch.cat(picks)


def class_text(model, tokens: torch.Tensor, owner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of each class's prompt features, normalised: the zero-shot classifier."""
    features = F.normalize(model.encode_text(tokens).float(), dim=-1)
    one_hot = F.one_hot(owner, num_classes).float()
    return F.normalize(one_hot.t() @ features, dim=-1)


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, size: int, mean, std,
             topk: int, device: str, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start:start + batch_size], size, mean, std, device=device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            features = encode_image(model.visual, x)
        scores = cgla_scores(F.normalize(features.pooled.float(), dim=-1),
                             F.normalize(features.patches.float(), dim=-1), text, topk)
        predictions = scores.combined().argmax(-1).cpu()
        correct += int((predictions == labels[start:start + batch_size]).sum())
    model.train()
    return correct / max(1, len(images))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model_cfg = open_clip.get_model_config(args.model)
    if model_cfg is None:
        print(f"unknown model config {args.model!r}", file=sys.stderr)
        return 2
    model = build_from_config(model_cfg).to(device).train()
    size = model.visual.image_size[0]
    tokenizer = open_clip.SimpleTokenizer(context_length=model.context_length)

    bank = load_bank(args.bank)
    prompts = bank.prompts()
    tokens = tokenizer([p.text for p in prompts]).to(device)
    owner = torch.tensor([p.class_index for p in prompts], device=device)
    num_classes = len(bank.classes)

    train = load_dataset("ferplus", args.data, "train", image_size=None, cache_dir=args.cache_dir)
    valid = load_dataset("ferplus", args.data, "valid", image_size=None, cache_dir=args.cache_dir)
    if list(train.classes) != list(bank.classes):
        raise SystemExit(f"bank {args.bank} classes {bank.classes} differ from the dataset's {train.classes}")
    if args.limit_per_class:
        train = train.per_class(args.limit_per_class, seed=args.seed)
    if args.eval_limit:
        valid = valid.subset(np.arange(min(args.eval_limit, len(valid))))
    images = torch.from_numpy(train.images).to(device)
    targets = torch.from_numpy(train.soft_labels).to(device)
    valid_images = torch.from_numpy(valid.images)
    valid_labels = torch.from_numpy(valid.labels)
    mean, std = dataset_mean_std(images[:: max(1, len(images) // 4096)])

    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98))
    batch_size = min(args.batch_size, len(images))
    steps_per_epoch = max(1, len(images) // batch_size)
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, total, warmup))
    generator = torch.Generator().manual_seed(args.seed)
    sampler = PromptSampler(owner.cpu(), num_classes, generator)
    aug = AugmentConfig()
    cuda = device.startswith("cuda")

    def encode_images(x):
        features = encode_image(model.visual, x)
        return features.pooled, features.patches

    if args.compile:
        encode_images = torch.compile(encode_images)

    print(f"stage 0: {args.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{len(images)} training images, {len(prompts)} prompts, {size} px, device {device}")
    best, history = -1.0, []
    started = time.perf_counter()
    with open(out / "pretrain_metrics.csv", "w", newline="") as log:
        writer = csv.writer(log)
        writer.writerow(["epoch", "loss", "train_acc", "valid_acc", "lr", "seconds"])
        for epoch in range(args.epochs):
            order = torch.randperm(len(images), generator=generator).to(device)
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
            # running sums stay on the device: reading them syncs the GPU, so only every 50 steps
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen, tick = 0, time.perf_counter()
            for step in bar:
                index = order[step * batch_size:(step + 1) * batch_size]
                x = augment(images[index], size, mean, std, aug, generator)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
                    pooled, patches = encode_images(x)
                    text = F.normalize(model.encode_text(tokens[sampler().to(device, non_blocking=True)]).float(),
                                       dim=-1)
                scores = cgla_scores(F.normalize(pooled.float(), dim=-1), F.normalize(patches.float(), dim=-1),
                                     text, args.topk)
                logits = model.logit_scale.exp().clamp(max=100) * scores.combined()
                loss = F.cross_entropy(logits, targets[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach() * len(index)
                correct += (logits.argmax(-1) == targets[index].argmax(-1)).sum()
                seen += len(index)
                if step % 50 == 0 or step == steps_per_epoch - 1:
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}",
                                    img_s=f"{seen / (time.perf_counter() - tick):.0f}")
            loss_sum, correct = float(loss_sum), int(correct)
            with torch.no_grad():
                text_eval = class_text(model, tokens, owner, num_classes)
            valid_acc = evaluate(model, valid_images, valid_labels, text_eval, size, mean, std, args.topk, device)
            row = [epoch + 1, loss_sum / seen, correct / seen, valid_acc, scheduler.get_last_lr()[0],
                   time.perf_counter() - started]
            writer.writerow(row)
            log.flush()
            history.append(dict(zip(["epoch", "loss", "train_acc", "valid_acc", "lr", "seconds"], row)))
            print(f"epoch {epoch + 1}: loss {row[1]:.4f} train acc {row[2]:.4f} valid acc {valid_acc:.4f}")
            if valid_acc > best:
                best = valid_acc
                save_model_folder(model, model_cfg, out, preprocess_cfg={"mean": mean, "std": std, "size": size},
                                  dtype=torch.float16 if args.half else None)
    summary = {"model": args.model, "best_valid_acc": best, "epochs": args.epochs, "images": len(images),
               "seconds": time.perf_counter() - started, "device": device, "half": args.half, "seed": args.seed,
               "command": " ".join(sys.argv)}
    (out / "pretrain_summary.json").write_text(json.dumps({**summary, "history": history}, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
