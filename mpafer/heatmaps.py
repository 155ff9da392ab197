"""Heatmaps for display: upsampling, one colour scale per face, top-k cells, contrast views.

Class maps are CGLA's patch-to-class cosines. Drawn each on its own 0-1 range, a class at
0.1 % would look as hot as the predicted one; ``HeatScale.of`` gives one range for all of a
face's class maps, so classes compare by eye. ``topk_cells`` marks the patches that entered
the local logit (``outline_cells`` draws them), and ``contrast_map`` answers "why A rather
than B" with A's map minus B's, drawn on a diverging colormap centred at zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


def upsample(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(..., h, w) patch-grid maps -> (..., H, W), bilinear. The grid tiles the whole crop."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    maps = torch.as_tensor(maps)
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def _numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    array = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return np.nan_to_num(array.astype(np.float32, copy=False))


def normalize_map(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """Min-max to [0, 1] for display; a flat map becomes all zeros (nothing stands out)."""
    array = _numpy(values)
    if array.size == 0:
        return array
    return HeatScale(float(array.min()), float(array.max())).apply(array)


@dataclass(frozen=True)
class HeatScale:
    """One value range mapped to the colormap's [0, 1]: the same for every map it is applied to."""

    low: float
    high: float

    @classmethod
    def of(cls, maps: np.ndarray | torch.Tensor) -> "HeatScale":
        """The range of all of ``maps`` together (e.g. one face's (C, h, w) class maps)."""
        array = _numpy(maps)
        if array.size == 0:
            return cls(0.0, 0.0)
        return cls(float(array.min()), float(array.max()))

    def apply(self, values: np.ndarray | torch.Tensor) -> np.ndarray:
        """Values -> [0, 1] on this scale (clipped); a flat scale gives zeros."""
        array = _numpy(values)
        if self.high - self.low < 1e-8:
            return np.zeros_like(array)
        return np.clip((array - self.low) / (self.high - self.low), 0.0, 1.0)

    def describe(self, unit: str = "cosine") -> str:
        return f"one colour scale for every class: {unit} {self.low:.3f} (coldest) to {self.high:.3f} (hottest)"


def heatmaps_on_one_scale(maps: np.ndarray | torch.Tensor, size: int, classes: Mapping[int, str],
                          scale: HeatScale | None = None) -> tuple[dict[str, np.ndarray], HeatScale]:
    """A face's (C, h, w) class maps -> {class name: (size, size) map in [0, 1]} on one scale.

    ``classes`` maps row index -> name for the maps wanted; the scale spans all C maps (or is
    given), so a map drawn alone still sits on the scale shared with the others.
    """
    scale = scale or HeatScale.of(maps)
    grid = torch.as_tensor(_numpy(maps))
    rows = list(classes)
    up = upsample(grid[rows], size) if rows else grid[:0]
    return {classes[row]: scale.apply(m) for row, m in zip(rows, up)}, scale


def topk_cells(class_map: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """(h, w) boolean mask of the k highest cells of one class map: the patches whose mean is
    CGLA's local score (``mpafer.cgla.topk_mean``; k is capped at the number of cells)."""
    values = torch.as_tensor(_numpy(class_map))
    flat = values.reshape(-1)
    k = max(1, min(int(k), flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[flat.topk(k).indices] = True
    return mask.reshape(values.shape).numpy()


def outline_cells(image: Image.Image, cells: np.ndarray, colour: tuple[int, int, int] = (255, 255, 255),
                  width: int | None = None) -> Image.Image:
    """A copy of ``image`` with the outline of the marked (h, w) grid cells drawn on it.

    Only edges between a marked cell and an unmarked one (or the border) are drawn, so
    neighbouring cells read as one region rather than a lattice.
    """
    mask = np.asarray(cells, dtype=bool)
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    rows, cols = mask.shape
    cell_w, cell_h = out.width / cols, out.height / rows
    width = width or max(1, round(min(cell_w, cell_h) / 8))
    padded = np.pad(mask, 1)
    draw = ImageDraw.Draw(out)
    for r, c in zip(*np.nonzero(mask)):
        x0, y0, x1, y1 = c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h
        if not padded[r, c + 1]:  # above
            draw.line([(x0, y0), (x1, y0)], fill=colour, width=width)
        if not padded[r + 2, c + 1]:  # below
            draw.line([(x0, y1), (x1, y1)], fill=colour, width=width)
        if not padded[r + 1, c]:  # left
            draw.line([(x0, y0), (x0, y1)], fill=colour, width=width)
        if not padded[r + 1, c + 2]:  # right
            draw.line([(x1, y0), (x1, y1)], fill=colour, width=width)
    return out


def contrast_map(maps: np.ndarray | torch.Tensor, first: int, second: int) -> np.ndarray:
    """(h, w): class ``first``'s map minus class ``second``'s. Positive cells argue for the first
    (their patches match it better), negative ones for the second."""
    array = _numpy(maps)
    return array[first] - array[second]


def signed_to_unit(values: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Signed values -> [0, 1] with 0 at 0.5, symmetric: +-``limit`` (default max |value|) at the ends."""
    array = _numpy(values)
    limit = float(np.abs(array).max()) if limit is None and array.size else (limit or 0.0)
    if limit < 1e-8:
        return np.full_like(array, 0.5)
    return np.clip(0.5 + array / (2 * limit), 0.0, 1.0)


def overlay(crop: Image.Image, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> Image.Image:
    """Blend a [0, 1] heatmap, coloured with a matplotlib colormap, onto ``crop`` (RGB out)."""
    from matplotlib import colormaps  # no pyplot: no GUI backend, safe in server threads

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = crop if crop.mode == "RGB" else crop.convert("RGB")
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    if heat.shape != (base.height, base.width):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(base.size, Image.Resampling.BILINEAR))
    colours = colormaps[cmap](heat)[..., :3]  # (H, W, 3) floats in [0, 1]
    pixels = np.asarray(base, dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * pixels + alpha * colours
    return Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def contrast_overlay(crop: Image.Image, difference: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Draw a (h, w) or (H, W) signed contrast map on ``crop``: red for the first class, blue for
    the second, white-ish where the two match equally."""
    diff = _numpy(difference)
    if diff.shape != (crop.height, crop.width):
        diff = upsample(torch.from_numpy(diff), (crop.height, crop.width)).numpy()
    return overlay(crop, signed_to_unit(diff), alpha=alpha, cmap="RdBu_r")


def region_activation(heatmap: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean of an (H, W) map inside each region mask given on a coarser (h, w) grid."""
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))
    out = {}
    for name, mask in masks.items():
        pooled = F.adaptive_avg_pool2d(heat[None, None], mask.shape)[0, 0].numpy()
        weights = np.asarray(mask, dtype=np.float32)
        out[name] = float((pooled * weights).sum() / max(weights.sum(), 1e-8))
    return out
