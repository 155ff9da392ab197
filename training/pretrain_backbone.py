"""Stage 0 of the offline default model: pre-train a compact open_clip image tower on FERPlus
against a frozen, pretrained text tower.

No pretrained CLIP weights can be fetched offline, so the product trains its own image tower
(from scratch, on this CPU) to meet a real English sentence encoder, as LiT does with the roles
swapped: all-MiniLM-L6-v2 (``mpafer.text_tower``) stays frozen, and only a linear text
projection learns beside the image tower. The projection starts as the identity and an
orthogonality penalty keeps it close to a rotation, so MiniLM's neighbourhoods survive: a
paraphrase the bank never used ("a big grin") still lands next to "smiling".

Objective: each step samples one hard prompt per class (coarse, face-level or one LLM
description) and scores every image against those C texts the way CGLA does at inference,
scale * (cos(global, text) + mean of the top-k patch-to-text cosines); cross-entropy against
the FERPlus vote distribution. Text features of the frozen tower are computed once.

    python training/pretrain_backbone.py --data ../shared/data/ferplus --out runs/stage0

Re-running the same command continues an interrupted run from its last finished epoch (``last/``);
the best epoch on the validation split is the model folder itself (``--out``), a 'local-dir:'
open_clip model loadable with ``BackboneConfig("local-dir:runs/stage0")``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mpafer.augment import AugmentConfig, apply_augment, sample_augment  # noqa: E402
from mpafer.transforms import to_model_input  # noqa: E402
from mpafer.backbone import (HF_TEXT_PREFIX, BackboneConfig, build_from_config, save_model_folder,  # noqa: E402
                             tokenizer_for)
from mpafer.cgla import cgla_scores  # noqa: E402
from mpafer.data import load_dataset  # noqa: E402
from mpafer.descriptions import load_bank  # noqa: E402
from mpafer.prompts import class_means, visual_features  # noqa: E402
from train import (atomic_folder, epoch_permutation, flatten_optimizer, lr_factor, restore_rng,  # noqa: E402
                   rng_state, seeded_generator, unflatten_optimizer)

STATE_FILE = "stage0_state.json"
WEIGHTS_FILE = "stage0_weights.safetensors"
FIELDS = ("epoch", "lr", "loss", "ce", "ortho", "train_acc", "valid_acc", "valid_mean_class_acc",
          "logit_scale", "images_per_s", "seconds")
# what a resumed run must share with the run it continues (the rest may change: --no-progress ...)
HASHED = ("model", "bank", "text_pool", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "topk",
          "text_lr", "ortho_weight", "precision", "seed", "limit_per_class", "class_mean_weight")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="FERPlus pack folder (train_1..3.npz, valid.npz, test.npz)")
    parser.add_argument("--out", required=True, help="output model folder (best epoch) and run state")
    parser.add_argument("--model", default="mpafer-face-minilm", help="model config name (mpafer/model_configs)")
    parser.add_argument("--bank", default="ferplus")
    parser.add_argument("--text-pool", choices=("bank", "bank+descriptions"), default="bank+descriptions",
                        help="training texts: the bank's prompts, or also each description without its class "
                             "name ('a photo of a face with {description}.'), so descriptions align by content")
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate of the image tower")
    parser.add_argument("--text-lr", type=float, default=2e-4, help="learning rate of the text projection")
    parser.add_argument("--ortho-weight", type=float, default=1.0,
                        help="weight of ||P^T P - I||^2 on the text projection P (keeps MiniLM's geometry)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--topk", type=int, default=16)
    parser.add_argument("--class-mean-weight", type=float, default=0.0,
                        help="weight of a second cross-entropy against each class's mean bank-prompt feature: "
                             "the zero-shot classifier evaluation and stage 1 start from")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast (CPUs with AVX-512-BF16 or AMX, and GPUs) or plain fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--limit-per-class", type=int, default=None, help="use at most N training images per class")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N validation images")
    parser.add_argument("--half", action="store_true", help="save the model folder as float16 (halves the file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    return parser.parse_args(argv)


def run_hash(args: argparse.Namespace) -> str:
    view = {k: getattr(args, k) for k in HASHED}
    return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()[:16]


def dataset_mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of a uint8 NHWC set (FERPlus is grey: the three channels agree)."""
    x = images.float().div(255)
    return x.mean(dim=(0, 1, 2)).tolist(), x.std(dim=(0, 1, 2)).tolist()


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def param_groups(model: torch.nn.Module, args: argparse.Namespace) -> list[dict]:
    """No weight decay on norms, biases, embeddings and the logit scale (as open_clip's trainer);
    the text projection learns slowly and without decay (the orthogonality penalty holds it)."""
    decay, no_decay, text = [], [], []
    for name, param in trainable(model).items():
        if name.startswith("text."):
            text.append(param)
        elif param.ndim < 2 or "embedding" in name or "logit_scale" in name or "class_embedding" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": args.weight_decay, "lr": args.lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": args.lr},
            {"params": text, "weight_decay": 0.0, "lr": args.text_lr}]


def text_projection(model) -> torch.nn.Module:
    proj = getattr(model.text, "proj", None)
    if not isinstance(proj, torch.nn.Linear):
        raise SystemExit("stage 0 needs a Hugging Face text tower with hf_proj_type 'linear'")
    return proj


def orthogonality(weight: torch.Tensor) -> torch.Tensor:
    """||W W^T - I||_F^2 / D: zero exactly when the projection is a rotation."""
    gram = weight.float() @ weight.float().t()
    eye = torch.eye(gram.shape[0], device=gram.device)
    return (gram - eye).square().sum() / gram.shape[0]


@torch.no_grad()
def frozen_text_features(model, tokenizer, texts: list[str], device: str) -> torch.Tensor:
    """Pooled outputs of the frozen text transformer, before the projection: (T, width)."""
    tower = model.text
    tokens = tokenizer(texts).to(device)
    mask = (tokens != tower.config.pad_token_id).long()
    out = tower.transformer(input_ids=tokens, attention_mask=mask)
    return tower.pooler(out, mask).float()


DESCRIPTION_ONLY = "a photo of a face with {description}."


def training_texts(prompts, pool: str) -> tuple[list[str], list[int]]:
    """The texts stage 0 samples from and the class each stands for; the bank's prompts come first."""
    texts = [p.text for p in prompts]
    owners = [p.class_index for p in prompts]
    if pool == "bank+descriptions":
        for p in prompts:
            if p.description:
                texts.append(DESCRIPTION_ONLY.format(description=p.description))
                owners.append(p.class_index)
    return texts, owners


class PromptSampler:
    """One random hard prompt per class per step, drawn from a generator keyed by (seed, epoch, step)."""

    def __init__(self, owner: torch.Tensor, num_classes: int):
        self.members = [torch.nonzero(owner == c).flatten() for c in range(num_classes)]

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        return torch.cat([m[torch.randint(len(m), (1,), generator=generator)] for m in self.members])


def attention_backend(device: str):
    """On a CPU the plain-math attention kernel trains faster than the flash kernel at ~150 tokens
    (its bf16 backward dominated the step when profiled here); GPUs keep torch's choice."""
    if str(device).startswith("cpu"):
        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


def image_features(model, images: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised global and patch features of the image tower (bf16 autocast when asked)."""
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=bf16), \
            attention_backend(images.device.type):
        features = visual_features(model.visual, images)
    return F.normalize(features.pooled.float(), dim=-1), F.normalize(features.patches.float(), dim=-1)


def scaled_scores(model, features: tuple[torch.Tensor, torch.Tensor], text: torch.Tensor, topk: int):
    return model.logit_scale.exp().clamp(max=100) * cgla_scores(*features, text, topk).combined()


def cgla_logits(model, images: torch.Tensor, text: torch.Tensor, topk: int, bf16: bool):
    return scaled_scores(model, image_features(model, images, bf16), text, topk)


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, size: int, mean, std,
             topk: int, bf16: bool, num_classes: int, batch_size: int = 512) -> tuple[float, float]:
    """Accuracy and mean class accuracy with the class-mean prompt features (flip TTA)."""
    model.eval()
    predictions = []
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start:start + batch_size], size, mean, std)
        logits = cgla_logits(model, x, text, topk, bf16) + cgla_logits(model, x.flip(-1), text, topk, bf16)
        predictions.append(logits.argmax(-1).cpu())
    model.train()
    model.text.eval()
    predicted = torch.cat(predictions)
    correct = predicted == labels
    recalls = [float(correct[labels == c].float().mean()) for c in range(num_classes) if (labels == c).any()]
    return float(correct.float().mean()), float(np.mean(recalls))


def save_state(out: Path, model, optimizer, scheduler, info: dict) -> None:
    """last/: the trainable weights, the optimiser and everything needed to continue after info['epoch']."""
    with atomic_folder(out / "last") as folder:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in trainable(model).items()}
        buffers = {f"buffer.{k}": v.detach().cpu().contiguous() for k, v in model.named_buffers()
                   if not k.startswith(HF_TEXT_PREFIX)}
        opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
        save_file({**tensors, **buffers, **opt_tensors}, str(folder / WEIGHTS_FILE))
        state = {**info, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_state()}
        (folder / STATE_FILE).write_text(json.dumps(state, indent=1))


def load_state(out: Path) -> tuple[Path, dict] | None:
    for folder in (out / "last", out / "last.old"):
        if (folder / STATE_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
            return folder, json.loads((folder / STATE_FILE).read_text())
    return None


def restore(folder: Path, state: dict, model, optimizer, scheduler) -> None:
    tensors = load_file(str(folder / WEIGHTS_FILE))
    params, buffers = trainable(model), dict(model.named_buffers())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("model."):
                params[key[6:]].copy_(value)
            elif key.startswith("buffer."):
                buffers[key[7:]].copy_(value)
    optimizer.load_state_dict(unflatten_optimizer(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device, bf16 = args.device, args.precision == "bf16"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digest = run_hash(args)

    model_cfg = open_clip.get_model_config(args.model)
    if model_cfg is None:
        print(f"unknown model config {args.model!r}", file=sys.stderr)
        return 2
    model = build_from_config(model_cfg).to(device)
    model.text.requires_grad_(False)
    proj = text_projection(model)
    with torch.no_grad():  # start as the identity: the joint space is MiniLM's own
        proj.weight.copy_(torch.eye(*proj.weight.shape))
    proj.weight.requires_grad_(True)
    model.train()
    model.text.eval()  # frozen tower: no dropout
    size = model.visual.image_size[0]
    tokenizer = tokenizer_for(model, BackboneConfig(args.model))  # the one the frozen backbone will use

    bank = load_bank(args.bank)
    prompts = bank.prompts()
    texts, owners = training_texts(prompts, args.text_pool)
    pooled_text = frozen_text_features(model, tokenizer, texts, device)
    owner = torch.tensor(owners, device=device)
    num_bank = len(prompts)  # the first texts are the bank's: the evaluation classifier uses those
    num_classes = len(bank.classes)

    train = load_dataset("ferplus", args.data, "train", image_size=None, cache_dir=args.cache_dir)
    valid = load_dataset("ferplus", args.data, "valid", image_size=None, cache_dir=args.cache_dir)
    if list(train.classes) != list(bank.classes):
        raise SystemExit(f"bank {args.bank} classes {bank.classes} differ from the dataset's {train.classes}")
    if args.limit_per_class:
        train = train.per_class(args.limit_per_class, seed=args.seed)
    if args.eval_limit:
        valid = valid.subset(np.arange(min(args.eval_limit, len(valid))))
    images = torch.from_numpy(np.ascontiguousarray(train.images)).to(device)
    targets = torch.from_numpy(train.soft_labels).to(device)
    valid_images = torch.from_numpy(np.ascontiguousarray(valid.images))
    valid_labels = torch.from_numpy(valid.labels)
    mean, std = dataset_mean_std(images[:: max(1, len(images) // 4096)])

    optimizer = torch.optim.AdamW(param_groups(model, args), betas=(0.9, 0.98), fused=True)
    batch_size = min(args.batch_size, len(images))
    steps_per_epoch = max(1, len(images) // batch_size)
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, 0.01, 0.0))
    sampler = PromptSampler(owner.cpu(), num_classes)
    aug = AugmentConfig()

    start_epoch, best, rows = 0, {"valid_acc": -1.0, "epoch": 0}, []
    previous = load_state(out)
    if previous is not None:
        folder, state = previous
        if state["hash"] != digest:
            raise SystemExit(f"{out} holds a stage-0 run with other settings ({state['args']}); "
                             f"use another --out or delete {out / 'last'}")
        restore(folder, state, model, optimizer, scheduler)
        start_epoch, best, rows = state["epoch"], state["best"], state["rows"]
        print(f"resuming stage 0 after epoch {start_epoch}/{args.epochs} (best valid {best['valid_acc']:.4f})")
    if start_epoch >= args.epochs:
        print("stage 0 already finished")
        return 0

    print(f"stage 0: {args.model}, {sum(p.numel() for p in trainable(model).values()) / 1e6:.2f} M trainable "
          f"parameters, {len(images)} training images, {len(texts)} texts, {size} px, device {device}, "
          f"{args.precision}, {torch.get_num_threads()} threads")
    writer = None
    try:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"), purge_step=start_epoch + 1)
    except ImportError:
        pass
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch, disable=args.no_progress, unit="step",
               desc="stage 0", dynamic_ncols=True)
    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        order = epoch_permutation(len(images), args.seed, epoch).to(device)
        sums = {"loss": 0.0, "ce": 0.0, "ortho": 0.0, "correct": 0, "seen": 0}
        tick = time.perf_counter()
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            generator = seeded_generator(args.seed, 1, epoch, step)
            params = sample_augment(len(index), aug, generator)
            x = apply_augment(images[index], params, size, mean, std)
            text = F.normalize(proj(pooled_text[sampler(generator).to(device)]), dim=-1)
            features = image_features(model, x, bf16)
            logits = scaled_scores(model, features, text, args.topk)
            ce = F.cross_entropy(logits, targets[index])
            if args.class_mean_weight:
                # the sampled texts keep descriptions aligned by content; the class means are what is evaluated
                text_mean = class_means(proj(pooled_text[:num_bank]), owner[:num_bank], num_classes)
                ce = ce + args.class_mean_weight * F.cross_entropy(
                    scaled_scores(model, features, text_mean, args.topk), targets[index])
            ortho = orthogonality(proj.weight)
            loss = ce + args.ortho_weight * ortho
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            n = len(index)
            sums["loss"] += float(loss.detach()) * n
            sums["ce"] += float(ce.detach()) * n
            sums["ortho"] += float(ortho.detach()) * n
            sums["correct"] += int((logits.argmax(-1) == targets[index].argmax(-1)).sum())
            sums["seen"] += n
            bar.update(1)
            if step % 10 == 0 or step == steps_per_epoch - 1:
                bar.set_postfix(epoch=f"{epoch + 1}/{args.epochs}", loss=f"{sums['loss'] / sums['seen']:.3f}",
                                acc=f"{sums['correct'] / sums['seen']:.3f}",
                                img_s=f"{sums['seen'] / (time.perf_counter() - tick):.0f}")
        seconds = time.perf_counter() - tick
        with torch.no_grad():
            text_eval = class_means(proj(pooled_text[:num_bank]), owner[:num_bank], num_classes)
        valid_acc, valid_mca = evaluate(model, valid_images, valid_labels, text_eval, size, mean, std, args.topk,
                                        bf16, num_classes)
        seen = sums["seen"]
        row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "loss": sums["loss"] / seen,
               "ce": sums["ce"] / seen, "ortho": sums["ortho"] / seen, "train_acc": sums["correct"] / seen,
               "valid_acc": valid_acc, "valid_mean_class_acc": valid_mca,
               "logit_scale": float(model.logit_scale.detach().exp().clamp(max=100)),
               "images_per_s": seen / seconds, "seconds": seconds}
        rows.append(row)
        tqdm.write(f"epoch {epoch + 1}: loss {row['loss']:.4f} train acc {row['train_acc']:.4f} "
                   f"valid acc {valid_acc:.4f} (mean class {valid_mca:.4f}) {row['images_per_s']:.0f} img/s")
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(f"stage0/{key}", value, epoch + 1)
            writer.flush()
        if valid_acc > best["valid_acc"]:
            best = {"valid_acc": valid_acc, "valid_mean_class_acc": valid_mca, "epoch": epoch + 1}
            save_model_folder(model, model_cfg, out, preprocess_cfg={"mean": mean, "std": std, "size": size},
                              dtype=torch.float16 if args.half else None)
        write_rows(out / "pretrain_metrics.csv", rows)
        save_state(out, model, optimizer, scheduler,
                   {"epoch": epoch + 1, "best": best, "rows": rows, "hash": digest, "args": vars(args)})
    bar.close()
    if writer is not None:
        writer.close()
    summary = {"model": args.model, "best": best, "epochs": args.epochs, "images": len(images),
               "train_seconds": sum(r["seconds"] for r in rows), "device": device, "precision": args.precision,
               "threads": torch.get_num_threads(), "half": args.half, "seed": args.seed,
               "command": " ".join(sys.argv)}
    (out / "pretrain_summary.json").write_text(json.dumps({**summary, "history": rows}, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
