"""The full training objective of a model's forward output: CE + beta * L_t + gamma * L_v."""
from __future__ import annotations

from typing import Iterable

import torch

from .losses import (LossConfig, classification_loss, prompt_alignment_loss, prototype_alignment_loss,
                     token_alignment_loss)
from .model import MPAFER, MPAFEROutput


def mpafer_loss(model: MPAFER, output: MPAFEROutput, targets: torch.Tensor,
                config: LossConfig | None = None) -> dict[str, torch.Tensor]:
    """Loss terms for one batch. ``targets``: class indices (B,) or probabilities (B, C).

    Returns a dict with ``loss`` (the total to backpropagate) and each term, for logging.
    """
    config = config or model.config.loss
    terms: dict[str, torch.Tensor] = {"ce": classification_loss(output.logits, targets, config.label_smoothing)}
    total = terms["ce"]
    if config.beta > 0 and model.text_prompts is not None:
        text = output.text
        if text.tokens is None:
            raise ValueError("soft-hard alignment needs the text tokens: call the model with with_text_tokens=True")
        hard_tokens, hard_mask = model.hard_token_features()
        terms["ta"] = token_alignment_loss(text.tokens, text.token_mask, hard_tokens, hard_mask,
                                           model.hard_class, config.token_temperature)
        terms["pa"] = prompt_alignment_loss(text.features, model.hard_class_features(), config.prompt_mode,
                                            config.prompt_temperature, config.l1_reduction)
        total = total + config.beta * (config.token_weight * terms["ta"] + config.prompt_weight * terms["pa"])
    if config.gamma > 0:
        if model.prototypes.numel() == 0:
            raise ValueError("prototype alignment (gamma > 0) needs class prototypes: "
                             "run mpafer.prototypes.compute_prototypes(model, batches) first")
        terms["v"] = prototype_alignment_loss(output.image_features, model.prototypes, targets,
                                              config.prototype_mode, config.l1_reduction)
        total = total + config.gamma * terms["v"]
    terms["loss"] = total
    return terms


def gradient_norms(terms: dict[str, torch.Tensor], parameters: Iterable[torch.Tensor],
                   config: LossConfig) -> dict[str, float]:
    """L2 norm, over all ``parameters`` together, of the gradient of each loss term (before beta, gamma).

    Adds ``t`` = token_weight * L_ta + prompt_weight * L_pa, and names ``loss`` ``total``; keeps the
    graph, so the caller may still backpropagate ``terms["loss"]``.
    """
    terms = dict(terms)
    if "ta" in terms and "pa" in terms:
        terms["t"] = config.token_weight * terms["ta"] + config.prompt_weight * terms["pa"]
    terms["total"] = terms.pop("loss")
    params = [p for p in parameters if p.requires_grad]
    norms = {}
    for key, value in terms.items():
        if not value.requires_grad:  # no learnable parameter reaches this term
            norms[key] = 0.0
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        squares = [g.float().pow(2).sum() for g in grads if g is not None]
        norms[key] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms
