"""Occlusion check: how much each facial region matters to the prediction, for any classifier.

Each region (brows, eyes, nose, mouth, cheeks, forehead) is blurred out of a copy of the face;
the original and all copies go through the classifier in one batch, and the change in the
target class's probability is that region's effect. It needs nothing from the model but
probabilities, so it checks the heatmaps from the outside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .face_geometry import Regions, region_masks

OCCLUDED_REGIONS = ("brows", "eyes", "nose", "mouth", "cheeks", "forehead")


def default_sigma(size: int) -> float:
    """A blur that wipes out features of a face filling ``size`` pixels (brows, lips) but keeps
    the light and shading, so a blurred region is missing rather than replaced by a foreign patch."""
    return max(1.0, size / 10)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) -> the same, blurred with a separable Gaussian (reflect padding)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    flat = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), flat, groups=channels)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), flat.transpose(-1, -2), groups=channels)


def pixel_masks(regions: Mapping[str, tuple], size: int, names: Sequence[str] = OCCLUDED_REGIONS,
                crop_size: int | None = None) -> dict[str, np.ndarray]:
    """(size, size) float coverage in [0, 1] of each named region, at the model's input resolution.
    ``regions``: boxes in crop pixels (``face_regions``; a plain dict needs ``crop_size``)."""
    crop_size = crop_size or regions.crop_size
    chosen = Regions({n: regions[n] for n in names if n in regions}, crop_size)
    if "nose" in regions:  # region_masks cuts the nose out of the cheeks
        chosen.setdefault("nose", regions["nose"])
    masks = region_masks(chosen, size, size, soft=True)
    return {n: masks[n] for n in names if n in masks}


@dataclass(frozen=True)
class RegionOcclusion:
    region: str
    probability: float  # the target class's probability with the region blurred out
    change: float  # probability - the unoccluded probability: negative = the region supported the class
    label: int  # the top class with the region blurred out

    def to_dict(self, classes: Sequence[str] | None = None) -> dict:
        label = classes[self.label] if classes is not None else self.label
        return {"region": self.region, "probability": round(self.probability, 4),
                "change": round(self.change, 4), "label": label}


@dataclass(frozen=True)
class OcclusionResult:
    target: int
    probability: float  # the target's probability on the unoccluded face
    regions: tuple[RegionOcclusion, ...]  # most supporting region (largest drop) first

    def to_dict(self, classes: Sequence[str] | None = None) -> dict:
        return {"target": classes[self.target] if classes is not None else self.target,
                "probability": round(self.probability, 4),
                "regions": [r.to_dict(classes) for r in self.regions]}


def occlusion_effects(classify: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                      masks: Mapping[str, np.ndarray], target: int | None = None,
                      sigma: float | None = None) -> OcclusionResult:
    """Blur each region of one preprocessed (3, S, S) ``image`` out and classify all copies at once.

    ``classify``: (B, 3, S, S) -> (B, C) probabilities. ``masks``: region -> (S, S) coverage in
    [0, 1] (``pixel_masks``), where the blurred copy replaces the image. ``target`` defaults to
    the top class of the unoccluded image.
    """
    image = image[0] if image.dim() == 4 else image
    names = list(masks)
    blurred = gaussian_blur(image[None], sigma or default_sigma(image.shape[-1]))[0]
    weights = torch.stack([torch.as_tensor(np.asarray(masks[n], dtype=np.float32)) for n in names]) \
        if names else torch.zeros(0, *image.shape[-2:])
    weights = weights.to(image.device, image.dtype)[:, None]  # (R, 1, S, S)
    copies = image[None] * (1 - weights) + blurred[None] * weights
    with torch.no_grad():
        probabilities = classify(torch.cat([image[None], copies])).float().cpu()
    target = int(probabilities[0].argmax()) if target is None else int(target)
    before = float(probabilities[0, target])
    effects = [RegionOcclusion(n, float(p[target]), float(p[target]) - before, int(p.argmax()))
               for n, p in zip(names, probabilities[1:])]
    return OcclusionResult(target, before, tuple(sorted(effects, key=lambda e: e.change)))
