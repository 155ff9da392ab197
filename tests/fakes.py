"""Small generated data sets for tests that need *some* faces (never real pixels)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
PER_CLASS = {"train": 6, "valid": 2, "test": 2}  # 48 training faces: 6 steps of 8 per epoch


def make_ferplus_pack(root: Path, per_class: dict[str, int] = PER_CLASS, seed: int = 0) -> Path:
    """A small pack in the shared FERPlus format: train_1..3.npz, valid.npz, test.npz."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    common = {"classes": np.array(FERPLUS_CLASSES), "vote_names": np.array([*FERPLUS_CLASSES, "unknown", "NF"]),
              "fer2013_classes": np.array(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])}

    def split(name: str) -> dict[str, np.ndarray]:
        y = np.repeat(np.arange(8), per_class[name])
        n = len(y)
        votes = np.zeros((n, 10), np.uint8)
        votes[np.arange(n), y] = 7
        votes[np.arange(n), (y + 1) % 8] = 3  # a second opinion, so soft labels are not one-hot
        x = rng.integers(0, 60, (n, 48, 48)).astype(np.uint8) + (20 * y)[:, None, None].astype(np.uint8)
        for i, label in enumerate(y):
            x[i, 6 * label:6 * label + 6] = 250
        return {f"{name}_x": x, f"{name}_votes": votes, f"{name}_y": y.astype(np.int8),
                f"{name}_fer2013_y": np.zeros(n, np.int8), f"{name}_row": np.arange(n, dtype=np.int32)}

    train = split("train")
    parts = np.array_split(np.arange(len(train["train_y"])), 3)
    for k, rows in enumerate(parts, start=1):
        np.savez(root / f"train_{k}.npz", **{key: v[rows] for key, v in train.items()}, **common)
    for name in ("valid", "test"):
        np.savez(root / f"{name}.npz", **split(name), **common)
    return root
