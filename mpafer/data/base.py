"""The in-memory dataset record every adapter returns, and the error they raise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DatasetError(ValueError):
    """A dataset cannot be loaded as asked; the message says what is wrong and what to do."""


@dataclass(eq=False)
class FaceDataset:
    """Decoded face images with their labels, all in memory.

    images: uint8 (N, S, S, 3) RGB, one square size for all.
    labels: int64 (N,) indices into ``classes``.
    soft_labels: float32 (N, C) label distributions whose rows sum to 1 (FERPlus votes), else None.
    """

    images: np.ndarray
    labels: np.ndarray
    soft_labels: np.ndarray | None
    classes: tuple[str, ...]
    name: str
    split: str

    def __post_init__(self) -> None:
        self.classes = tuple(str(c) for c in self.classes)
        self.labels = np.asarray(self.labels)
        # Adapters are the only producers; checking here catches their bugs at the source
        # instead of as odd accuracy numbers later.
        x, y, c = self.images, self.labels, len(self.classes)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3 or x.shape[1] != x.shape[2]:
            raise DatasetError(f"images must be uint8 (N, S, S, 3), got {x.dtype} {x.shape}")
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
            raise DatasetError(f"labels must be integers of shape ({len(x)},), "
                               f"got {y.dtype} {y.shape}")
        self.labels = y.astype(np.int64, copy=False)
        if len(y) and (y.min() < 0 or y.max() >= c):
            raise DatasetError(f"labels must lie in 0..{c - 1}, got {y.min()}..{y.max()}")
        p = self.soft_labels
        if p is not None:
            if p.dtype != np.float32 or p.shape != (len(x), c):
                raise DatasetError(f"soft_labels must be float32 ({len(x)}, {c}), "
                                   f"got {p.dtype} {p.shape}")
            if len(p) and not np.allclose(p.sum(1), 1.0, atol=1e-4):
                raise DatasetError("soft_labels rows must sum to 1")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        size = self.images.shape[1]
        return (f"FaceDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"size={size}, classes={len(self.classes)}, soft={self.soft_labels is not None})")

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def per_class_counts(self) -> np.ndarray:
        """Number of images of each class, int64 (C,)."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def subset(self, index) -> FaceDataset:
        """The images picked by an integer index array or a boolean mask, in that order."""
        index = np.asarray(index)
        if index.dtype == bool and index.shape != (len(self),):
            raise DatasetError(f"boolean mask must have shape ({len(self)},), got {index.shape}")
        soft = None if self.soft_labels is None else self.soft_labels[index]
        return FaceDataset(self.images[index], self.labels[index], soft, self.classes,
                           self.name, self.split)

    def per_class(self, n: int, seed: int = 0) -> FaceDataset:
        """At most n random images of each class (few-shot subsets), kept in dataset order."""
        rng = np.random.default_rng(seed)
        picked = []
        for c in range(len(self.classes)):
            idx = np.flatnonzero(self.labels == c)
            picked.append(rng.choice(idx, n, replace=False) if len(idx) > n else idx)
        return self.subset(np.sort(np.concatenate(picked)))
