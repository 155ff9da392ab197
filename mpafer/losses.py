"""The MPA-FER objective: L = CE(CGLA logits) + beta * (L_ta + L_pa) + gamma * L_v.

* L_ta, token-level soft-hard alignment: each class's soft prompt, token by token, should
  resemble the hard prompts of its own class more than those of other classes. The similarity
  of a soft prompt to a hard prompt is late interaction (each soft token's best match among the
  hard prompt's tokens, averaged), and classes compete through a softmax with temperature.
* L_pa, prompt-level alignment: the soft prompt's text feature against the mean feature of its
  class's hard prompts, as an element-wise L1 distance or a symmetric contrastive loss.
* L_v, prototype alignment: the prompted global image feature is pulled to the frozen encoder's
  prototype of its class (L1 or cosine), which keeps the pretrained behaviour.
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
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.prompt_mode not in ("l1", "contrastive"):
            raise ValueError(f"prompt_mode must be 'l1' or 'contrastive', got {self.prompt_mode!r}")
        if self.prototype_mode not in ("l1", "cosine"):
            raise ValueError(f"prototype_mode must be 'l1' or 'cosine', got {self.prototype_mode!r}")

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


def class_mean(values: torch.Tensor, owner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Average the last-but-one axis of (..., P) values over the P items of each class -> (..., C)."""
    one_hot = F.one_hot(owner, num_classes).to(values.dtype)  # (P, C)
    return (values @ one_hot) / one_hot.sum(0).clamp_min(1)


def token_alignment_loss(soft_tokens: torch.Tensor, soft_mask: torch.Tensor, hard_tokens: torch.Tensor,
                         hard_mask: torch.Tensor, hard_class: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_ta: contrastive over classes of the soft-to-hard late-interaction similarity."""
    num_classes = soft_tokens.shape[0]
    per_prompt = late_interaction(soft_tokens, soft_mask, hard_tokens, hard_mask)  # (C, P)
    per_class = class_mean(per_prompt, hard_class, num_classes)  # (C, C)
    target = torch.arange(num_classes, device=soft_tokens.device)
    return F.cross_entropy(per_class.float() / temperature, target)


def prompt_alignment_loss(soft: torch.Tensor, hard: torch.Tensor, mode: str = "l1",
                          temperature: float = 0.07) -> torch.Tensor:
    """L_pa between (C, D) soft-prompt features and (C, D) class-mean hard-prompt features."""
    if mode == "l1":
        return F.l1_loss(soft.float(), hard.float())
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
                             mode: str = "l1") -> torch.Tensor:
    """L_v between (B, D) prompted global features and (C, D) frozen class prototypes."""
    target = target_prototypes(prototypes, targets).to(features.dtype)
    if mode == "l1":
        return F.l1_loss(features.float(), target.float())
    if mode == "cosine":
        return (1.0 - F.cosine_similarity(features.float(), target.float(), dim=-1)).mean()
    raise ValueError(f"unknown prototype alignment mode {mode!r}")
