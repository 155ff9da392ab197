"""An exponential moving average of a model's weights, for validating and saving the averaged model.

A short CPU schedule ends with its weights still jumping from step to step; their running average
(Polyak averaging, as timm's ModelEma) is the smoother model to validate and keep. The averaging is
torch's own (``torch.optim.swa_utils.get_ema_multi_avg_fn``); this class decides which tensors take
part (the trained parameters and the float buffers such as batch-norm statistics; integer buffers are
copied), keeps the average beside the live model, and swaps it in for as long as a ``with`` lasts.
The average starts at the initial weights without a warm-up: with a decay of 0.998 they still weigh
about 10 % after 1,200 steps, so early epochs validate worse than the live weights (the best epoch,
chosen on the average, comes late in a run).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightAverage:
    def __init__(self, tensors: dict[str, torch.Tensor], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.live = tensors  # the model's own tensors (parameters and buffers), by name
        self.average = {name: t.detach().clone() for name, t in tensors.items()}  # W_0^EMA = W_0
        self.floats = [name for name, t in tensors.items() if t.is_floating_point()]
        self.others = [name for name in tensors if name not in self.floats]
        self._update = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(self) -> None:
        """After each optimiser step."""
        if self.floats:
            self._update([self.average[n] for n in self.floats], [self.live[n].detach() for n in self.floats], None)
        for name in self.others:  # e.g. num_batches_tracked: a count, not something to average
            self.average[name].copy_(self.live[name])

    @contextmanager
    @torch.no_grad()
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own again after it."""
        kept = {name: t.detach().clone() for name, t in self.live.items()}
        try:  # a failure half-way through the copies still puts every live tensor back
            for name, t in self.live.items():
                t.copy_(self.average[name])
            yield
        finally:
            for name, t in self.live.items():
                t.copy_(kept[name])

    def state(self, prefix: str = "ema.") -> dict[str, torch.Tensor]:
        return {prefix + name: t.detach().cpu().contiguous() for name, t in self.average.items()}

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor], prefix: str = "ema.") -> None:
        missing = [name for name in self.average if prefix + name not in tensors]
        if missing:
            raise KeyError(f"the saved state has no average for {missing[:3]}")
        for name, t in self.average.items():
            t.copy_(tensors[prefix + name])
