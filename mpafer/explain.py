"""Explanations of one MPA-FER prediction, read off the forward pass that made it.

CGLA already computes a cosine between every patch feature and every class text feature;
on the patch grid that is one heatmap per class. The same patch features against other
text features give more maps at the cost of one matrix product, not another pass:

* description maps: each LLM-written description (the "detailed" hard prompts) against
  the patches, scored inside the facial region the description talks about;
* probes: any free text a user types, against the patches and against the class features.

Grad-CAM (the ``grad-cam`` package) is a second, independent view that needs a backward
pass; it runs only when asked.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .model import MPAFER

# ---- display helpers ---------------------------------------------------------------------


def upsample(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(..., h, w) patch-grid maps -> (..., H, W), bilinear. The grid tiles the whole crop."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def normalize_map(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """Min-max to [0, 1] for display; a flat map becomes all zeros (nothing stands out)."""
    array = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    array = np.nan_to_num(array.astype(np.float32, copy=False))
    if array.size == 0:
        return array
    low, high = float(array.min()), float(array.max())
    if high - low < 1e-8:
        return np.zeros_like(array)
    return (array - low) / (high - low)


def overlay(crop: Image.Image, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> Image.Image:
    """Blend a [0, 1] heatmap, coloured with a matplotlib colormap, onto ``crop`` (RGB out)."""
    from matplotlib import colormaps  # no pyplot: no GUI backend, safe in server threads

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = crop if crop.mode == "RGB" else crop.convert("RGB")
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    if heat.shape != (base.height, base.width):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(base.size, Image.Resampling.BILINEAR))
    colours = colormaps[cmap](heat)[..., :3]  # (H, W, 3) floats in [0, 1]
    pixels = np.asarray(base, dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * pixels + alpha * colours
    return Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def region_activation(heatmap: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean of an (H, W) map inside each region mask given on a coarser (h, w) grid."""
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))
    out = {}
    for name, mask in masks.items():
        pooled = F.adaptive_avg_pool2d(heat[None, None], mask.shape)[0, 0].numpy()
        weights = np.asarray(mask, dtype=np.float32)
        out[name] = float((pooled * weights).sum() / max(weights.sum(), 1e-8))
    return out


# ---- the description bank, as text features ---------------------------------------------


@dataclass(frozen=True)
class DescriptionRef:
    class_index: int
    class_name: str
    region: str
    text: str


@dataclass(frozen=True)
class DescriptionBank:
    items: tuple[DescriptionRef, ...]
    features: torch.Tensor  # (K, D) normalised: the mean of each description's detailed prompts


_BANKS: "weakref.WeakKeyDictionary[MPAFER, DescriptionBank]" = weakref.WeakKeyDictionary()
_BANKS_LOCK = threading.Lock()


def description_bank(model: MPAFER) -> DescriptionBank:
    """Each description's text feature, computed once per model and cached.

    A description appears in one "detailed" hard prompt per template; its feature is the
    mean of those prompts' features (read from the model's own cache, which checkpoints
    store), so the maps use exactly the text the model was aligned with.
    """
    with _BANKS_LOCK:
        bank = _BANKS.get(model)
        if bank is None:
            bank = _build_bank(model)
            _BANKS[model] = bank
        return bank


def _build_bank(model: MPAFER) -> DescriptionBank:
    features = model.hard_text_features()
    groups: dict[tuple[int, str, str], list[int]] = {}
    for index, prompt in enumerate(model.hard_prompts):
        if prompt.granularity == "detailed" and prompt.description and prompt.region:
            groups.setdefault((prompt.class_index, prompt.region, prompt.description), []).append(index)
    items = tuple(DescriptionRef(c, model.classes[c], region, text) for c, region, text in groups)
    if not items:
        return DescriptionBank((), features.new_zeros(0, features.shape[-1]))
    stacked = torch.stack([features[rows].mean(0) for rows in groups.values()])
    return DescriptionBank(items, F.normalize(stacked.float(), dim=-1).detach())


# ---- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DescriptionScore:
    region: str
    class_name: str
    text: str
    score: float  # mean patch-to-description cosine inside the region
    rank: int  # 1 = best-matching of all descriptions written for this region
    of: int  # how many descriptions were scored in this region
    predicted: bool  # written for the predicted class

    def to_dict(self) -> dict:
        return {"region": self.region, "class": self.class_name, "text": self.text,
                "score": round(self.score, 4), "rank": self.rank, "of": self.of, "predicted": self.predicted}


@dataclass
class ProbeResult:
    text: str
    map: np.ndarray  # (h, w) raw patch-to-text cosines
    heatmap: np.ndarray  # (H, W) upsampled and normalised to [0, 1] for display
    mean_activation: float  # mean cosine over the face (or the whole crop without a face mask)
    peak_activation: float
    class_similarity: dict[str, float]  # cosine of the text feature to each class text feature

    @property
    def closest_class(self) -> str:
        return max(self.class_similarity, key=self.class_similarity.get)

    def to_dict(self) -> dict:
        return {"text": self.text, "mean_activation": round(self.mean_activation, 4),
                "peak_activation": round(self.peak_activation, 4), "closest_class": self.closest_class,
                "class_similarity": {k: round(v, 4) for k, v in self.class_similarity.items()}}


# ---- the explainer ---------------------------------------------------------------------------

MAX_PROBE_CHARS = 300


class Explainer:
    """Maps and scores for faces already run through ``model`` (no forward pass here)."""

    def __init__(self, model: MPAFER):
        self.model = model
        self.bank = description_bank(model)
        self._regions = np.array([item.region for item in self.bank.items])
        self._classes = np.array([item.class_index for item in self.bank.items])

    def class_heatmaps(self, maps: torch.Tensor, size: int, classes: Sequence[int] | None = None
                       ) -> dict[str, np.ndarray]:
        """One face's (C, h, w) CGLA maps -> class name -> (size, size) map in [0, 1].

        Each map is min-max normalised on its own: it shows *where* a class matches, not how
        strongly (the class probabilities say that).
        """
        chosen = range(maps.shape[0]) if classes is None else classes
        up = upsample(maps[list(chosen)], size)
        return {self.model.classes[c]: normalize_map(m) for c, m in zip(chosen, up)}

    def description_maps(self, patch_features: torch.Tensor) -> torch.Tensor:
        """(N, D) or (B, N, D) patch features -> (K, h, w) or (B, K, h, w) description maps."""
        batched = patch_features.dim() == 3
        patches = patch_features if batched else patch_features[None]
        maps = self.model.similarity_maps(patches, self.bank.features.to(patches.device))
        return maps if batched else maps[0]

    def region_scores(self, patch_features: torch.Tensor, masks: Mapping[str, np.ndarray], predicted: int,
                      per_region: int = 3, predicted_per_region: int = 2) -> dict[str, list[DescriptionScore]]:
        """The descriptions that best match each facial region of one face.

        A description is scored by its map's mean inside the mask of the region it was
        written about (``masks`` from ``mpafer.faces.region_masks`` on the model's grid).
        Each region lists its ``per_region`` best descriptions of any class plus the
        ``predicted_per_region`` best of the predicted class, sorted by score, each with its
        rank among all of the region's descriptions, so a favoured description that
        matches poorly still shows that it does.
        """
        if not self.bank.items:
            return {}
        maps = self.description_maps(patch_features).flatten(1).float().cpu().numpy()  # (K, h*w)
        out: dict[str, list[DescriptionScore]] = {}
        for region, mask in masks.items():
            rows = np.flatnonzero(self._regions == region)
            weights = np.asarray(mask, dtype=np.float32).reshape(-1)
            if rows.size == 0 or weights.sum() <= 0:
                continue
            scores = maps[rows] @ weights / weights.sum()
            order = np.argsort(-scores, kind="stable")
            rank = {int(row): position + 1 for position, row in enumerate(rows[order])}
            best = list(rows[order][:per_region])
            own = [row for row in rows[order] if self._classes[row] == predicted][:predicted_per_region]
            chosen = sorted(set(best) | set(own), key=lambda row: rank[int(row)])
            score_of = dict(zip(rows.tolist(), scores.tolist()))
            out[region] = [
                DescriptionScore(region, self.bank.items[row].class_name, self.bank.items[row].text,
                                 float(score_of[int(row)]), rank[int(row)], int(rows.size),
                                 bool(self._classes[row] == predicted))
                for row in chosen
            ]
        return out

    def probe(self, patch_features: torch.Tensor, text: str, size: int, class_features: torch.Tensor,
              face_mask: np.ndarray | None = None) -> ProbeResult:
        """Where free ``text`` matches one face's (N, D) patches, and how close it is to each class."""
        cleaned = " ".join(str(text).split())[:MAX_PROBE_CHARS]
        if not cleaned:
            raise ValueError("type a description to probe, e.g. 'wrinkled nose'")
        feature = self.model.encode_text([cleaned]).to(patch_features.device)  # (1, D), frozen encoder
        grid = self.model.similarity_maps(patch_features[None], feature)[0, 0]  # (h, w)
        values = grid.float().cpu().numpy()
        if face_mask is not None and np.asarray(face_mask).any():
            inside = values[np.asarray(face_mask, dtype=bool)]
        else:
            inside = values.reshape(-1)
        similarity = (feature @ class_features.to(feature.dtype).t())[0].float().cpu().tolist()
        return ProbeResult(
            text=cleaned,
            map=values,
            heatmap=normalize_map(upsample(grid, size)),
            mean_activation=float(inside.mean()),
            peak_activation=float(values.max()),
            class_similarity=dict(zip(self.model.classes, similarity)),
        )


# ---- Grad-CAM ----------------------------------------------------------------------------------


class _Logits(nn.Module):
    """The prompted model as a plain classifier (images -> logits), as Grad-CAM expects."""

    def __init__(self, model: MPAFER):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the weights are frozen: without a leaf that needs gradients there is no graph to
        # carry them back to the hooked block
        images = images.detach().requires_grad_(True)
        return self.model(images, with_text_tokens=False).logits


def _vit_reshape(grid: tuple[int, int], batch_first: bool):
    """Block output (B, 1 + N [+ prompts], W) -> (B, W, h, w): drop the class token and any
    visual prompts still appended at that block, keep the N patch tokens."""
    count = grid[0] * grid[1]

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if not batch_first:
            tokens = tokens.transpose(0, 1)
        patches = tokens[:, 1:1 + count]
        return patches.reshape(patches.shape[0], *grid, patches.shape[-1]).permute(0, 3, 1, 2)

    return reshape


def gradcam(model: MPAFER, images: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """Grad-CAM on the last ViT block for each (preprocessed) image and its target class.

    Returns (B, S, S) maps in [0, 1] at the model's input size. The model's weights are
    frozen, so the input is what requires gradients; nothing is learnt.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if images.shape[0] != len(targets):
        raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
    visual = model.clip.visual
    reshape = _vit_reshape(model.grid, getattr(visual.transformer, "batch_first", True))
    # the backward pass also reaches the learnable prompts: leave their .grad as it was
    saved = {p: p.grad for p in model.parameters() if p.requires_grad}
    try:
        with torch.enable_grad(), GradCAM(_Logits(model), [visual.transformer.resblocks[-1]],
                                          reshape_transform=reshape) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    finally:
        for param, grad in saved.items():
            param.grad = grad
    return np.asarray(maps, dtype=np.float32)
