"""The LLM-written descriptions as text features for explanations, without their class name.

Training aligns the model with "a photo of a face that looks {class}, with {description}.";
encoded that way, a description's feature is mostly its class name, and ranking descriptions
on a face mostly ranks classes. For explanations each description is encoded on its own,
in ``DESCRIPTION_TEMPLATE``, by the same frozen text encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import MPAFER

DESCRIPTION_TEMPLATE = "a photo of a face with {description}."


@dataclass(frozen=True)
class DescriptionRef:
    class_index: int
    class_name: str
    region: str
    text: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.class_name, self.region, self.text)


@dataclass(frozen=True)
class DescriptionBank:
    items: tuple[DescriptionRef, ...]
    features: torch.Tensor  # (K, D) normalised, DESCRIPTION_TEMPLATE filled with each description

    @property
    def regions(self) -> np.ndarray:
        return np.array([item.region for item in self.items])

    @property
    def class_indices(self) -> np.ndarray:
        return np.array([item.class_index for item in self.items], dtype=np.int64)


def description_bank(model: MPAFER) -> DescriptionBank:
    """One class-free feature per description of the model's hard-prompt bank, encoded afresh:
    keep it where its lifetime is clear (``Explainer`` holds one for its predictor)."""
    seen: dict[tuple[int, str, str], None] = {}
    for prompt in model.hard_prompts:
        if prompt.granularity == "detailed" and prompt.description and prompt.region:
            seen.setdefault((prompt.class_index, prompt.region, prompt.description), None)
    items = tuple(DescriptionRef(c, model.classes[c], region, text) for c, region, text in seen)
    texts = [DESCRIPTION_TEMPLATE.format(description=item.text) for item in items]
    # plain tensors even under an outer inference_mode, so Grad-CAM passes may use them later
    with torch.inference_mode(False), torch.no_grad():
        features = model.encode_text(texts) if texts else torch.zeros(0, model.embed_dim, device=model.device)
    return DescriptionBank(items, F.normalize(features.float(), dim=-1).detach())


def description_weights(bank: DescriptionBank, masks: dict[str, np.ndarray]) -> np.ndarray:
    """(K, N) float: each description's region mask on the patch grid, flattened (zeros where the
    face has no such region). A description of the whole face uses the "face" mask."""
    any_mask = next(iter(masks.values()), None)
    cells = 0 if any_mask is None else int(np.asarray(any_mask).size)
    weights = np.zeros((len(bank.items), cells), dtype=np.float32)
    for row, item in enumerate(bank.items):
        mask = masks.get(item.region)
        if mask is not None:
            weights[row] = np.asarray(mask, dtype=np.float32).reshape(-1)
    return weights
