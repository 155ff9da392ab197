"""Grad-CAM (the ``grad-cam`` package) on an MPA-FER model, for any class.

Where to hook matters. The global (class-token) score reads the last block's *output* only at
the class token, so the patch tokens of that output get gradient from the local top-k term
alone: with the local term off the map was all zeros. The last block's first LayerNorm
(``ln_1``) feeds the attention in which the class token reads every patch, so both terms
reach its patch tokens; this is the usual ViT choice (the package's ``blocks[-1].norm1``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .model import MPAFER


class _Logits(nn.Module):
    """The prompted model as a plain classifier (images -> logits), as Grad-CAM expects."""

    def __init__(self, model: MPAFER):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the weights are frozen: without a leaf that needs gradients there is no graph to
        # carry them back to the hooked layer
        images = images.detach().requires_grad_(True)
        return self.model(images, with_text_tokens=False).logits


def vit_reshape(grid: tuple[int, int], batch_first: bool):
    """Tokens (B, 1 + N [+ prompts], W) -> (B, W, h, w): drop the class token and any visual
    prompts appended at that block, keep the N patch tokens in row-major grid order."""
    count = grid[0] * grid[1]

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if not batch_first:
            tokens = tokens.transpose(0, 1)
        patches = tokens[:, 1:1 + count]
        return patches.reshape(patches.shape[0], *grid, patches.shape[-1]).permute(0, 3, 1, 2)

    return reshape


def gradcam_layer(model: MPAFER) -> nn.Module:
    """The layer Grad-CAM reads: the last block's first LayerNorm (see the module docstring)."""
    return model.clip.visual.transformer.resblocks[-1].ln_1


def gradcam(model: MPAFER, images: torch.Tensor, targets: Sequence[int], layer: nn.Module | None = None
            ) -> np.ndarray:
    """Grad-CAM for each (preprocessed) image and its target class (predicted or any other).

    Returns (B, S, S) maps at the model's input size, each scaled to [0, 1] by the package.
    The weights are frozen, so the input is what requires gradients; nothing is learnt and the
    learnable prompts' ``.grad`` is left as it was. ``layer`` overrides ``gradcam_layer``.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if images.shape[0] != len(targets):
        raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
    visual = model.clip.visual
    reshape = vit_reshape(model.grid, getattr(visual.transformer, "batch_first", True))
    # the package calls zero_grad and the backward pass reaches the prompts: keep their .grad
    saved = {p: p.grad for p in model.parameters() if p.requires_grad}
    try:
        with torch.enable_grad(), GradCAM(_Logits(model), [layer or gradcam_layer(model)],
                                          reshape_transform=reshape) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        for param, grad in saved.items():
            param.grad = grad
    return np.asarray(maps, dtype=np.float32)
