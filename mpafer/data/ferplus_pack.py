"""FERPlus as the shared .npz pack: FER2013 48x48 pixels with FER+ votes (see the pack's README.md).

Only majority-labelled images are kept (y >= 0); soft labels are the normalised emotion votes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .base import DatasetError, FaceDataset
from .classes import FERPLUS_CLASSES
from .decode import resize_square
from .ferplus_votes import vote_distribution

NATIVE_SIZE = 48
PARTS = {
    "train": ("train_1.npz", "train_2.npz", "train_3.npz"),  # consecutive rows, in this order
    "valid": ("valid.npz",),
    "test": ("test.npz",),
}


class FerplusPackSource:
    def __init__(self, root: Path, split: str) -> None:
        if split not in PARTS:
            raise DatasetError(f"ferplus pack has splits {', '.join(PARTS)}; got {split!r}")
        if not root.is_dir():
            raise DatasetError(f"ferplus pack folder {root} does not exist")
        self.root, self.split = root, split
        self.parts = [root / name for name in PARTS[split]]
        missing = [p.name for p in self.parts if not p.is_file()]
        if missing:
            raise DatasetError(
                f"ferplus pack in {root} is missing {', '.join(missing)}; split {split!r} needs "
                f"{', '.join(PARTS[split])} (one LZMA .npz per part, see the pack's README.md)")

    @property
    def files(self) -> list[Path]:
        return self.parts

    def read(self, image_size: int | None, progress: bool) -> tuple[FaceDataset, list[str]]:
        s = self.split
        xs, votes, ys, classes = [], [], [], None
        for part in self.parts:
            try:
                with np.load(part, allow_pickle=False) as z:
                    y = z[f"{s}_y"].astype(np.int64)
                    keep = y >= 0  # -1: no majority, or majority for unknown / not-a-face
                    xs.append(z[f"{s}_x"][keep])
                    votes.append(z[f"{s}_votes"][keep])
                    ys.append(y[keep])
                    classes = tuple(z["classes"].tolist())
            except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise DatasetError(f"cannot read ferplus pack part {part}: {exc}") from exc
        if classes != FERPLUS_CLASSES:
            raise DatasetError(f"ferplus pack classes {classes} differ from {FERPLUS_CLASSES}")
        x = np.concatenate(xs)
        if x.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE):
            raise DatasetError(f"ferplus pack images are {x.shape[1:]}, expected 48x48")
        images = _to_rgb(x, image_size, progress, desc=f"ferplus {s}")
        return FaceDataset(images, np.concatenate(ys), vote_distribution(np.concatenate(votes)),
                           FERPLUS_CLASSES, "ferplus", s), []


def _to_rgb(gray: np.ndarray, size: int | None, progress: bool, desc: str) -> np.ndarray:
    """(N, 48, 48) grayscale to (N, S, S, 3), resizing in grayscale first (a third of the work)."""
    if size is not None and size != gray.shape[1]:
        out = np.empty((len(gray), size, size), np.uint8)
        for i in tqdm(range(len(gray)), desc=desc, unit="img", disable=not progress, leave=False):
            out[i] = np.asarray(resize_square(Image.fromarray(gray[i]), size))
        gray = out
    return np.repeat(gray[..., None], 3, axis=3)
