"""The one training loop of both stages: seeded epochs, a progress bar, validation, best and last/, resume.

A stage is a ``Task`` (its model, its loss on one batch, its validation, what it saves); the loop
owns the order of the images, the augmentation draws, the optimiser step and schedule, the
progress bar, the record (``Recorder``) and the saved state (``state``). ``Callback`` objects
see every step and epoch (tests use them to crash a run mid-epoch or to dump each rank's weights).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import yaml
from tqdm.auto import tqdm

from mpafer.augment import AugmentConfig, apply_augment, sample_augment

from .config import ConfigError, config_hash
from .data_feed import BatchGather, HeldData, epoch_permutation, seeded_generator
from .distributed import Dist
from .recorder import Recorder, stage1_tag
from .schedule import warmup_cosine
from .state import check_resumable, read_last, restore_training, save_last


@dataclass
class Batch:
    epoch: int
    step: int
    index: torch.Tensor  # this rank's rows of the split, on the device
    images: torch.Tensor  # augmented, model-ready (B, 3, S, S)
    generator: torch.Generator  # keyed by (seed, 1, epoch, step), after the augmentation draws


class Task:
    """What a stage gives the loop. Attributes are set by the stage's constructor."""

    name = "training"
    data: HeldData  # the training split
    augment: AugmentConfig
    input_spec: tuple[int, Sequence[float], Sequence[float]]  # size, mean, std of the model input
    loss_terms: tuple[str, ...] = ("loss",)  # epoch means are recorded; the first is minimised
    best_keys: tuple[str, ...] = ("val_accuracy",)  # validation metrics kept with best; the first selects it
    metrics_file = "metrics.csv"
    metric_fields: tuple[str, ...] = ()
    tag: Callable[[str], str | None] = staticmethod(stage1_tag)  # TensorBoard tag of a row key

    def parameters(self) -> dict[str, torch.nn.Parameter]:
        raise NotImplementedError

    def make_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def train_mode(self) -> None:
        """Put the model in training mode (at the start of every epoch)."""

    def loss(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The loss terms on one batch (at least ``loss_terms[0]``) and how many images were right."""
        raise NotImplementedError

    def after_step(self) -> None:
        """After each optimiser step (e.g. a weight average's update)."""

    def probe(self, batch: Batch) -> dict[str, float]:
        """Diagnostics on each epoch's first batch (rank 0; not counted in the speed)."""
        return {}

    def validate(self) -> dict[str, float]:
        """Rank 0, after each epoch; {} without a validation split (the last epoch is then the best)."""
        return {}

    def row(self, epoch: int, lr: float, result: dict, validation: dict) -> dict:
        return {"epoch": epoch, "lr": lr, **result, **validation}

    def save_best(self, epoch: int, row: dict) -> None:
        raise NotImplementedError

    def save_weights(self, folder: Path, epoch: int) -> None:
        """Into last/: what ``build_task(resume_from=folder)`` restores."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"training {sum(p.numel() for p in self.parameters().values()):,} parameters"

    def finish(self, best: dict, rows: list[dict]) -> None:
        """Rank 0, after the last epoch (also when a finished run is resumed)."""


class Callback:
    def on_step_end(self, trainer: "Trainer") -> None:
        """After each optimiser step; ``trainer.global_step`` steps of the run are done."""

    def on_epoch_end(self, trainer: "Trainer", row: dict | None) -> None:
        """After an epoch's last/ is on the disk (``row`` on rank 0, None on the others)."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """After the last epoch, before the stage's ``finish``."""


@dataclass
class RunSpec:
    out: Path
    config: dict  # all settings: config.yaml, and last/ for resume checks
    not_hashed: tuple[str, ...]  # flattened keys that may change on resume
    epochs: int
    batch_size: int  # per process
    seed: int
    warmup_epochs: float
    warmup_start: float = 0.01  # first step's lr, as a fraction of the peak
    min_lr_factor: float = 0.0  # end of the cosine, as a fraction of the peak
    resume: bool | None = None  # True: --resume; False: refuse an existing run; None: always continue one
    progress: bool = True
    log_every: int = 10  # steps between progress-bar updates (each one syncs the GPU)
    callbacks: Sequence[Callback] = field(default_factory=tuple)


def say(text: str) -> None:
    tqdm.write(text)  # above a running progress bar
    sys.stdout.flush()


class Trainer:
    def __init__(self, spec: RunSpec, ctx: Dist):
        self.spec, self.ctx = spec, ctx
        self.global_batch = spec.batch_size * ctx.world
        self.epoch = self.step = self.global_step = 0

    def fit(self, build_task: Callable[[Path | None], Task]) -> dict:
        """Run (or continue) the stage; returns the best epoch's record."""
        spec, ctx = self.spec, self.ctx
        digest = config_hash(spec.config, spec.not_hashed)
        previous = read_last(spec.out)
        check_resumable(previous, spec.config, digest, spec.out, spec.resume, self.global_batch, spec.not_hashed)
        if spec.resume and previous is None and ctx.main:
            say(f"nothing to resume in {spec.out}: starting from the beginning")
        self.task = task = build_task(previous[0] if previous else None)
        self.steps_per_epoch = len(task.data) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(task.data)} training images do not fill one global batch of "
                              f"{self.global_batch}")
        self.optimizer = task.make_optimizer()
        self.scheduler = warmup_cosine(self.optimizer, spec.epochs, self.steps_per_epoch, spec.warmup_epochs,
                                       spec.warmup_start, spec.min_lr_factor)
        start, best = 0, {task.best_keys[0]: -1.0, "epoch": 0}
        if previous is not None:
            start, best = restore_training(previous, list(task.parameters()), self.optimizer, self.scheduler)
            if ctx.main:
                say(f"resumed {spec.out} after epoch {start} (best {task.best_keys[0]} "
                    f"{best[task.best_keys[0]]:.4f} at epoch {best['epoch']})")
        self.info = {"config_hash": digest, "config": spec.config, "global_batch": self.global_batch,
                     "world_size": ctx.world}
        recorder = None
        if ctx.main:
            recorder = Recorder(spec.out, task.metrics_file, task.metric_fields, start, task.tag)
            (spec.out / "config.yaml").write_text(yaml.safe_dump(spec.config, sort_keys=False), encoding="utf-8")
            say(f"{task.describe()}; {len(task.data)} training images, {self.steps_per_epoch} steps of "
                f"{self.global_batch} per epoch on {ctx.world} x {ctx.device}")
        gather = BatchGather(task.data.images, spec.batch_size, ctx.device)
        bar = tqdm(total=spec.epochs * self.steps_per_epoch, initial=start * self.steps_per_epoch,
                   desc=task.name, unit="step", disable=not (spec.progress and ctx.main), dynamic_ncols=True)
        try:
            for epoch in range(start, spec.epochs):
                result = self.train_epoch(epoch, gather, bar)
                row = None
                if recorder is not None:
                    row, best = self.end_epoch(epoch + 1, result, best, recorder)
                for callback in spec.callbacks:
                    callback.on_epoch_end(self, row)
                ctx.barrier()  # every rank waits until last/ is on the disk
        finally:  # only closes files: what an unfinished epoch did is never saved
            bar.close()
            if recorder is not None:
                recorder.close()
        for callback in spec.callbacks:
            callback.on_train_end(self)
        if recorder is not None:
            task.finish(best, recorder.rows)
        ctx.barrier()
        return best

    def train_epoch(self, epoch: int, gather: BatchGather, bar) -> dict[str, float]:
        """One pass over this epoch's permutation; each rank takes its slice of every global batch."""
        spec, ctx, task = self.spec, self.ctx, self.task
        batch, global_batch, steps = spec.batch_size, self.global_batch, self.steps_per_epoch
        size, mean, std = task.input_spec
        order = epoch_permutation(len(task.data), spec.seed, epoch)
        lo, hi = ctx.rank * batch, (ctx.rank + 1) * batch
        terms_names = task.loss_terms
        sums = torch.zeros(len(terms_names) + 2, device=ctx.device, dtype=torch.float64)  # terms, correct, count
        task.train_mode()
        probe: dict[str, float] = {}
        started = time.perf_counter()
        for step in range(steps):
            self.epoch, self.step = epoch, step
            index = order[step * global_batch:(step + 1) * global_batch][lo:hi]
            generator = seeded_generator(spec.seed, 1, epoch, step)
            draws = sample_augment(global_batch, task.augment, generator).slice(lo, hi)
            images = apply_augment(gather(index), draws, size, mean, std)
            current = Batch(epoch, step, index.to(ctx.device), images, generator)
            if step == 0 and ctx.main:
                probe_started = time.perf_counter()
                probe = task.probe(current)
                started += time.perf_counter() - probe_started  # not part of the training speed
            terms, correct = task.loss(current)
            self.optimizer.zero_grad(set_to_none=True)
            terms[terms_names[0]].backward()
            self.optimizer.step()
            self.scheduler.step()
            task.after_step()
            with torch.no_grad():
                for i, key in enumerate(terms_names):
                    if key in terms:
                        sums[i] += terms[key].detach().double() * index.shape[0]
                sums[-2] += correct
                sums[-1] += index.shape[0]
            self.global_step = epoch * steps + step + 1
            for callback in spec.callbacks:
                callback.on_step_end(self)
            bar.update(1)
            if not bar.disable and ((step + 1) % spec.log_every == 0 or step + 1 == steps):
                seen = float(sums[-1])
                bar.set_postfix({"epoch": f"{epoch + 1}/{spec.epochs}", "loss": f"{float(sums[0]) / seen:.4f}",
                                 "acc": f"{float(sums[-2]) / seen:.3f}",
                                 "img_s": f"{seen * ctx.world / (time.perf_counter() - started):.0f}"})
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - started
        if ctx.world > 1:
            dist.all_reduce(sums)
        count = max(float(sums[-1]), 1.0)
        result = {f"train_{key}": float(sums[i]) / count for i, key in enumerate(terms_names)}
        result.update(probe, train_accuracy=float(sums[-2]) / count, epoch_seconds=seconds,
                      images_per_s=float(sums[-1]) / max(seconds, 1e-9))
        return result

    def end_epoch(self, epoch: int, result: dict, best: dict, recorder: Recorder) -> tuple[dict, dict]:
        """Rank 0: validation, best, the record, last/."""
        task, key = self.task, self.task.best_keys[0]
        validation = task.validate()
        row = task.row(epoch, self.optimizer.param_groups[0]["lr"], result, validation)
        improved = not validation or validation[key] > best[key]  # without validation the last epoch is best
        if improved:
            best = {**{k: validation.get(k, -1.0) for k in task.best_keys}, "epoch": epoch}
            task.save_best(epoch, row)
        recorder.add(row)
        save_last(self.spec.out, lambda folder: task.save_weights(folder, epoch), self.optimizer, self.scheduler,
                  list(task.parameters()), {"epoch": epoch, "best": best, **self.info})
        scores = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in validation.items())
        say(f"{task.name} epoch {epoch}/{self.spec.epochs}: loss {result[f'train_{task.loss_terms[0]}']:.4f}, "
            f"train acc {result['train_accuracy']:.4f}{scores}, {result['images_per_s']:.0f} img/s"
            f"{' (best)' if improved else ''}")
        return row, best
