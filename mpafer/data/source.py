"""What an adapter hands the loader: the files that identify the data, and how to decode it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .base import DatasetError, FaceDataset
from .decode import ImageRef, decode_all


class Source(Protocol):
    """One split of one dataset, found on disk but not yet decoded."""

    root: Path

    @property
    def files(self) -> Sequence[Path]:
        """Every file the result depends on; their names, sizes and mtimes key the cache."""

    def read(self, image_size: int | None, progress: bool) -> tuple[FaceDataset, list[str]]:
        """Decode it: the dataset of readable images, and 'name (reason)' per unreadable one."""


@dataclass
class FileSource:
    """Image files listed by a folder adapter, with their labels."""

    name: str
    split: str
    root: Path
    refs: list[ImageRef]
    labels: np.ndarray
    classes: tuple[str, ...]
    soft_labels: np.ndarray | None = None
    index_files: tuple[Path, ...] = ()  # label lists and CSVs

    def __post_init__(self) -> None:
        if not self.refs:
            raise DatasetError(f"no labelled images found for {self.name} split {self.split!r} "
                               f"in {self.root}")

    @property
    def files(self) -> list[Path]:
        return [*self.index_files, *(r.path for r in self.refs)]

    def read(self, image_size: int | None, progress: bool) -> tuple[FaceDataset, list[str]]:
        images, good, bad = decode_all(self.refs, image_size, root=self.root, progress=progress,
                                       desc=f"{self.name} {self.split}")
        soft = None if self.soft_labels is None else self.soft_labels[good]
        dataset = FaceDataset(images, self.labels[good], soft, self.classes, self.name, self.split)
        return dataset, bad
