"""Per-description statistics over validation faces, stored beside a checkpoint.

A raw patch-to-description cosine means little on its own: some descriptions match every
mouth. Each description's region score (its mean cosine inside the region it was written
for) is therefore compared with its own distribution over validation faces: the mean and
standard deviation stored here give a z-score. ``training/calibrate_descriptions.py``
writes the file; ``load_calibration`` returns None (scores stay uncalibrated, and say so)
when it is absent, unreadable, or was fitted to another model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .description_bank import DESCRIPTION_TEMPLATE, DescriptionBank
from .model import MPAFER

log = logging.getLogger(__name__)

CALIBRATION_FILE = "description_calibration.json"
FORMAT = "mpafer-description-calibration"
VERSION = 1
MIN_STD = 1e-4  # a description whose score never moves must not blow up to huge z-scores

Key = tuple[str, str, str]  # class name, region, description text


def explanation_fingerprint(model: MPAFER) -> str:
    """What the description scores depend on: the frozen backbone, the learnt prompts (they move
    the patch features) and the description template."""
    digest = hashlib.sha256()
    digest.update(str(model.backbone_info.fingerprint).encode())
    digest.update(DESCRIPTION_TEMPLATE.encode())
    for name, tensor in sorted(model.learnable_state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class DescriptionCalibration:
    fingerprint: str
    faces: int  # how many validation faces the statistics come from
    stats: dict[Key, tuple[float, float]]  # mean and std of each description's region score
    method: str = "zscore"  # the scoring the faithfulness check chose (see description_scores)
    source: str = ""
    template: str = DESCRIPTION_TEMPLATE
    extra: dict = field(default_factory=dict)

    def aligned(self, bank: DescriptionBank) -> tuple[np.ndarray, np.ndarray] | None:
        """(K,) means and stds in the bank's order; None when any description has no statistics."""
        try:
            pairs = [self.stats[item.key] for item in bank.items]
        except KeyError:
            return None
        values = np.asarray(pairs, dtype=np.float32).reshape(-1, 2)
        return values[:, 0], np.maximum(values[:, 1], MIN_STD)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "template": self.template,
            "method": self.method, "faces": self.faces, "source": self.source, "extra": self.extra,
            "descriptions": [{"class": c, "region": r, "text": t, "mean": round(m, 6), "std": round(s, 6)}
                             for (c, r, t), (m, s) in self.stats.items()],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "DescriptionCalibration":
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} file of version {VERSION}")
        stats = {(d["class"], d["region"], d["text"]): (float(d["mean"]), float(d["std"]))
                 for d in data["descriptions"]}
        return cls(fingerprint=str(data["fingerprint"]), faces=int(data["faces"]), stats=stats,
                   method=str(data.get("method", "zscore")), source=str(data.get("source", "")),
                   template=str(data.get("template", DESCRIPTION_TEMPLATE)), extra=dict(data.get("extra") or {}))


def fit_calibration(model: MPAFER, bank: DescriptionBank, region_scores: np.ndarray, method: str = "zscore",
                    source: str = "", extra: dict | None = None) -> DescriptionCalibration:
    """Statistics from (F, K) region scores of F validation faces (``DescriptionScorer.evidence``)."""
    scores = np.asarray(region_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(bank.items) or scores.shape[0] < 2:
        raise ValueError(f"need (faces >= 2, {len(bank.items)}) region scores, got {scores.shape}")
    means, stds = scores.mean(0), scores.std(0, ddof=1)
    stats = {item.key: (float(m), float(s)) for item, m, s in zip(bank.items, means, stds)}
    return DescriptionCalibration(explanation_fingerprint(model), int(scores.shape[0]), stats, method, source,
                                  extra=dict(extra or {}))


def _file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path / CALIBRATION_FILE if path.is_dir() or not path.suffix else path


def save_calibration(calibration: DescriptionCalibration, path: str | Path) -> Path:
    """Write to ``path`` (a checkpoint folder, or a .json file), atomically."""
    target = _file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(calibration.to_dict(), indent=1), encoding="utf-8")
    os.replace(tmp, target)
    return target


def load_calibration(path: str | Path, model: MPAFER | None = None) -> DescriptionCalibration | None:
    """The calibration in a checkpoint folder (or file); None when absent, unreadable, or (with
    ``model``) fitted to a different model. Never raises for a bad file: scores fall back."""
    target = _file(path)
    if not target.is_file():
        return None
    try:
        calibration = DescriptionCalibration.from_dict(json.loads(target.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring description calibration %s: %s", target, err)
        return None
    if model is not None and calibration.fingerprint != explanation_fingerprint(model):
        log.warning("ignoring description calibration %s: it was fitted to another model", target)
        return None
    return calibration
