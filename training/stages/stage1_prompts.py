"""Stage 1 as an engine task: MPA-FER prompts on a frozen open_clip backbone (``training/train.py``).

Settings are YAML (``training/configs``) over ``DEFAULT_CONFIG``, with ``--set key=value`` on top.
Class prototypes (L_v) are computed once, before the first epoch, from the frozen encoder, and
stored in every checkpoint. bf16 autocast on CUDA (``train.precision``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mpafer.augment import AugmentConfig
from mpafer.checkpoint import load_checkpoint, save_checkpoint
from mpafer.data import load_dataset
from mpafer.evaluate import evaluate, plot_confusion
from mpafer.model import MPAFER, MPAFERConfig, create_model
from mpafer.objective import gradient_norms, mpafer_loss
from mpafer.precision import PRECISIONS, autocast
from mpafer.prototypes import compute_prototypes

from training.engine import config as cfg
from training.engine.config import ConfigError
from training.engine.data_feed import HeldData, hold, image_batches, load_split
from training.engine.distributed import Dist, wrap_ddp
from training.engine.loop import Batch, RunSpec, Task
from training.engine.state import atomic_folder

LOSS_TERMS = ("loss", "ce", "ta", "pa", "v")
GRAD_TERMS = ("total", "ce", "ta", "pa", "t", "v")  # mpafer.objective.gradient_norms; t = ta + pa as weighted
METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_ce", "train_ta", "train_pa", "train_v",
                 *(f"train_grad_{key}" for key in GRAD_TERMS), "train_accuracy",
                 "val_accuracy", "val_mean_class_accuracy", "epoch_seconds", "images_per_s")

DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 0,
    "data": {
        "dataset": "ferplus",  # an adapter of mpafer.data.load_dataset
        "root": None,  # or --data
        "image_size": None,  # size faces are decoded and held at; None = native (FERPlus: 48)
        "train_split": "train",
        "val_split": "valid",  # None: no validation, best/ is the last epoch
        "test_split": "test",  # None: no final test evaluation
        "soft_labels": False,  # train on the label distributions (FERPlus votes)
        "limit_per_class": None,  # at most N images per class in train and valid (quick runs)
        "skip_bad": False,
        "cache_dir": None,
    },
    "model": {"backbone": {"model_name": "ViT-B-16", "pretrained": "openai"}},  # mpafer.MPAFERConfig
    "train": {
        "epochs": 120,
        "batch_size": 32,  # per process
        "optimizer": "sgd",  # sgd or adamw
        "lr": 0.032,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "warmup_epochs": 1,
        "warmup_start": 0.01,  # first warmup step's lr, as a fraction of lr
        "min_lr": 0.0,  # end of the cosine
        "prototypes_per_class": None,  # None: every training image
        "eval_batch_size": 256,
        "tta_flip": False,  # mirror test-time augmentation in validation and test
        "log_every": 10,  # steps between progress-bar updates (each one syncs the GPU)
        "precision": "auto",  # auto (bf16 on CUDA, fp32 on CPU), bf16 (native bf16 only, else fp32), fp32
    },
    "augment": AugmentConfig().to_dict(),
}
# Settings that do not change what is learned: they may differ when a run is resumed.
NOT_HASHED = ("data.root", "data.cache_dir", "train.eval_batch_size", "train.log_every")


def config_hash(config: dict) -> str:
    return cfg.config_hash(config, NOT_HASHED)


def build_config(args: argparse.Namespace) -> dict:
    config = cfg.deep_merge(DEFAULT_CONFIG, cfg.load_yaml(args.config))
    for flag, key in (("data", "data.root"), ("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
                      ("lr", "train.lr"), ("limit_per_class", "data.limit_per_class"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            cfg.set_dotted(config, key, getattr(args, flag))
    if args.skip_bad:
        config["data"]["skip_bad"] = True
    cfg.apply_sets(config, args.set)
    if not config["data"]["root"]:
        raise ConfigError("no dataset folder: pass --data PATH or set data.root in the config")
    try:  # written out in full, so that a later change of a library default cannot slip into a resumed run
        config["model"] = MPAFERConfig.from_dict(config["model"]).to_dict()
        config["augment"] = AugmentConfig.from_dict(config["augment"]).to_dict()
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"invalid model or augment section in {args.config}: {err}") from err
    if config["train"]["optimizer"] not in ("sgd", "adamw"):
        raise ConfigError(f"train.optimizer must be sgd or adamw, got {config['train']['optimizer']!r}")
    if config["train"]["precision"] not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {config['train']['precision']!r}")
    return config


def run_spec(config: dict, out: Path, resume: bool, progress: bool, callbacks=()) -> RunSpec:
    train = config["train"]
    return RunSpec(out=out, config=config, not_hashed=NOT_HASHED, epochs=train["epochs"],
                   batch_size=train["batch_size"], seed=config["seed"], warmup_epochs=train["warmup_epochs"],
                   warmup_start=train["warmup_start"],
                   min_lr_factor=train["min_lr"] / train["lr"] if train["lr"] else 0.0,
                   resume=resume, progress=progress, log_every=train["log_every"], callbacks=callbacks)


def load_held(config: dict, split: str, ctx: Dist, soft: bool, limit: bool = True) -> HeldData:
    data = config["data"]
    dataset = load_split(lambda: load_dataset(data["dataset"], data["root"], split, image_size=data["image_size"],
                                              cache_dir=data["cache_dir"], skip_bad=data["skip_bad"],
                                              progress=ctx.main), ctx)
    if limit and data["limit_per_class"]:
        dataset = dataset.per_class(int(data["limit_per_class"]), seed=config["seed"])
    return hold(dataset, ctx.device, soft, pin=ctx.world == 1)


class PromptTask(Task):
    name = "stage 1"
    loss_terms = LOSS_TERMS
    best_keys = ("val_accuracy",)
    metric_fields = METRIC_FIELDS

    def __init__(self, config: dict, ctx: Dist, out: Path, resume_from: Path | None, progress: bool,
                 compile: bool = False):
        self.config, self.ctx, self.out, self.progress = config, ctx, out, progress
        self.train_cfg, self.precision = config["train"], config["train"]["precision"]
        if ctx.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # the float32 parts outside autocast
            torch.backends.cudnn.allow_tf32 = True
        self.data = load_held(config, config["data"]["train_split"], ctx, bool(config["data"]["soft_labels"]))
        val_split = config["data"]["val_split"]
        self.val_data = load_held(config, val_split, ctx, False) if val_split else None
        self.model = self.prepare_model(resume_from)
        self.forward = wrap_ddp(self.model, ctx) if ctx.world > 1 else self.model
        if compile:
            self.forward = torch.compile(self.forward)
        info = self.model.backbone_info
        self.input_spec = (self.model.image_size, info.mean, info.std)
        self.augment = AugmentConfig.from_dict(config["augment"])
        self.extra = {"data": {k: config["data"][k] for k in ("dataset", "image_size", "soft_labels")},
                      "train_config": config, "config_hash": config_hash(config)}

    def prepare_model(self, resume_from: Path | None) -> MPAFER:
        """Build the model (seeded), or restore it from last/; compute the prototypes on a fresh start."""
        config, ctx = self.config, self.ctx
        model_config = MPAFERConfig.from_dict(config["model"])
        if model_config.classes is None:
            model_config.classes = list(self.data.classes)  # the model's outputs follow the data's label order
        elif list(model_config.classes) != list(self.data.classes):
            raise ConfigError(f"model.classes {model_config.classes} must be the dataset's classes in its label "
                              f"order: {list(self.data.classes)}")
        torch.manual_seed(config["seed"])  # the prompts' initial values
        try:
            model = create_model(model_config, device=ctx.device)
        except ValueError as err:  # e.g. the data's class names are not in the hard-prompt bank
            raise ConfigError(f"cannot build the model for {config['data']['dataset']}: {err}") from err
        if resume_from is not None:
            model = load_checkpoint(resume_from, device=ctx.device, backbone=model.backbone_info)
        elif model_config.loss.gamma > 0:
            info = model.backbone_info
            with autocast(ctx.device, self.precision):
                batches = image_batches(self.data, self.train_cfg["eval_batch_size"], model.image_size, info.mean,
                                        info.std, model.device)
                compute_prototypes(model, batches, per_class=self.train_cfg["prototypes_per_class"],
                                   progress=self.progress and ctx.main)
            if ctx.world > 1:  # identical on every rank, whatever the device's arithmetic did
                dist.broadcast(model.prototypes, src=0)
        model.hard_text_features()  # fixed text features, computed once outside autocast
        if model.text_prompts is not None and model_config.loss.beta > 0:
            model.hard_token_features()
        return model.train()

    # ---- the loop's side ---------------------------------------------------------------
    def parameters(self) -> dict[str, torch.nn.Parameter]:
        return self.model.learnable_parameters()

    def make_optimizer(self) -> torch.optim.Optimizer:
        train, params = self.train_cfg, list(self.parameters().values())
        if train["optimizer"] == "adamw":
            return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"])
        return torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"],
                               weight_decay=train["weight_decay"])

    def train_mode(self) -> None:
        self.model.train()

    def loss(self, batch: Batch):
        with autocast(self.ctx.device, self.precision):
            output = self.forward(batch.images)
            terms = mpafer_loss(self.model, output, self.data.targets[batch.index])
        return terms, (output.logits.argmax(1) == self.data.labels[batch.index]).sum()

    def probe(self, batch: Batch) -> dict[str, float]:
        """Each loss term's gradient norm on the learnable parameters, on one batch (not a training step).

        A separate forward of the plain model (not the DDP or compiled wrapper), so the step itself
        is untouched and nothing here waits on the other ranks.
        """
        model = self.model
        with autocast(self.ctx.device, self.precision):
            terms = mpafer_loss(model, model(batch.images), self.data.targets[batch.index])
        norms = gradient_norms(terms, model.learnable_parameters().values(), model.config.loss)
        return {f"train_grad_{key}": value for key, value in norms.items()}

    def validate(self) -> dict[str, float]:
        if self.val_data is None:
            return {}
        val = evaluate(self.model, self.val_data, self.train_cfg["eval_batch_size"],
                       tta_flip=self.train_cfg["tta_flip"], progress=False)
        return {"val_accuracy": val["accuracy"], "val_mean_class_accuracy": val["mean_class_accuracy"]}

    def row(self, epoch: int, lr: float, result: dict, validation: dict) -> dict:
        return {"epoch": epoch, "lr": lr, **result, "val_accuracy": "", "val_mean_class_accuracy": "",
                **validation}

    def save_best(self, epoch: int, row: dict) -> None:
        with atomic_folder(self.out / "best") as folder:
            save_checkpoint(self.model, folder, extra={**self.extra, "epoch": epoch,
                                                       "val_accuracy": row["val_accuracy"]})

    def save_weights(self, folder: Path, epoch: int) -> None:
        save_checkpoint(self.model, folder, extra={**self.extra, "epoch": epoch})

    def describe(self) -> str:
        return f"training {self.model.num_learnable():,} parameters"

    def finish(self, best: dict, rows: list[dict]) -> None:
        if self.config["data"]["test_split"]:
            final_test(self.out, self.config, self.model, best["epoch"], self.ctx.device, self.progress)


def final_test(out: Path, config: dict, model: MPAFER, best_epoch: int, device: torch.device,
               progress: bool) -> None:
    """The best checkpoint on the test split: test_metrics.json and test_confusion.png."""
    data, train, split = config["data"], config["train"], config["data"]["test_split"]
    best_model = load_checkpoint(out / "best", device=device, backbone=model.backbone_info)
    test_data = load_dataset(data["dataset"], data["root"], split, image_size=data["image_size"],
                             cache_dir=data["cache_dir"], skip_bad=data["skip_bad"], progress=progress)
    metrics = evaluate(best_model, hold(test_data, device, False), train["eval_batch_size"],
                       tta_flip=train["tta_flip"], progress=progress)
    # which split chose best/: RAF-DB and AffectNet have no validation split, so it may be the test images
    selected_on = data["val_split"] or "last epoch (no validation split)"
    metrics.update(split=split, checkpoint="best", epoch=best_epoch, selected_on=selected_on)
    (out / "test_metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    plot_confusion(metrics["confusion"], metrics["classes"], out / "test_confusion.png",
                   title=f"{split}: accuracy {metrics['accuracy']:.2%} (n = {metrics['n']})")
    print(f"test ({split}, best epoch {best_epoch}): accuracy {metrics['accuracy']:.4f}, "
          f"mean class accuracy {metrics['mean_class_accuracy']:.4f}, n = {metrics['n']}", flush=True)
