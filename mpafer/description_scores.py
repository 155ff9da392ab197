"""How well each description matches the region of a face it talks about, on a meaningful scale.

A description's *region score* is the mean of its patch cosines inside the mask of its region.
Three scorings (``METHODS``):

* ``raw``: the region score itself (what is shown when no calibration is stored);
* ``zscore``: (region score - its mean over validation faces) / its std there
  (``mpafer.description_calibration``): how unusual this match is for this description;
* ``region_minus_face``: region score minus the same description's mean over the whole face:
  does the description match its region more than the rest of this face? (needs no statistics)

The same transform applied cell by cell gives maps whose region means are the scores; a
class's *description map* averages, at each cell, its descriptions whose region covers it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from .description_bank import DescriptionBank, description_bank, description_weights
from .description_calibration import DescriptionCalibration
from .model import MPAFER

METHODS = ("raw", "zscore", "region_minus_face")
DEFAULT_METHOD = "zscore"  # chosen with training/bench_faithfulness.py; falls back to raw without statistics


@dataclass(frozen=True)
class DescriptionScore:
    region: str
    class_name: str  # the class the description was written for
    text: str
    score: float  # on ``method``'s scale (see the module docstring)
    raw: float  # mean patch-to-description cosine inside the region
    rank: int  # 1 = best of all descriptions written for this region, by ``score``
    of: int  # how many descriptions were scored in this region
    predicted: bool  # written for the predicted class
    method: str = "raw"

    @property
    def calibrated(self) -> bool:
        return self.method != "raw"

    def to_dict(self) -> dict:
        return {"region": self.region, "class": self.class_name, "text": self.text,
                "score": round(self.score, 4), "raw": round(self.raw, 4), "method": self.method,
                "calibrated": self.calibrated, "rank": self.rank, "of": self.of, "predicted": self.predicted}


@dataclass
class DescriptionEvidence:
    """Every description against a batch of faces that share one set of region masks."""

    cosines: torch.Tensor  # (B, K, N) patch-to-description cosines
    region: torch.Tensor  # (B, K) mean inside each description's region
    face: torch.Tensor  # (B, K) mean inside the face mask
    weights: torch.Tensor  # (K, N) each description's region mask


class DescriptionScorer:
    """Scores descriptions on faces with ``method``; without usable statistics ``zscore`` becomes
    ``raw`` and ``calibrated`` is False, so callers can say the scores are uncalibrated."""

    def __init__(self, model: MPAFER, calibration: DescriptionCalibration | None = None,
                 method: str | None = None, bank: DescriptionBank | None = None):
        method = method or (calibration.method if calibration is not None else DEFAULT_METHOD)
        if method not in METHODS:
            raise ValueError(f"unknown description scoring {method!r} (expected one of {METHODS})")
        self.model = model
        # ``bank``: share one encoding between scorers of the same model (else encoded here)
        self.bank: DescriptionBank = bank if bank is not None else description_bank(model)
        self.requested = method
        stats = calibration.aligned(self.bank) if calibration is not None else None
        self._mean = self._std = None
        if stats is not None:
            self._mean, self._std = (torch.from_numpy(a) for a in stats)
        self.method = "raw" if method == "zscore" and stats is None else method

    @property
    def calibrated(self) -> bool:
        return self.method != "raw"

    def evidence(self, patch_features: torch.Tensor, masks: Mapping[str, np.ndarray]) -> DescriptionEvidence:
        """(N, D) or (B, N, D) patch features of faces sharing ``masks`` (on the model's grid)."""
        patches = patch_features if patch_features.dim() == 3 else patch_features[None]
        maps = self.model.similarity_maps(patches, self.bank.features.to(patches.device))
        cosines = maps.flatten(2).float().cpu()
        weights = torch.from_numpy(description_weights(self.bank, dict(masks)))
        face = masks.get("face")
        face = torch.ones(cosines.shape[-1]) if face is None else torch.from_numpy(
            np.asarray(face, dtype=np.float32).reshape(-1))
        region = torch.einsum("bkn,kn->bk", cosines, weights) / weights.sum(-1).clamp_min(1e-8)
        face_mean = cosines @ face / face.sum().clamp_min(1e-8)
        return DescriptionEvidence(cosines, region, face_mean, weights)

    def _shift_scale(self, evidence: DescriptionEvidence) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) offset and (K,) divisor such that calibrated = (raw - offset) / divisor."""
        batch, count = evidence.region.shape
        if self.method == "zscore":
            return self._mean.expand(batch, count), self._std
        if self.method == "region_minus_face":
            return evidence.face, torch.ones(count)
        return torch.zeros(batch, count), torch.ones(count)

    def region_scores(self, evidence: DescriptionEvidence) -> torch.Tensor:
        """(B, K) each description's region score on this scorer's scale."""
        offset, divisor = self._shift_scale(evidence)
        return (evidence.region - offset) / divisor

    def class_map(self, evidence: DescriptionEvidence, class_index: int) -> torch.Tensor:
        """(B, N): at each cell the mean calibrated cosine of the class's descriptions whose region
        covers it; NaN where none does (outside every region of that class)."""
        offset, divisor = self._shift_scale(evidence)
        rows = torch.from_numpy(np.flatnonzero(self.bank.class_indices == class_index))
        values = (evidence.cosines[:, rows] - offset[:, rows, None]) / divisor[rows, None]
        weights = evidence.weights[rows]
        cover = weights.sum(0)
        heat = torch.einsum("bkn,kn->bn", values, weights) / cover.clamp_min(1e-8)
        return torch.where(cover > 0, heat, torch.full_like(heat, float("nan")))

    def table(self, patch_features: torch.Tensor, masks: Mapping[str, np.ndarray], predicted: int,
              per_region: int = 3, predicted_per_region: int = 2) -> dict[str, list[DescriptionScore]]:
        """For one face, per region: the predicted class's ``predicted_per_region`` best descriptions
        first, then the ``per_region`` best of the other classes, each with its rank among all of
        the region's descriptions (so a predicted-class description that matches poorly says so)."""
        if not self.bank.items:
            return {}
        evidence = self.evidence(patch_features, masks)
        scores = self.region_scores(evidence)[0].numpy()
        raw = evidence.region[0].numpy()
        regions, classes = self.bank.regions, self.bank.class_indices
        out: dict[str, list[DescriptionScore]] = {}
        for region, mask in masks.items():
            rows = np.flatnonzero(regions == region)
            if rows.size == 0 or not np.asarray(mask).any():
                continue
            ordered = rows[np.argsort(-scores[rows], kind="stable")]
            rank = {int(row): position + 1 for position, row in enumerate(ordered)}
            own = [r for r in ordered if classes[r] == predicted][:predicted_per_region]
            others = [r for r in ordered if classes[r] != predicted][:per_region]
            out[region] = [
                DescriptionScore(region, self.bank.items[r].class_name, self.bank.items[r].text,
                                 float(scores[r]), float(raw[r]), rank[int(r)], int(rows.size),
                                 bool(classes[r] == predicted), self.method)
                for r in own + others
            ]
        return out


@torch.no_grad()
def region_scores_of_faces(scorer: DescriptionScorer, images: np.ndarray, masks: Mapping[str, np.ndarray],
                           batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """(F, K) raw region scores of uint8 dataset faces that share ``masks``: what
    ``mpafer.description_calibration.fit_calibration`` takes."""
    from tqdm.auto import tqdm

    from .dataset_faces import dataset_inputs

    rows = []
    for start in tqdm(range(0, len(images), batch_size), desc="description scores", unit="batch",
                      disable=not progress, leave=False):
        _, patches = scorer.model.encode_image(dataset_inputs(scorer.model, images[start:start + batch_size]))
        rows.append(scorer.evidence(patches, masks).region.numpy())
    return np.concatenate(rows) if rows else np.zeros((0, len(scorer.bank.items)), dtype=np.float32)
