"""The MPA-FER objective: L = CE(CGLA logits) + beta * (L_ta + L_pa) + gamma * L_v.

* L_ta, token-level soft-hard alignment, contrastive per hard prompt (the paper's form): each
  hard prompt d of class y_d picks its class among the C soft prompts,
  -log softmax_c(sim(t_c, t*_d) / tau)[y_d], averaged over every hard prompt. sim is late
  interaction: each (masked) soft token's best cosine among the hard prompt's tokens, averaged.
* L_pa, prompt-level alignment: the soft prompt's text feature against the mean feature of its
  class's hard prompts, as an L1 distance or a symmetric contrastive loss.
* L_v, prototype alignment: the prompted global image feature is pulled to the frozen encoder's
  prototype of its class (L1 or cosine), which keeps the pretrained behaviour.
The L1 variants are per-sample distances (``l1_reduction="sum"``: summed over the feature
dimension, averaged over classes or images); "mean" averages over every element instead, about
1/D of that, which left the regularisers nearly inert at D = 512 (kept for comparison).
All features here are L2-normalised before they arrive.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    beta: float = 1.0  # weight of L_t = L_ta + L_pa
    gamma: float = 1.0  # weight of L_v
    token_weight: float = 1.0  # L_ta inside L_t
    prompt_weight: float = 1.0  # L_pa inside L_t
    token_temperature: float = 0.07
    prompt_mode: str = "l1"  # "l1" or "contrastive"
    prompt_temperature: float = 0.07
    prototype_mode: str = "l1"  # "l1" or "cosine"
    l1_reduction: str = "sum"  # L1 variants: "sum" over D then mean over samples (a distance), or "mean"
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.prompt_mode not in ("l1", "contrastive"):
            raise ValueError(f"prompt_mode must be 'l1' or 'contrastive', got {self.prompt_mode!r}")
        if self.prototype_mode not in ("l1", "cosine"):
            raise ValueError(f"prototype_mode must be 'l1' or 'cosine', got {self.prototype_mode!r}")
        if self.l1_reduction not in ("sum", "mean"):
            raise ValueError(f"l1_reduction must be 'sum' or 'mean', got {self.l1_reduction!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with class indices (B,) or probability targets (B, C), e.g. FERPlus votes."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def late_interaction(soft_tokens: torch.Tensor, soft_mask: torch.Tensor,
                     hard_tokens: torch.Tensor, hard_mask: torch.Tensor) -> torch.Tensor:
    """(C, Ls, D), (C, Ls) x (P, Lh, D), (P, Lh) -> (C, P): mean over soft tokens of the best hard-token cosine."""
    with torch.autocast(device_type=soft_tokens.device.type, enabled=False):  # float32 cosines, as CGLA
        sim = torch.einsum("cid,pjd->cpij", soft_tokens.float(), hard_tokens.float())
    sim = sim.masked_fill(~hard_mask[None, :, None, :], float("-inf")).amax(dim=-1)  # (C, P, Ls)
    weights = soft_mask.to(sim.dtype)[:, None, :]
    return (sim.masked_fill(~soft_mask[:, None, :], 0.0) * weights).sum(-1) / weights.sum(-1).clamp_min(1)


def token_alignment_loss(soft_tokens: torch.Tensor, soft_mask: torch.Tensor, hard_tokens: torch.Tensor,
                         hard_mask: torch.Tensor, hard_class: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_ta: for each of the P hard prompts, cross-entropy over the C soft prompts; mean over prompts."""
    per_prompt = late_interaction(soft_tokens, soft_mask, hard_tokens, hard_mask)  # (C, P)
    return F.cross_entropy(per_prompt.t().float() / temperature, hard_class.to(per_prompt.device))


def l1_distance(a: torch.Tensor, b: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Mean over rows of the L1 distance between (N, D) rows ("sum"), or the element mean ("mean")."""
    diff = (a.float() - b.float()).abs()
    if reduction == "sum":
        return diff.sum(-1).mean()
    if reduction == "mean":
        return diff.mean()
    raise ValueError(f"unknown L1 reduction {reduction!r}")


def prompt_alignment_loss(soft: torch.Tensor, hard: torch.Tensor, mode: str = "l1",
                          temperature: float = 0.07, l1_reduction: str = "sum") -> torch.Tensor:
    """L_pa between (C, D) soft-prompt features and (C, D) class-mean hard-prompt features."""
    if mode == "l1":
        return l1_distance(soft, hard, l1_reduction)
    if mode == "contrastive":
        logits = soft.float() @ hard.float().t() / temperature
        target = torch.arange(soft.shape[0], device=soft.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    raise ValueError(f"unknown prompt alignment mode {mode!r}")


def target_prototypes(prototypes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each sample's prototype: its class's, or the vote-weighted mix for probability targets."""
    if targets.dim() == 1:
        return prototypes[targets]
    return F.normalize(targets.to(prototypes.dtype) @ prototypes, dim=-1)


def prototype_alignment_loss(features: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                             mode: str = "l1", l1_reduction: str = "sum") -> torch.Tensor:
    """L_v between (B, D) prompted global features and (C, D) frozen class prototypes."""
    target = target_prototypes(prototypes, targets).to(features.dtype)
    if mode == "l1":
        return l1_distance(features, target, l1_reduction)
    if mode == "cosine":
        return (1.0 - F.cosine_similarity(features.float(), target.float(), dim=-1)).mean()
    raise ValueError(f"unknown prototype alignment mode {mode!r}")
