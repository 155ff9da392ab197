"""Faithfulness measures for heatmaps: deletion and insertion curves, bootstrap intervals, and
the model-randomisation sanity check.

Deletion removes a face's patches hottest first (replacing them with a blurred copy) and
tracks the originally predicted class's probability: a faithful map makes it fall fast (a
small area under the curve). Insertion starts from the blurred face and reveals patches
hottest first: a faithful map makes it rise fast (a large area). A random order is the
floor. If re-initialising the learnt prompts barely changes a map (high rank correlation
with the trained model's), the map shows the image more than what the model learnt
(Adebayo et al., "Sanity checks for saliency maps", 2018).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .model import MPAFER


def heat_order(heat: np.ndarray | torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """Cell indices, hottest first, of an (h, w) or (N,) map; ties in random order, NaN cells last."""
    values = np.nan_to_num(np.asarray(heat, dtype=np.float64).reshape(-1), nan=-np.inf)
    shuffle = rng.permutation(values.size)
    return shuffle[np.argsort(-values[shuffle], kind="stable")]


def step_masks(order: np.ndarray, steps: int = 10) -> np.ndarray:
    """(steps + 1, N) boolean: at step s the first round(s * N / steps) cells of ``order``."""
    count = order.size
    masks = np.zeros((steps + 1, count), dtype=bool)
    for step in range(steps + 1):
        masks[step, order[:round(step * count / steps)]] = True
    return masks


def cells_to_pixels(masks: np.ndarray, grid: tuple[int, int], size: int) -> torch.Tensor:
    """(T, N) cell masks -> (T, 1, size, size) float pixel masks (each cell a block of the image)."""
    cells = torch.as_tensor(np.asarray(masks, dtype=np.float32)).reshape(-1, 1, *grid)
    return F.interpolate(cells, size=(size, size), mode="nearest")


def deletion_insertion_inputs(image: torch.Tensor, baseline: torch.Tensor, order: np.ndarray,
                              grid: tuple[int, int], steps: int = 10) -> torch.Tensor:
    """(2 * (steps + 1), 3, S, S): the deletion sequence (``image`` with the first cells of
    ``order`` replaced by ``baseline``), then the insertion sequence (``baseline`` with them
    revealed). Both start at step 0: nothing removed, nothing revealed."""
    chosen = cells_to_pixels(step_masks(order, steps), grid, image.shape[-1]).to(image.device, image.dtype)
    deletion = image[None] * (1 - chosen) + baseline[None] * chosen
    insertion = baseline[None] * (1 - chosen) + image[None] * chosen
    return torch.cat([deletion, insertion])


def curve_area(curve: np.ndarray) -> np.ndarray:
    """Area under (..., T) curves sampled at T evenly spaced fractions of [0, 1] (trapezoids)."""
    values = np.asarray(curve, dtype=np.float64)
    return np.trapezoid(values, dx=1.0 / (values.shape[-1] - 1), axis=-1)


def bootstrap_interval(values: np.ndarray, resamples: int = 1000, level: float = 0.95, seed: int = 0
                       ) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its percentile bootstrap interval."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties sharing their average rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.arange(values.size, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of the same shape (NaN cells are dropped);
    NaN when either is constant."""
    a = np.asarray(first, dtype=np.float64).reshape(-1)
    b = np.asarray(second, dtype=np.float64).reshape(-1)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = _ranks(a[keep]), _ranks(b[keep])
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


def randomized_prompts(model: MPAFER, seed: int = 0) -> MPAFER:
    """A copy of ``model`` whose learnable prompts are drawn afresh from their initial
    distributions; the frozen backbone is shared, not copied. For the sanity check only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the constructor draws the visual prompts (VPT's uniform init)
        fresh = MPAFER(model.config, model.backbone_info, model.classes, model.prompt_names, model.hard_prompts)
        if fresh.text_prompts is not None:  # CoOp's random init: a phrase init would not be random
            with torch.no_grad():
                fresh.text_prompts.ctx.normal_(std=0.02)
    fresh = fresh.to(model.device)
    fresh.prototypes = model.prototypes
    fresh.hard_text_cache = model.hard_text_cache
    fresh.text_anchor_offset = model.text_anchor_offset  # the anchor is fixed, not learnt: kept
    return fresh.eval()
