"""Cross-modal global-local alignment (CGLA).

S_g   = cos(image global feature, class text feature)
S_loc = mean of the top-k patch-to-class-text cosines
logits = scale * (S_g + S_loc)

The patch-to-text cosines are also the explanation: reshaped to the patch grid they are
one heatmap per class, and with any other text feature (a description, free text) one
heatmap per text. Inputs here are already L2-normalised.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def patch_text_similarity(patches: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """(B, N, D) patches x (T, D) texts -> (B, T, N) cosines."""
    return torch.einsum("bnd,td->btn", patches, texts.to(patches.dtype))


def to_grid(similarity: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, T, N) -> (B, T, H, W), patches in row-major order as the ViT lays them out."""
    return similarity.reshape(*similarity.shape[:2], *grid)


def topk_mean(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k largest values over the last dimension (k is capped at its size)."""
    k = max(1, min(int(k), similarity.shape[-1]))
    return similarity.topk(k, dim=-1).values.mean(dim=-1)


@dataclass
class CGLAScores:
    global_scores: torch.Tensor  # (B, C)
    local_scores: torch.Tensor  # (B, C)
    patch_similarity: torch.Tensor  # (B, C, N)

    def combined(self, use_global: bool = True, use_local: bool = True) -> torch.Tensor:
        if not (use_global or use_local):
            raise ValueError("CGLA needs the global term, the local term, or both")
        total = torch.zeros_like(self.global_scores)
        if use_global:
            total = total + self.global_scores
        if use_local:
            total = total + self.local_scores
        return total


def cgla_scores(image: torch.Tensor, patches: torch.Tensor, texts: torch.Tensor, topk: int) -> CGLAScores:
    """Global and local alignment of (B, D) images and (B, N, D) patches with (C, D) class texts.

    Always in float32, also under bf16 autocast: at a logit scale of 100, bf16 cosines would move
    logits by a tenth and make GPU evaluation differ from the CPU demo.
    """
    with torch.autocast(device_type=image.device.type, enabled=False):
        image, patches, texts = image.float(), patches.float(), texts.float()
        global_scores = image @ texts.t()
        similarity = patch_text_similarity(patches, texts)
        return CGLAScores(global_scores, topk_mean(similarity, topk), similarity)
