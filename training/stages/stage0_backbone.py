"""Stage 0 as an engine task: a compact open_clip image tower against a frozen, pretrained text tower
(``training/pretrain_backbone.py``; the objective is described there).

Each step samples one hard prompt per class (from the same keyed generator as the augmentation)
and scores every image against those C texts the way CGLA does; cross-entropy against the vote
distribution, plus, with ``class_mean_weight``, against each class's mean bank-prompt feature
(the classifier validation uses), plus the orthogonality penalty on the text projection. With
``ema_decay``, an exponential moving average of the trained weights is what validation scores and
the best epoch saves (the live weights are validated too, for the record).
"""
from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mpafer.augment import AugmentConfig
from mpafer.backbone import (HF_TEXT_PREFIX, BackboneConfig, build_from_config, load_backbone, save_model_folder,
                             tokenizer_for)
from mpafer.cgla import cgla_scores
from mpafer.data import load_dataset
from mpafer.description_bank import DESCRIPTION_TEMPLATE
from mpafer.descriptions import load_bank
from mpafer.evaluate import batched_scores, classification_metrics
from mpafer.precision import autocast, effective_precision
from mpafer.prompts import class_means, visual_features

from training.engine.config import ConfigError
from training.engine.data_feed import hold
from training.engine.distributed import Dist
from training.engine.ema import WeightAverage
from training.engine.loop import Batch, Task

WEIGHTS_FILE = "stage0_weights.safetensors"
FIELDS = ("epoch", "lr", "loss", "ce", "text_image", "ortho", "train_acc", "valid_acc", "valid_mean_class_acc",
          "live_valid_acc", "logit_scale", "images_per_s", "seconds")


def dataset_mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of a uint8 NHWC set (FERPlus is grey: the three channels agree)."""
    x = images.float().div(255)
    return x.mean(dim=(0, 1, 2)).tolist(), x.std(dim=(0, 1, 2)).tolist()


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def param_groups(model: torch.nn.Module, settings: dict) -> list[dict]:
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
    return [{"params": decay, "weight_decay": settings["weight_decay"], "lr": settings["lr"]},
            {"params": no_decay, "weight_decay": 0.0, "lr": settings["lr"]},
            {"params": text, "weight_decay": 0.0, "lr": settings["text_lr"]}]


def text_projection(model) -> torch.nn.Linear:
    proj = getattr(model.text, "proj", None)
    if not isinstance(proj, torch.nn.Linear):
        raise ConfigError("stage 0 needs a Hugging Face text tower with hf_proj_type 'linear'")
    return proj


def orthogonality(weight: torch.Tensor) -> torch.Tensor:
    """||W W^T - I||_F^2 / D: zero exactly when the projection is a rotation."""
    gram = weight.float() @ weight.float().t()
    eye = torch.eye(gram.shape[0], device=gram.device)
    return (gram - eye).square().sum() / gram.shape[0]


@torch.no_grad()
def frozen_text_features(model, tokenizer, texts: list[str], device) -> torch.Tensor:
    """Pooled outputs of the frozen text transformer, before the projection: (T, width)."""
    tower = model.text
    tokens = tokenizer(texts).to(device)
    mask = (tokens != tower.config.pad_token_id).long()
    out = tower.transformer(input_ids=tokens, attention_mask=mask)
    return tower.pooler(out, mask).float()


def training_texts(prompts, pool: str) -> tuple[list[str], list[int]]:
    """The texts stage 0 samples from and the class each stands for; the bank's prompts come first."""
    texts = [p.text for p in prompts]
    owners = [p.class_index for p in prompts]
    if pool == "bank+descriptions":
        for p in prompts:
            if p.description:
                texts.append(DESCRIPTION_TEMPLATE.format(description=p.description))
                owners.append(p.class_index)
    return texts, owners


class PromptSampler:
    """One random hard prompt per class per step, drawn from a generator keyed by (seed, epoch, step)."""

    def __init__(self, owner: torch.Tensor, num_classes: int):
        self.members = [torch.nonzero(owner == c).flatten() for c in range(num_classes)]

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        return torch.cat([m[torch.randint(len(m), (1,), generator=generator)] for m in self.members])


def image_features(model, images: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised global and patch features of the image tower (autocast only around the tower)."""
    with autocast(images.device, precision):
        features = visual_features(model.visual, images)
    return F.normalize(features.pooled.float(), dim=-1), F.normalize(features.patches.float(), dim=-1)


def logit_scale(model) -> torch.Tensor:
    return model.logit_scale.exp().clamp(max=100)


def scaled_scores(model, features: tuple[torch.Tensor, torch.Tensor], text: torch.Tensor, topk: int):
    return logit_scale(model) * cgla_scores(*features, text, topk).combined()


def text_to_image_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CLIP's second direction: each class text picks its class's images out of the batch.

    Image-to-text cross-entropy is blind to a per-image offset (adding a constant to all of one
    image's scores changes nothing), so the faces of one class can sit nearer every face sentence
    and win any unseen text by mean cosine (the paraphrase probe). Here, per class present in the
    batch, a softmax over the images of its scores (B, C), against that class's vote shares
    normalised over the batch."""
    mass = targets.sum(0)
    present = mass > 0
    shares = targets[:, present] / mass[present]
    return -(shares * logits[:, present].float().log_softmax(0)).sum(0).mean()


def stage0_tag(key: str) -> str | None:
    return None if key == "epoch" else f"stage0/{key}"


class BackboneTask(Task):
    name = "stage 0"
    loss_terms = ("loss", "ce", "text_image", "ortho")
    best_keys = ("valid_acc", "valid_mean_class_acc")
    metrics_file = "pretrain_metrics.csv"
    metric_fields = FIELDS
    tag = staticmethod(stage0_tag)

    def __init__(self, settings: dict, ctx: Dist, resume_from: Path | None):
        self.s, self.ctx, self.out = settings, ctx, Path(settings["out"])
        # what "bf16" means on this device (float32 where bf16 would be emulated); settings keep the request
        self.precision = effective_precision(ctx.device, settings["precision"])
        device = ctx.device
        torch.manual_seed(settings["seed"])
        self.model_cfg = open_clip.get_model_config(settings["model"])
        if self.model_cfg is None:
            raise ConfigError(f"unknown model config {settings['model']!r}")
        self.model = model = build_from_config(self.model_cfg).to(device)
        model.text.requires_grad_(False)
        self.proj = proj = text_projection(model)
        with torch.no_grad():  # start as the identity: the joint space is MiniLM's own
            proj.weight.copy_(torch.eye(*proj.weight.shape))
        proj.weight.requires_grad_(True)
        self.init_fingerprint = self.init_from(settings["init_from"]) if settings.get("init_from") else None
        self.size = model.visual.image_size[0]
        tokenizer = tokenizer_for(model, BackboneConfig(settings["model"]))  # the one the frozen backbone will use

        bank = load_bank(settings["bank"])
        prompts = bank.prompts()
        self.texts, owners = training_texts(prompts, settings["text_pool"])
        self.pooled_text = frozen_text_features(model, tokenizer, self.texts, device)
        self.owner = torch.tensor(owners, device=device)
        self.num_bank = len(prompts)  # the first texts are the bank's: the validation classifier uses those
        self.num_classes = len(bank.classes)
        self.sampler = PromptSampler(self.owner.cpu(), self.num_classes)

        progress = not settings["no_progress"]
        train = load_dataset("ferplus", settings["data"], "train", image_size=None, cache_dir=settings["cache_dir"],
                             progress=progress)
        valid = load_dataset("ferplus", settings["data"], "valid", image_size=None, cache_dir=settings["cache_dir"],
                             progress=progress)
        if list(train.classes) != list(bank.classes):
            raise ConfigError(f"bank {settings['bank']} classes {bank.classes} differ from the dataset's "
                              f"{train.classes}")
        if settings["limit_per_class"]:
            train = train.per_class(settings["limit_per_class"], seed=settings["seed"])
        if settings["eval_limit"]:
            valid = valid.subset(np.arange(min(settings["eval_limit"], len(valid))))
        self.data = hold(train, device, soft=True)
        self.valid = hold(valid, device, soft=False)
        images = self.data.images
        self.mean, self.std = dataset_mean_std(images[:: max(1, len(images) // 4096)])
        self.input_spec = (self.size, self.mean, self.std)
        self.augment = AugmentConfig(rotate=settings.get("rotate", 0.0))
        # the average starts at the initial (or --init-from) weights; a resumed run restores it below
        self.ema = WeightAverage(self.saved_tensors(), settings["ema_decay"]) if settings.get("ema_decay") else None
        if resume_from is not None:
            self.restore(resume_from)
        self.train_mode()

    def init_from(self, folder: str) -> str:
        """Copy a finished stage-0 folder's weights (image tower, text projection, logit scale) into the
        model; the frozen text tower must be the same one. Returns the folder's weight fingerprint."""
        path = Path(folder).expanduser()
        if not (path / "open_clip_config.json").is_file():
            raise ConfigError(f"--init-from {path}: not a stage-0 model folder (no open_clip_config.json)")
        saved_cfg = json.loads((path / "open_clip_config.json").read_text()).get("model_cfg")
        if saved_cfg != self.model_cfg:
            raise ConfigError(f"--init-from {path} holds another architecture than --model {self.s['model']}: "
                              f"start from a folder trained with the same model config")
        start = load_backbone(BackboneConfig(f"local-dir:{path}"))  # its text tower: verified, identical files
        self.model.load_state_dict(start.model.state_dict())  # copies in place: requires_grad flags stay
        return start.fingerprint

    # ---- saved state -------------------------------------------------------------------
    def saved_tensors(self) -> dict[str, torch.Tensor]:
        """The trainable weights and the buffers that training changes (not the frozen text tower's)."""
        tensors = {f"model.{k}": v for k, v in self.parameters().items()}
        tensors.update({f"buffer.{k}": v for k, v in self.model.named_buffers() if not k.startswith(HF_TEXT_PREFIX)})
        return tensors

    def save_weights(self, folder: Path, epoch: int) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.saved_tensors().items()}
        if self.ema is not None:
            tensors.update(self.ema.state())
        save_file(tensors, str(folder / WEIGHTS_FILE))

    def restore(self, folder: Path) -> None:
        saved, live = load_file(str(folder / WEIGHTS_FILE)), self.saved_tensors()
        with torch.no_grad():
            for key, value in saved.items():
                if not key.startswith("ema."):
                    live[key].copy_(value)
        if self.ema is not None:
            self.ema.load_state(saved)

    def averaged(self):
        """A block in which the model holds the weights that are validated and saved as best."""
        return self.ema.swapped_in() if self.ema is not None else nullcontext()

    def save_best(self, epoch: int, row: dict) -> None:
        with self.averaged():
            save_model_folder(self.model, self.model_cfg, self.out,
                              preprocess_cfg={"mean": self.mean, "std": self.std, "size": self.size},
                              dtype=torch.float16 if self.s["half"] else None)

    # ---- the loop's side ---------------------------------------------------------------
    def parameters(self) -> dict[str, torch.nn.Parameter]:
        return trainable(self.model)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(param_groups(self.model, self.s), betas=(0.9, 0.98), fused=True)

    def train_mode(self) -> None:
        self.model.train()
        self.model.text.eval()  # frozen tower: no dropout

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update()

    def loss(self, batch: Batch):
        s, targets = self.s, self.data.targets[batch.index]
        text = F.normalize(self.proj(self.pooled_text[self.sampler(batch.generator).to(self.ctx.device)]), dim=-1)
        features = image_features(self.model, batch.images, self.precision)
        scores = cgla_scores(*features, text, s["topk"])
        logits = logit_scale(self.model) * scores.combined()
        ce = F.cross_entropy(logits, targets)
        # on the global feature: what probes, descriptions and prototypes read (only when it is trained on)
        text_image = (text_to_image_ce(logit_scale(self.model) * scores.global_scores, targets)
                      if s["text_image_weight"] else ce.new_zeros(()))
        if s["class_mean_weight"]:
            # the sampled texts keep descriptions aligned by content; the class means are what is evaluated
            ce = ce + s["class_mean_weight"] * F.cross_entropy(
                scaled_scores(self.model, features, self.class_mean_text(), s["topk"]), targets)
        ortho = orthogonality(self.proj.weight)
        loss = ce + s["text_image_weight"] * text_image + s["ortho_weight"] * ortho
        terms = {"loss": loss, "ce": ce, "text_image": text_image, "ortho": ortho}
        return terms, (logits.argmax(-1) == targets.argmax(-1)).sum()

    def class_mean_text(self) -> torch.Tensor:
        bank = slice(0, self.num_bank)
        return class_means(self.proj(self.pooled_text[bank]), self.owner[bank], self.num_classes)

    def validate(self) -> dict[str, float]:
        """Accuracy and mean class accuracy with the class-mean prompt features (flip TTA), of the averaged
        weights when there are any (and the live weights' accuracy beside them)."""
        model = self.model
        model.eval()
        try:
            with self.averaged():
                metrics = self.validation_metrics()
            live = self.validation_metrics() if self.ema is not None else None
        finally:
            self.train_mode()
        result = {"valid_acc": metrics["accuracy"], "valid_mean_class_acc": metrics["mean_class_accuracy"]}
        if live is not None:
            result["live_valid_acc"] = live["accuracy"]
        return result

    def validation_metrics(self) -> dict:
        model, s = self.model, self.s
        with torch.no_grad():
            text = self.class_mean_text()
        scores = batched_scores(
            lambda x: scaled_scores(model, image_features(model, x, self.precision), text, s["topk"]),
            self.valid.images, self.size, self.mean, self.std, self.ctx.device, batch_size=512, tta_flip=True,
            precision=self.precision, progress=False)
        return classification_metrics(self.valid.labels.cpu().numpy(), scores.argmax(-1).numpy(), self.valid.classes)

    def row(self, epoch: int, lr: float, result: dict, validation: dict) -> dict:
        return {"epoch": epoch, "lr": lr, "loss": result["train_loss"], "ce": result["train_ce"],
                "text_image": result["train_text_image"],
                "ortho": result["train_ortho"], "train_acc": result["train_accuracy"], **validation,
                "logit_scale": float(self.model.logit_scale.detach().exp().clamp(max=100)),
                "images_per_s": result["images_per_s"], "seconds": result["epoch_seconds"]}

    def describe(self) -> str:
        return (f"stage 0: {self.s['model']}, {sum(p.numel() for p in self.parameters().values()) / 1e6:.2f} M "
                f"trainable parameters, {len(self.texts)} texts, {self.size} px, {self.precision}, "
                f"{torch.get_num_threads()} threads")

    def finish(self, best: dict, rows: list[dict]) -> None:
        s = self.s
        summary = {"model": s["model"], "best": best, "epochs": s["epochs"], "images": len(self.data),
                   "train_seconds": sum(r["seconds"] for r in rows), "device": str(self.ctx.device),
                   "precision": self.precision, "threads": torch.get_num_threads(), "half": s["half"],
                   "seed": s["seed"], "rotate": s.get("rotate", 0.0), "ema_decay": s.get("ema_decay", 0.0),
                   "class_mean_weight": s["class_mean_weight"],
                   "text_image_weight": s["text_image_weight"],
                   "lr": s["lr"], "warmup_epochs": s["warmup_epochs"],
                   "init_from": s.get("init_from"), "init_fingerprint": self.init_fingerprint,
                   "command": " ".join(sys.argv)}
        (self.out / "pretrain_summary.json").write_text(json.dumps({**summary, "history": rows}, indent=2))
        print(json.dumps(summary), flush=True)
