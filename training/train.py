"""Train MPA-FER prompts on a frozen open_clip backbone.

One GPU (or CPU):

    python training/train.py --config training/configs/ferplus_vitb16.yaml --data /path/to/ferplus --out runs/ferplus

Several GPUs on one machine (torch DDP; --batch-size is per GPU, so the global batch is N times it):

    torchrun --standalone --nproc_per_node N training/train.py --config training/configs/ferplus_vitb16.yaml \\
        --data /path/to/ferplus --out runs/ferplus

Continue an interrupted run (killed, preempted, out of time) from its last finished epoch:

    python training/train.py --config ... --data ... --out runs/ferplus --resume

What it writes into --out: config.yaml (the resolved config), metrics.csv and tb/ (TensorBoard) with
one row per epoch (each loss term's epoch mean, and its gradient norm on the learnable parameters
on the epoch's first batch: train_grad_ce, _ta, _pa, _t, _v, _total), best/ (the checkpoint with
the best validation accuracy, loadable by ``mpafer.load_checkpoint`` and ``python -m mpafer
evaluate``), last/ (the resumable state after the last finished epoch: a checkpoint plus
train_state.safetensors/.json), test_metrics.json and test_confusion.png (the best checkpoint on
the test split; ``selected_on`` names the split that chose it).

How it runs: the whole split is held as uint8 tensors (on the GPU when it fits, else in pinned
host memory), so an epoch never decodes an image; each epoch is a seeded permutation (drop_last),
each rank takes its slice of every global batch; augmentation runs on the device (mpafer.augment)
with random draws that depend only on (seed, epoch, step), so a resumed run, and a run on any
number of GPUs with the same global batch, sees the same images. bf16 autocast on CUDA;
--compile wraps the model in torch.compile. Class prototypes (L_v) are computed once, before the
first epoch, from the frozen encoder, and stored in every checkpoint.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mpafer.augment import AugmentConfig, apply_augment, sample_augment  # noqa: E402
from mpafer.transforms import to_model_input  # noqa: E402
from mpafer.backbone import BackboneError  # noqa: E402
from mpafer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from mpafer.data import DatasetError, load_dataset  # noqa: E402
from mpafer.evaluate import evaluate, plot_confusion  # noqa: E402
from mpafer.model import MPAFER, MPAFERConfig, create_model  # noqa: E402
from mpafer.objective import gradient_norms, mpafer_loss  # noqa: E402
from mpafer.precision import PRECISIONS  # noqa: E402
from mpafer.precision import autocast as mixed_precision  # noqa: E402
from mpafer.prototypes import compute_prototypes  # noqa: E402

# Test-only hooks (environment variables): crash like `kill -9` after N optimiser steps of the
# whole run, and make every rank dump its learnable weights at the end.
CRASH_ENV = "MPAFER_TEST_CRASH_AFTER_STEPS"
DUMP_ENV = "MPAFER_TEST_DUMP_WEIGHTS"

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
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
        "precision": "auto",  # auto (bf16 on CUDA, fp32 on CPU), bf16 (also fast on AVX-512-BF16 CPUs), fp32
    },
    "augment": AugmentConfig().to_dict(),
}
# Settings that do not change what is learned: they may differ when a run is resumed.
NOT_HASHED = ("data.root", "data.cache_dir", "train.eval_batch_size", "train.log_every")


class ConfigError(ValueError):
    """The configuration is invalid, or does not match the run being resumed."""


# ---------------------------------------------------------------------------------------- config

def deep_merge(base: dict, override: dict, where: str = "") -> dict:
    """``override`` over ``base``; keys unknown to ``base`` are errors, except under 'model'."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        path = f"{where}{key}"
        if key not in merged and path != "model" and not path.startswith("model."):
            raise ConfigError(f"unknown config key '{path}' (known: {', '.join(sorted(merged))})")
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and path != "model":
            merged[key] = deep_merge(merged[key], value, f"{path}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_dotted(config: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    if parts[0] != "model" and parts[-1] not in node:
        raise ConfigError(f"--set {key}: unknown key (known here: {', '.join(sorted(node))})")
    node[parts[-1]] = value


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def hashed_view(config: dict) -> dict[str, Any]:
    return {k: v for k, v in flatten(config).items() if k not in NOT_HASHED}


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(hashed_view(config), sort_keys=True).encode()).hexdigest()[:16]


def build_config(args: argparse.Namespace) -> dict:
    try:
        loaded = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {args.config}: {err}") from err
    config = deep_merge(DEFAULT_CONFIG, loaded)
    for flag, key in (("data", "data.root"), ("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
                      ("lr", "train.lr"), ("limit_per_class", "data.limit_per_class"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            set_dotted(config, key, getattr(args, flag))
    if args.skip_bad:
        config["data"]["skip_bad"] = True
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        set_dotted(config, key.strip(), yaml.safe_load(text))
    if not config["data"]["root"]:
        raise ConfigError("no dataset folder: pass --data PATH or set data.root in the config")
    try:  # written out in full, so that a later change of a library default cannot slip into a resumed run
        config["model"] = MPAFERConfig.from_dict(config["model"]).to_dict()
        config["augment"] = AugmentConfig.from_dict(config["augment"]).to_dict()
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"invalid model or augment section in {args.config}: {err}") from err
    if config["train"]["optimizer"] not in ("sgd", "adamw"):
        raise ConfigError(f"train.optimizer must be sgd or adamw, got {config['train']['optimizer']!r}")
    return config


def config_difference(old: dict, new: dict) -> list[str]:
    a, b = hashed_view(old), hashed_view(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# ----------------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device_arg: str | None) -> Dist:
    """One process per device; under torchrun (WORLD_SIZE > 1) join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available")
    device = torch.device(kind)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
    return Dist(rank, world, device)


def wrap_ddp(model: MPAFER, ctx: Dist) -> torch.nn.Module:
    """DDP over the whole model, but synchronising only what learns.

    The frozen encoder's weights are the same on every rank by construction (pretrained or seeded),
    so broadcasting them at start-up (hundreds of MB for ViT-L) is skipped, and so are buffers:
    they are derived from the frozen weights, and the prototypes are broadcast explicitly.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    ignored = [name for name, p in model.named_parameters() if not p.requires_grad]
    ignored += [name for name, _ in model.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(model, ignored)
    # with every buffer ignored, DDP has no buffers to sync before each forward either
    return DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


# ------------------------------------------------------------------------------------------ data

@dataclass
class HeldData:
    """A split as tensors: uint8 images (device or pinned host), labels and training targets on the device."""

    images: torch.Tensor  # (N, S, S, 3) uint8
    labels: torch.Tensor  # (N,) int64
    targets: torch.Tensor  # (N,) class indices, or (N, C) label distributions
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_split(config: dict, split: str, ctx: Dist, limit: bool) -> Any:
    """Load one split; rank 0 first, so the others read the decoded cache it writes."""
    data = config["data"]

    def load():
        return load_dataset(data["dataset"], data["root"], split, image_size=data["image_size"],
                            cache_dir=data["cache_dir"], skip_bad=data["skip_bad"], progress=ctx.main)

    dataset = None
    if ctx.main:
        dataset = load()
    ctx.barrier()
    if not ctx.main:
        dataset = load()
    if limit and data["limit_per_class"]:
        dataset = dataset.per_class(int(data["limit_per_class"]), seed=config["seed"])
    return dataset


def hold(dataset, device: torch.device, soft: bool, pin: bool = True, max_fraction: float = 0.4) -> HeldData:
    """Put a split on the device when it takes less than ``max_fraction`` of the free memory.

    Otherwise the images stay on the host: pinned for one process, or, with several processes, in
    the memory-mapped dataset cache, whose pages the operating system shares between the ranks
    (eight pinned copies of AffectNet would not fit in the host's memory).
    """
    if soft and dataset.soft_labels is None:
        raise ConfigError(f"data.soft_labels is true but {dataset.name} {dataset.split} has no label "
                          f"distributions; set data.soft_labels: false")
    images = torch.from_numpy(np.ascontiguousarray(dataset.images))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() < max_fraction * free:
            images = images.to(device)
        elif pin:
            try:
                images = images.pin_memory()
            except RuntimeError as err:  # very large sets: pageable memory still works, only slower
                print(f"warning: cannot pin {images.numel() / 1e9:.1f} GB of images ({err}); "
                      f"using pageable memory", file=sys.stderr)
    labels = torch.from_numpy(dataset.labels).to(device)
    targets = torch.from_numpy(dataset.soft_labels).to(device) if soft else labels
    return HeldData(images, labels, targets, tuple(dataset.classes))


class BatchGather:
    """uint8 images of given indices, on the device.

    Device-resident data is indexed in place. Host data is gathered into one of two pinned
    staging buffers and copied asynchronously; an event keeps a buffer from being refilled
    while its previous copy is still in flight.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, device: torch.device):
        self.images, self.device = images, device
        self.staged = images.device.type == "cpu" and device.type == "cuda"
        if self.staged:
            shape = (batch_size, *images.shape[1:])
            self.buffers = [torch.empty(shape, dtype=images.dtype).pin_memory() for _ in range(2)]
            self.events: list[torch.cuda.Event | None] = [None, None]
            self.turn = 0

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        if not self.staged:
            return self.images[index.to(self.images.device)]
        slot = self.turn % 2
        self.turn += 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        buffer = self.buffers[slot][: index.shape[0]]
        torch.index_select(self.images, 0, index.cpu(), out=buffer)
        batch = buffer.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[slot] = event
        return batch


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator for one purpose, epoch and step: draws never depend on what ran before."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=seeded_generator(seed, 0, epoch))


def image_batches(model: MPAFER, data: HeldData, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Model-ready images, without augmentation, with their hard labels (for the prototypes)."""
    info = model.backbone_info
    for start in range(0, len(data), batch_size):
        images = data.images[start:start + batch_size]
        yield to_model_input(images, model.image_size, info.mean, info.std, device=model.device), \
            data.labels[start:start + batch_size]


# ------------------------------------------------------------------------ optimiser and schedule

def make_optimizer(model: MPAFER, train: dict) -> torch.optim.Optimizer:
    params = list(model.learnable_parameters().values())
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"])
    return torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"])


def lr_factor(step: int, total: int, warmup: int, start: float, floor: float) -> float:
    """Linear warmup from ``start`` to 1 over ``warmup`` steps, then cosine from 1 to ``floor``."""
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, train: dict, steps_per_epoch: int):
    total = train["epochs"] * steps_per_epoch
    warmup = min(total, int(round(train["warmup_epochs"] * steps_per_epoch)))
    floor = train["min_lr"] / train["lr"] if train["lr"] else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, train["warmup_start"], floor))


# --------------------------------------------------------------------------- state on the disk

@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Fill a temporary folder, then swap it in: ``path`` always holds a whole state, old or new.

    Two renames are not one atomic step; a crash between them leaves ``path.old``, which
    ``existing_folder`` falls back to.
    """
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    for file in tmp.iterdir():  # on the disk before the rename makes them visible
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def existing_folder(path: Path) -> Path | None:
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / STATE_JSON).is_file() or (candidate / "mpafer.json").is_file():
            return candidate
    return None


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser state_dict as safetensors tensors plus JSON (no pickle)."""
    tensors, plain = {}, {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[key] = value
    return tensors, {"state": plain, "param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = tensor
    for pid, values in meta["state"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state().tolist(), "python": list(random.getstate())}
    state["python"][1] = list(state["python"][1])
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_last(out: Path, model: MPAFER, optimizer, scheduler, info: dict, extra: dict) -> None:
    """last/: a loadable checkpoint plus everything needed to continue after ``info['epoch']``."""
    with atomic_folder(out / "last") as folder:
        save_checkpoint(model, folder, extra=extra)
        tensors, optimizer_meta = flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(folder / STATE_TENSORS), metadata={"format": "mpafer-train-state"})
        state = {**info, "optimizer": optimizer_meta, "scheduler": scheduler.state_dict(), "rng": rng_state(),
                 "param_names": list(model.learnable_parameters())}
        (folder / STATE_JSON).write_text(json.dumps(state, indent=1), encoding="utf-8")


def read_last(out: Path) -> tuple[Path, dict] | None:
    folder = existing_folder(out / "last")
    if folder is None or not (folder / STATE_JSON).is_file():
        return None
    try:
        return folder, json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / STATE_JSON} cannot be read ({err})") from err


def metrics_rows(path: Path, up_to_epoch: int) -> list[dict]:
    """Rows of an existing metrics.csv up to an epoch (a resumed run rewrites what came after)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) <= up_to_epoch]


def write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ training

_PRECISION = {"value": "auto"}  # train.precision of the running config (mpafer.precision)


def autocast(device: torch.device):
    return mixed_precision(device, _PRECISION["value"])


def crash_step() -> int | None:
    value = os.environ.get(CRASH_ENV)
    return int(value) if value else None


def probe_gradients(model: MPAFER, images: torch.Tensor, targets: torch.Tensor, device: torch.device) -> dict:
    """Each loss term's gradient norm on the learnable parameters, on one batch (not a training step).

    A separate forward of the plain model (not the DDP or compiled wrapper), so the step itself
    is untouched and nothing here waits on the other ranks.
    """
    with autocast(device):
        terms = mpafer_loss(model, model(images), targets)
    norms = gradient_norms(terms, model.learnable_parameters().values(), model.config.loss)
    return {f"train_grad_{key}": value for key, value in norms.items()}


def train_epoch(epoch: int, forward, model: MPAFER, data: HeldData, gather: BatchGather, optimizer, scheduler,
                config: dict, ctx: Dist, progress: bool) -> dict[str, float]:
    """One pass over this epoch's permutation; returns the epoch's mean loss terms and accuracy.

    Rank 0 also measures each term's gradient norm on the epoch's first batch (``probe_gradients``).
    """
    train, seed = config["train"], config["seed"]
    batch, global_batch = train["batch_size"], train["batch_size"] * ctx.world
    steps = len(data) // global_batch
    augment_config = AugmentConfig.from_dict(config["augment"])
    info = model.backbone_info
    order = epoch_permutation(len(data), seed, epoch)
    lo, hi = ctx.rank * batch, (ctx.rank + 1) * batch
    sums = torch.zeros(len(LOSS_TERMS) + 2, device=ctx.device, dtype=torch.float64)  # terms, correct, count
    crash_after = crash_step()
    model.train()
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{train['epochs']}", unit="step",
               disable=not (progress and ctx.main), dynamic_ncols=True)
    grads: dict[str, float] = {}
    started = time.perf_counter()
    for step in bar:
        index = order[step * global_batch:(step + 1) * global_batch][lo:hi]
        draws = sample_augment(global_batch, augment_config, seeded_generator(seed, 1, epoch, step)).slice(lo, hi)
        images = apply_augment(gather(index), draws, model.image_size, info.mean, info.std)
        index = index.to(ctx.device)
        targets, labels = data.targets[index], data.labels[index]
        if step == 0 and ctx.main:
            probe_started = time.perf_counter()
            grads = probe_gradients(model, images, targets, ctx.device)
            started += time.perf_counter() - probe_started  # not part of the training speed
        with autocast(ctx.device):
            output = forward(images)
            terms = mpafer_loss(model, output, targets)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for i, key in enumerate(LOSS_TERMS):
                if key in terms:
                    sums[i] += terms[key].detach().double() * index.shape[0]
            sums[-2] += (output.logits.argmax(1) == labels).sum()
            sums[-1] += index.shape[0]
        done = epoch * steps + step + 1
        if done == crash_after:
            os._exit(137)  # test hook: die like kill -9, no clean-up, mid-epoch
        if ctx.main and progress and ((step + 1) % train["log_every"] == 0 or step + 1 == steps):
            seen = float(sums[-1])
            bar.set_postfix(loss=f"{float(sums[0]) / seen:.4f}", acc=f"{float(sums[-2]) / seen:.3f}",
                            img_s=f"{seen * ctx.world / (time.perf_counter() - started):.0f}")
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    seconds = time.perf_counter() - started
    if ctx.world > 1:
        dist.all_reduce(sums)
    count = max(float(sums[-1]), 1.0)
    result = {f"train_{key}": float(sums[i]) / count for i, key in enumerate(LOSS_TERMS)}
    result.update(grads, train_accuracy=float(sums[-2]) / count, epoch_seconds=seconds,
                  images_per_s=float(sums[-1]) / max(seconds, 1e-9))
    return result


def prepare_model(config: dict, ctx: Dist, train_data: HeldData, resume_from: Path | None,
                  progress: bool) -> MPAFER:
    """Build the model (seeded), or restore it from last/; compute the prototypes on a fresh start."""
    model_config = MPAFERConfig.from_dict(config["model"])
    if model_config.classes is None:
        model_config.classes = list(train_data.classes)  # the model's outputs follow the data's label order
    elif list(model_config.classes) != list(train_data.classes):
        raise ConfigError(f"model.classes {model_config.classes} must be the dataset's classes in its label "
                          f"order: {list(train_data.classes)}")
    torch.manual_seed(config["seed"])  # the prompts' initial values
    try:
        model = create_model(model_config, device=ctx.device)
    except ValueError as err:  # e.g. the data's class names are not in the hard-prompt bank
        raise ConfigError(f"cannot build the model for {config['data']['dataset']}: {err}") from err
    if resume_from is not None:
        model = load_checkpoint(resume_from, device=ctx.device, backbone=model.backbone_info)
    elif model_config.loss.gamma > 0:
        with autocast(ctx.device):
            compute_prototypes(model, image_batches(model, train_data, config["train"]["eval_batch_size"]),
                               per_class=config["train"]["prototypes_per_class"], progress=progress and ctx.main)
        if ctx.world > 1:  # identical on every rank, whatever the device's arithmetic did
            dist.broadcast(model.prototypes, src=0)
    model.hard_text_features()  # fixed text features, computed once outside autocast
    if model.text_prompts is not None and model_config.loss.beta > 0:
        model.hard_token_features()
    return model.train()


def dump_weights(model: MPAFER, ctx: Dist) -> None:
    folder = os.environ.get(DUMP_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.learnable_state_dict().items()},
                  str(Path(folder) / f"rank{ctx.rank}.safetensors"))


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    digest = config_hash(config)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    ctx = init_distributed(args.device)
    progress = not args.no_progress
    try:
        return _run(config, digest, out, ctx, args, progress)
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def check_resumable(previous: tuple[Path, dict] | None, config: dict, digest: str, out: Path, resume: bool,
                    global_batch: int) -> None:
    """Refuse to overwrite a run, or to continue one with other settings than it started with."""
    if previous is None:
        return
    state = previous[1]
    if not resume:
        raise ConfigError(f"{out} already holds a run (last finished epoch {state.get('epoch')}); "
                          f"pass --resume to continue it, or choose another --out")
    if state.get("config_hash") != digest:
        changes = config_difference(state.get("config", {}), config)
        raise ConfigError(f"cannot resume {out}: the configuration differs from the one it was started with "
                          f"({'; '.join(changes) or 'config hash differs'}). Resume with the same settings, "
                          f"or start a new run in another --out")
    if state.get("global_batch") != global_batch:
        raise ConfigError(f"cannot resume {out}: it was trained with a global batch of {state.get('global_batch')} "
                          f"images per step, this launch has {global_batch}; resume with as many processes "
                          f"and the same batch size")


def restore_training_state(previous: tuple[Path, dict], model: MPAFER, optimizer, scheduler) -> tuple[int, dict]:
    """Optimiser, schedule and RNG as they were after the last finished epoch; returns (epoch, best)."""
    folder, state = previous
    if state["param_names"] != list(model.learnable_parameters()):
        raise CheckpointError(f"{folder}: its optimiser state is for {state['param_names']}")
    optimizer.load_state_dict(unflatten_optimizer(load_file(str(folder / STATE_TENSORS)), state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    return int(state["epoch"]), state["best"]


class RunRecorder:
    """Rank 0's bookkeeping after each epoch: validation, best/, metrics.csv, TensorBoard, last/."""

    def __init__(self, out: Path, config: dict, digest: str, start_epoch: int, best: dict, global_batch: int,
                 world: int):
        from torch.utils.tensorboard import SummaryWriter

        self.out, self.config, self.best = out, config, best
        self.state = {"config_hash": digest, "config": config, "global_batch": global_batch, "world_size": world}
        self.extra = {"data": {k: config["data"][k] for k in ("dataset", "image_size", "soft_labels")},
                      "train_config": config, "config_hash": digest}
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.rows = metrics_rows(out / "metrics.csv", start_epoch)  # rows of unfinished epochs are dropped
        self.writer = SummaryWriter(str(out / "tb"), purge_step=start_epoch + 1)  # and so are their events

    def end_epoch(self, epoch: int, result: dict, model: MPAFER, val_data: HeldData | None, optimizer,
                  scheduler) -> None:
        train = self.config["train"]
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **result,
               "val_accuracy": "", "val_mean_class_accuracy": ""}
        improved = val_data is None  # without validation, the last epoch is the best
        if val_data is not None:
            val = evaluate(model, val_data, train["eval_batch_size"], tta_flip=train["tta_flip"], progress=False)
            row.update(val_accuracy=val["accuracy"], val_mean_class_accuracy=val["mean_class_accuracy"])
            improved = val["accuracy"] > self.best["val_accuracy"]
        if improved:
            self.best = {"val_accuracy": val["accuracy"] if val_data is not None else -1.0, "epoch": epoch}
            with atomic_folder(self.out / "best") as folder:
                save_checkpoint(model, folder, extra={**self.extra, "epoch": epoch,
                                                      "val_accuracy": row["val_accuracy"]})
        self.rows.append({k: row.get(k, "") for k in METRIC_FIELDS})  # absent terms (beta = 0, ...) stay blank
        write_metrics(self.out / "metrics.csv", self.rows)
        for key, value in row.items():
            if key not in ("epoch", "lr") and value != "":
                self.writer.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "val_"))
                                       else f"speed/{key}", value, epoch)
        self.writer.add_scalar("lr", row["lr"], epoch)
        self.writer.flush()
        save_last(self.out, model, optimizer, scheduler, {"epoch": epoch, "best": self.best, **self.state},
                  extra={**self.extra, "epoch": epoch})
        val_text = f", val acc {row['val_accuracy']:.4f}" if val_data is not None else ""
        print(f"epoch {epoch}/{train['epochs']}: loss {result['train_loss']:.4f}, "
              f"train acc {result['train_accuracy']:.4f}{val_text}, "
              f"{result['images_per_s']:.0f} img/s{' (best)' if improved else ''}", flush=True)

    def close(self) -> None:
        self.writer.close()


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


def _run(config: dict, digest: str, out: Path, ctx: Dist, args: argparse.Namespace, progress: bool) -> int:
    train = config["train"]
    if train["precision"] not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {train['precision']!r}")
    _PRECISION["value"] = train["precision"]
    global_batch = train["batch_size"] * ctx.world
    previous = read_last(out)
    check_resumable(previous, config, digest, out, args.resume, global_batch)
    if args.resume and previous is None and ctx.main:
        print(f"nothing to resume in {out}: starting from the beginning", flush=True)
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 parts outside autocast
        torch.backends.cudnn.allow_tf32 = True

    pin = ctx.world == 1
    train_data = hold(load_split(config, config["data"]["train_split"], ctx, limit=True), ctx.device,
                      bool(config["data"]["soft_labels"]), pin)
    val_split = config["data"]["val_split"]
    val_data = hold(load_split(config, val_split, ctx, limit=True), ctx.device, False, pin) if val_split else None
    steps_per_epoch = len(train_data) // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(train_data)} training images do not fill one global batch of {global_batch}")

    model = prepare_model(config, ctx, train_data, previous[0] if previous else None, progress)
    forward = wrap_ddp(model, ctx) if ctx.world > 1 else model
    if args.compile:
        forward = torch.compile(forward)
    optimizer = make_optimizer(model, train)
    scheduler = make_scheduler(optimizer, train, steps_per_epoch)
    start_epoch, best = 0, {"val_accuracy": -1.0, "epoch": 0}
    if previous is not None:
        start_epoch, best = restore_training_state(previous, model, optimizer, scheduler)
        if ctx.main:
            print(f"resumed {out} after epoch {start_epoch} (best validation accuracy "
                  f"{best['val_accuracy']:.4f} at epoch {best['epoch']})", flush=True)

    recorder = None
    if ctx.main:
        recorder = RunRecorder(out, config, digest, start_epoch, best, global_batch, ctx.world)
        print(f"training {model.num_learnable():,} parameters; {len(train_data)} training images, "
              f"{steps_per_epoch} steps of {global_batch} per epoch on {ctx.world} x {ctx.device}", flush=True)
    gather = BatchGather(train_data.images, train["batch_size"], ctx.device)
    for epoch in range(start_epoch, train["epochs"]):
        result = train_epoch(epoch, forward, model, train_data, gather, optimizer, scheduler, config, ctx, progress)
        if recorder is not None:
            recorder.end_epoch(epoch + 1, result, model, val_data, optimizer, scheduler)
        ctx.barrier()  # every rank waits until last/ is on the disk

    dump_weights(model, ctx)
    if recorder is not None:
        recorder.close()
        if config["data"]["test_split"]:
            final_test(out, config, model, recorder.best["epoch"], ctx.device, progress)
    ctx.barrier()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (training/configs/*.yaml)")
    parser.add_argument("--data", help="dataset folder (overrides data.root)")
    parser.add_argument("--out", help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="per process (the global batch is this times the GPU count)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    parser.add_argument("--limit-per-class", type=int, help="at most N images per class in train and valid")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable image files")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                        help="override any config value, e.g. --set model.topk=8 train.warmup_epochs=2")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ConfigError, DatasetError, BackboneError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
