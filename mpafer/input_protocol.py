"""How a model wants its faces: the input protocol stored with every checkpoint.

A model trained on FERPlus saw grey, 48 x 48, tightly framed faces; sending it sharp colour crops
with a wide margin is a different task. The protocol travels in the checkpoint's config, and the
predictor and evaluation both apply it:

* ``grey``: faces are converted to luminance (ITU-R 601, as PIL's "L") and repeated over the
  three channels, as the grey training images were;
* ``margin``: the square crop's side is the detector box's longer side times ``1 + 2 * margin``;
  ``shift_y`` moves the crop centre down by that fraction of the box side (BlazeFace's box sits
  higher on the face than a FERPlus frame); both were measured on padded FERPlus test faces
  (``training/calibrate_crop.py``);
* ``tta_flip``: average each face's probabilities with its mirror image's;
* ``upright``: rotate the crop so that the eyes are level (keypoints), when it helps.
The model's own input size is the resolution (``MPAFER.image_size``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

DEFAULT_CROP_MARGIN = 0.25  # the margin of crops before a protocol was measured and stored


@dataclass
class InputProtocol:
    grey: bool = False
    margin: float = DEFAULT_CROP_MARGIN
    shift_y: float = 0.0
    tta_flip: bool = False
    upright: bool = False

    def __post_init__(self):
        if not 0 <= float(self.margin) <= 3:
            raise ValueError(f"input margin must be within [0, 3], got {self.margin}")
        if abs(float(self.shift_y)) > 1:
            raise ValueError(f"input shift_y must be within [-1, 1], got {self.shift_y}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: "dict[str, Any] | InputProtocol | None") -> "InputProtocol":
        if isinstance(data, InputProtocol):
            return data
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown input protocol keys {sorted(unknown)} (known: {sorted(known)})")
        return cls(**data)


_LUMA = (0.299, 0.587, 0.114)


def to_grey(images: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """uint8 or float images, channels last (..., H, W, 3) -> luminance repeated over 3 channels."""
    if isinstance(images, np.ndarray):
        luma = images[..., :3].astype(np.float32) @ np.asarray(_LUMA, np.float32)
        if images.dtype == np.uint8:
            luma = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
        return np.repeat(luma[..., None], 3, axis=-1)
    weights = torch.tensor(_LUMA, dtype=torch.float32, device=images.device)
    luma = images[..., :3].float() @ weights
    if images.dtype == torch.uint8:
        luma = luma.round().clamp(0, 255).to(torch.uint8)
    return luma.unsqueeze(-1).expand(*luma.shape, 3).contiguous()
