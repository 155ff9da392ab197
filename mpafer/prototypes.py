"""Class prototypes: the mean global feature of each class from the frozen, un-prompted encoder."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .model import MPAFER


@torch.no_grad()
def compute_prototypes(model: MPAFER, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       per_class: int | None = None, progress: bool = True, store: bool = True) -> torch.Tensor:
    """Average frozen CLIP features per class over ``batches`` of (model-ready images, labels).

    Labels are class indices, or probabilities (their argmax is used). With ``per_class`` only the
    first N images of each class count, and iteration stops once every class has N.
    Returns (C, D) normalised prototypes and, with ``store``, keeps them on the model.
    """
    num_classes = model.num_classes
    sums = None
    counts = torch.zeros(num_classes, dtype=torch.long)
    bar = tqdm(batches, desc="prototypes", unit="batch", disable=not progress)
    for images, labels in bar:
        labels = labels.argmax(-1) if labels.dim() == 2 else labels
        labels = labels.cpu().long()
        if per_class is not None:
            keep = torch.zeros_like(labels, dtype=torch.bool)
            seen = counts.clone()
            for i, label in enumerate(labels.tolist()):
                if seen[label] < per_class:
                    keep[i] = True
                    seen[label] += 1
            if not keep.any():
                if bool((counts >= per_class).all()):
                    break
                continue
            images, labels = images[keep.to(images.device)], labels[keep]
        features, _ = model.encode_image(images.to(model.device), prompted=False)
        features = features.float().cpu()
        if sums is None:
            sums = torch.zeros(num_classes, features.shape[1])
        sums.index_add_(0, labels, features)
        counts += torch.bincount(labels, minlength=num_classes)
        if per_class is not None and bool((counts >= per_class).all()):
            break
    empty = [model.classes[i] for i in range(num_classes) if counts[i] == 0]
    if sums is None or empty:
        raise ValueError(f"no images for classes {empty or list(model.classes)}: cannot build their prototypes")
    prototypes = F.normalize(sums / counts[:, None], dim=-1)
    if store:
        model.prototypes = prototypes.to(model.device)
    return prototypes
