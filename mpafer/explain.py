"""Explanations of one MPA-FER prediction, read off the forward pass that made it.

CGLA already computes a cosine between every patch feature and every class text feature;
on the patch grid that is one heatmap per class, drawn on one colour scale per face, with
the top-k cells that entered the local logit and "why A rather than B" contrasts
(``mpafer.heatmaps``). The same patch features against other text features give more maps
at the cost of one matrix product, not another pass:

* descriptions: each LLM-written description, encoded without its class name
  (``mpafer.description_bank``), scored inside the facial region it talks about and
  calibrated against validation faces (``mpafer.description_scores``);
* probes: any free text a user types, put in the same ``DESCRIPTION_TEMPLATE`` as the
  descriptions (``probe_prompt``), against the patches and against the class features.

Grad-CAM (``mpafer.grad_cam``) and the occlusion check (``mpafer.occlusion``) are
independent views that need more passes; they run only when asked. ``Predictor`` gathers all
of one face's views in one ``mpafer.explanation.FaceExplanation``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from .description_bank import DESCRIPTION_TEMPLATE, DescriptionBank, DescriptionRef, description_bank
from .description_calibration import DescriptionCalibration
from .description_scores import DescriptionScore, DescriptionScorer
from .grad_cam import gradcam, gradcam_layer
from .heatmaps import (HeatScale, contrast_map, contrast_overlay, heatmaps_on_one_scale, normalize_map,
                       outline_cells, overlay, region_activation, topk_cells, upsample)
from .model import MPAFER

__all__ = [
    "DESCRIPTION_TEMPLATE", "DescriptionBank", "DescriptionRef", "DescriptionScore", "Explainer", "HeatScale",
    "ProbeResult", "contrast_map", "contrast_overlay", "description_bank", "gradcam", "gradcam_layer",
    "normalize_map", "outline_cells", "overlay", "probe_prompt", "region_activation", "topk_cells", "upsample",
]

# ---- probes ------------------------------------------------------------------------------------


MAX_PROBE_CHARS = 300
TEMPLATED_PREFIX = "a photo of"  # a probe that already starts like a template is encoded as it is


def probe_prompt(text: str) -> str:
    """What a probe encodes: the words in the face template the descriptions are encoded with
    (``DESCRIPTION_TEMPLATE``, "a photo of a face with {description}."), so a probe and a
    written description compare on equal terms. Spaces are collapsed and the text is cut at
    ``MAX_PROBE_CHARS``; text that already starts with "a photo of" is left as it is."""
    cleaned = " ".join(str(text).split())[:MAX_PROBE_CHARS].strip()
    body = cleaned.rstrip(" .!?;:,")
    if not body:
        raise ValueError("type a description to probe, e.g. 'wrinkled nose'")
    if cleaned.lower().startswith(TEMPLATED_PREFIX):
        return cleaned
    return DESCRIPTION_TEMPLATE.format(description=body)


@dataclass
class ProbeResult:
    text: str  # the words as given (spaces collapsed, cut at MAX_PROBE_CHARS)
    map: np.ndarray  # (h, w) raw patch-to-text cosines
    heatmap: np.ndarray  # (H, W) upsampled and normalised to [0, 1] for display
    mean_activation: float  # mean cosine over the face (or the whole crop without a face mask)
    peak_activation: float
    class_similarity: dict[str, float]  # cosine of the text feature to each class text feature
    prompt: str = ""  # what was encoded: ``text`` in the face template (``probe_prompt``)
    # share of the model's written descriptions whose mean cosine over the same face is lower
    # than the probe's (None without descriptions), and how many there are
    share: float | None = None
    described: int = 0

    @property
    def closest_class(self) -> str:
        return max(self.class_similarity, key=self.class_similarity.get)

    def to_dict(self) -> dict:
        return {"text": self.text, "prompt": self.prompt, "mean_activation": round(self.mean_activation, 4),
                "peak_activation": round(self.peak_activation, 4), "closest_class": self.closest_class,
                "class_similarity": {k: round(v, 4) for k, v in self.class_similarity.items()},
                "share": None if self.share is None else round(self.share, 4), "described": self.described}


# ---- the explainer ---------------------------------------------------------------------------


class Explainer:
    """Maps and scores for faces already run through ``model`` (no forward pass here).

    ``calibration``: per-description statistics (``mpafer.description_calibration``); without
    them description scores are raw cosines and say so (``calibrated`` is False).
    """

    def __init__(self, model: MPAFER, calibration: DescriptionCalibration | None = None,
                 method: str | None = None):
        self.model = model
        # the descriptions' text features, encoded once for this explainer's lifetime (a Predictor's)
        self.bank = description_bank(model)
        self.scorer = DescriptionScorer(model, calibration, method, bank=self.bank)

    @property
    def calibrated(self) -> bool:
        return self.scorer.calibrated

    # ---- class maps ----------------------------------------------------------------------------
    def class_heatmaps(self, maps: torch.Tensor, size: int, classes: Sequence[int] | None = None
                       ) -> dict[str, np.ndarray]:
        """One face's (C, h, w) CGLA maps -> class name -> (size, size) map in [0, 1], all on the
        face's one scale (``heat_scale``): a class that matches weakly everywhere looks cold."""
        chosen = range(maps.shape[0]) if classes is None else classes
        heatmaps, _ = heatmaps_on_one_scale(maps, size, {c: self.model.classes[c] for c in chosen})
        return heatmaps

    @staticmethod
    def heat_scale(maps: torch.Tensor | np.ndarray) -> HeatScale:
        """The cosine range of all of one face's (C, h, w) class maps: the colour bar's ends."""
        return HeatScale.of(maps)

    # ---- descriptions --------------------------------------------------------------------------
    def description_maps(self, patch_features: torch.Tensor) -> torch.Tensor:
        """(N, D) or (B, N, D) patch features -> (K, h, w) or (B, K, h, w) raw description cosines."""
        batched = patch_features.dim() == 3
        patches = patch_features if batched else patch_features[None]
        maps = self.model.similarity_maps(patches, self.bank.features.to(patches.device))
        return maps if batched else maps[0]

    def description_heatmap(self, patch_features: torch.Tensor, masks: Mapping[str, np.ndarray],
                            class_index: int) -> np.ndarray:
        """(h, w) where one face matches a class's descriptions, on the scorer's scale, each
        description counted inside its own region; cells outside all of them get the minimum."""
        evidence = self.scorer.evidence(patch_features, masks)
        heat = self.scorer.class_map(evidence, class_index)[0].numpy()
        floor = np.nanmin(heat) if np.isfinite(heat).any() else 0.0
        return np.nan_to_num(heat, nan=floor).reshape(self.model.grid)

    def region_scores(self, patch_features: torch.Tensor, masks: Mapping[str, np.ndarray], predicted: int,
                      per_region: int = 3, predicted_per_region: int = 2) -> dict[str, list[DescriptionScore]]:
        """Per facial region of one face: the predicted class's best descriptions first, then the
        best of the other classes, each with the class it was written for, its score (calibrated
        when statistics are loaded) and its rank among the region's descriptions."""
        return self.scorer.table(patch_features, masks, predicted, per_region, predicted_per_region)

    def probe(self, patch_features: torch.Tensor, text: str, size: int, class_features: torch.Tensor,
              face_mask: np.ndarray | None = None) -> ProbeResult:
        """Where free ``text`` matches one face's (N, D) patches, and how close it is to each class.

        The text is encoded in the descriptions' face template (``probe_prompt``: "wrinkled nose"
        becomes "a photo of a face with wrinkled nose."; text starting "a photo of" is kept)."""
        cleaned = " ".join(str(text).split())[:MAX_PROBE_CHARS].strip()
        prompt = probe_prompt(cleaned)  # ValueError when there is nothing to probe
        feature = self.model.encode_text([prompt]).to(patch_features.device)  # (1, D), frozen encoder
        grid = self.model.similarity_maps(patch_features[None], feature)[0, 0]  # (h, w)
        values = grid.float().cpu().numpy()
        inside = np.asarray(face_mask, dtype=bool) if face_mask is not None and np.asarray(face_mask).any() \
            else np.ones(values.shape, dtype=bool)
        mean = float(values[inside].mean())
        # the written descriptions measured the same way on the same face: what "a good match" means here
        written = self.description_maps(patch_features).float().cpu().numpy()
        written = written.reshape(written.shape[0], -1)[:, inside.reshape(-1)].mean(axis=1)
        similarity = (feature @ class_features.to(feature.dtype).t())[0].float().cpu().tolist()
        return ProbeResult(
            text=cleaned,
            map=values,
            heatmap=normalize_map(upsample(grid, size)),
            mean_activation=mean,
            peak_activation=float(values.max()),
            class_similarity=dict(zip(self.model.classes, similarity)),
            prompt=prompt,
            share=float((written < mean).mean()) if written.size else None,
            described=int(written.size),
        )
