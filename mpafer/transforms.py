"""Deterministic image preparation for the model: layout, [0, 1] floats, resize, per-channel mean/std.

``to_model_input`` is what evaluation, prediction and every script feed the image tower; training adds
random crops, flips and erasing on top (``mpafer.augment``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def as_nchw(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A uint8 (or float) batch in NHWC or NCHW layout, as an NCHW tensor (a view when possible)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.dim() == 3:  # one image
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images (N, H, W, 3) or (N, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] == 3 and images.shape[-1] != 3:
        return images
    if images.shape[-1] == 3:
        return images.permute(0, 3, 1, 2)
    if images.shape[1] == 3:
        return images
    raise ValueError(f"images need 3 colour channels first or last, got shape {tuple(images.shape)}")


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """NCHW uint8 -> float32 in [0, 1]; float input is taken to be in [0, 1] already."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def standardize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel of an NCHW float batch (not an L2 normalisation: see prompts.l2_normalize)."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def to_model_input(images: torch.Tensor | np.ndarray, size: int, mean: Sequence[float],
                   std: Sequence[float], device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 NHWC/NCHW faces -> float32 (N, 3, size, size), resized and normalised; no randomness.

    Shrinking uses antialiasing (as PIL would), enlarging plain bilinear. With ``device`` the
    uint8 batch is moved first, so the float copy is only ever made where it is used.
    """
    x = as_nchw(images)
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = _to_unit_float(x)
    if x.shape[-2:] != (size, size):
        shrink = x.shape[-1] > size or x.shape[-2] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return standardize(x, mean, std)
