"""The learning-rate schedule of both stages: linear warmup, then a cosine to a floor (per optimiser step)."""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, total: int, warmup: int, start: float, floor: float) -> float:
    """Linear warmup from ``start`` to 1 over ``warmup`` steps, then cosine from 1 to ``floor``."""
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float,
                  warmup_start: float = 0.01, floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Each parameter group's lr times ``lr_factor``; ``floor`` is the end as a fraction of the peak."""
    total = epochs * steps_per_epoch
    warmup = min(total, int(round(warmup_epochs * steps_per_epoch)))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, warmup_start, floor))
