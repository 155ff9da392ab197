"""Training-time augmentation, batched on whatever device the uint8 batch lives on (the GPU in training).

Deterministic preparation (layout, resize, mean/std) lives in ``mpafer.transforms``.

* ``sample_augment`` + ``apply_augment``: random resized crop, small rotation, horizontal flip and
  random erasing.

Augmentation is split in two so that the random draws are cheap, small and made on the CPU from
an explicit ``torch.Generator``: a training step draws the parameters of its *global* batch once
and every DDP rank applies its own slice. The images a run sees then depend only on the seed, the
epoch and the step, never on the device or on the number of GPUs, and a resumed run draws exactly
what the uninterrupted one drew.

Crop, rotation, resize and flip are one ``grid_sample`` per batch (bilinear); erasing is a mask.
Faces are already cropped, so the default crop keeps 80-100 % of the area. Rotation is off by
default (``rotate=0`` draws nothing, so older runs draw exactly what they drew before).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .transforms import _to_unit_float, as_nchw, standardize


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.8, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio (width / height)
    flip: float = 0.5  # probability of a horizontal flip
    erase: float = 0.25  # probability of erasing one rectangle
    erase_scale: tuple[float, float] = (0.02, 0.2)  # erased area as a fraction of the image
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    rotate: float = 0.0  # largest rotation in degrees, drawn uniformly in [-rotate, rotate]

    def __post_init__(self):
        for name in ("scale", "ratio", "erase_scale", "erase_ratio"):
            low, high = (float(v) for v in getattr(self, name))
            if not 0 < low <= high:
                raise ValueError(f"augment.{name} must be 0 < low <= high, got {getattr(self, name)}")
            setattr(self, name, (low, high))
        if self.scale[1] > 1 or self.erase_scale[1] > 1:
            raise ValueError("augment.scale and augment.erase_scale cannot exceed 1")
        for name in ("flip", "erase"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise ValueError(f"augment.{name} is a probability, got {getattr(self, name)}")
        if not 0 <= float(self.rotate) <= 45:
            raise ValueError(f"augment.rotate is a largest angle in degrees (0 to 45), got {self.rotate}")

    def to_dict(self) -> dict[str, Any]:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if not data["rotate"]:  # off: absent, so run folders from before the option still resume
            del data["rotate"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "AugmentConfig":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown augment keys: {sorted(unknown)} (known: {sorted(known)})")
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in data.items()})


@dataclass
class AugmentParams:
    """Per-image random draws, all as fractions of the image so they fit any resolution."""

    crop: torch.Tensor  # (B, 4) centre x, centre y, width, height in [0, 1]
    flip: torch.Tensor  # (B,) bool
    erase: torch.Tensor  # (B, 4) left, top, width, height in [0, 1]; width 0 = nothing erased
    angle: torch.Tensor | None = None  # (B,) rotation in radians; None = upright

    def __len__(self) -> int:
        return self.crop.shape[0]

    def slice(self, start: int, stop: int) -> "AugmentParams":
        angle = None if self.angle is None else self.angle[start:stop]
        return AugmentParams(self.crop[start:stop], self.flip[start:stop], self.erase[start:stop], angle)

    def to(self, device: torch.device | str) -> "AugmentParams":
        angle = None if self.angle is None else self.angle.to(device)
        return AugmentParams(self.crop.to(device), self.flip.to(device), self.erase.to(device), angle)


def _boxes(n: int, area: tuple[float, float], ratio: tuple[float, float],
           generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Widths and heights (fractions, <= 1) of n boxes with uniform area and log-uniform aspect."""
    a = torch.empty(n).uniform_(*area, generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = log_r.exp()
    return (a * r).sqrt().clamp(max=1.0), (a / r).sqrt().clamp(max=1.0)


def sample_augment(n: int, config: AugmentConfig, generator: torch.Generator | None = None) -> AugmentParams:
    """Draw the augmentation of n images on the CPU from ``generator`` (same draws on any device).

    Without a generator the global CPU RNG is used."""
    w, h = _boxes(n, config.scale, config.ratio, generator)
    u = torch.rand(n, 2, generator=generator)
    cx = w / 2 + u[:, 0] * (1 - w)  # the crop stays inside the image
    cy = h / 2 + u[:, 1] * (1 - h)
    flip = torch.rand(n, generator=generator) < config.flip
    ew, eh = _boxes(n, config.erase_scale, config.erase_ratio, generator)
    v = torch.rand(n, 2, generator=generator)
    erased = torch.rand(n, generator=generator) < config.erase
    ew = torch.where(erased, ew, torch.zeros_like(ew))
    erase = torch.stack([v[:, 0] * (1 - ew), v[:, 1] * (1 - eh), ew, eh], dim=1)
    angle = None
    if config.rotate > 0:  # drawn last, and only when asked for, so the draws above never change
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(config.rotate)
    return AugmentParams(torch.stack([cx, cy, w, h], dim=1), flip, erase, angle)


def _crop_grid(params: AugmentParams, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Sampling grid (B, size, size, 2) that crops each box, resizes it to size, turns it about its
    centre (torchvision's RandomResizedCrop then RandomRotation; corners outside the image repeat its
    border) and maybe flips it."""
    crop = params.crop.to(dtype)
    sx = crop[:, 2] * torch.where(params.flip, -1.0, 1.0).to(dtype)  # a negative x scale mirrors
    sy = crop[:, 3]
    angle = params.angle.to(dtype) if params.angle is not None else torch.zeros_like(sx)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([
        torch.stack([sx * cos, -sx * sin, 2 * crop[:, 0] - 1], dim=1),
        torch.stack([sy * sin, sy * cos, 2 * crop[:, 1] - 1], dim=1),
    ], dim=1)  # maps output coordinates in [-1, 1] into the (rotated) box, in input coordinates
    return F.affine_grid(theta, [crop.shape[0], 3, size, size], align_corners=False)


def _erase_mask(params: AugmentParams, size: int, device: torch.device) -> torch.Tensor:
    """(B, 1, size, size) True inside each image's erased rectangle."""
    centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    left, top, width, height = params.erase.to(torch.float32).unbind(dim=1)
    cols = (centres[None, :] >= left[:, None]) & (centres[None, :] < (left + width)[:, None])
    rows = (centres[None, :] >= top[:, None]) & (centres[None, :] < (top + height)[:, None])
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


def apply_augment(images: torch.Tensor, params: AugmentParams, size: int, mean: Sequence[float],
                  std: Sequence[float]) -> torch.Tensor:
    """Crop, resize, flip, normalise and erase a uint8 batch on its own device -> float32 NCHW.

    Erased pixels are set to 0 after normalisation, i.e. to the dataset mean colour, as
    torchvision's RandomErasing does when it follows Normalize.
    """
    x = _to_unit_float(as_nchw(images))
    if len(params) != x.shape[0]:
        raise ValueError(f"{len(params)} augmentation draws for a batch of {x.shape[0]} images")
    params = params.to(x.device)
    x = F.grid_sample(x, _crop_grid(params, size, x.dtype), mode="bilinear", padding_mode="border",
                      align_corners=False)
    x = standardize(x, mean, std)
    return x.masked_fill(_erase_mask(params, size, x.device), 0.0)


def augment(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
            config: AugmentConfig | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw and apply in one call, for code that does not need the split (benchmarks, notebooks)."""
    config = config or AugmentConfig()
    n = as_nchw(images).shape[0]
    return apply_augment(images, sample_augment(n, config, generator), size, mean, std)
