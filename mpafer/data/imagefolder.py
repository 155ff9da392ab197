"""Generic class-per-folder layout: <root>/<split>/<class>/<image files>.

Classes are the sorted folder names, or the given names in the given order. The split folder
may also be spelled train/training, valid/val/validation, test/testing, in any case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .base import DatasetError
from .decode import ImageRef
from .source import FileSource

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
SPLIT_NAMES = {
    "train": ("train", "training"),
    "valid": ("valid", "val", "validation"),
    "test": ("test", "testing"),
}


def open_source(root: Path, split: str, classes: Sequence[str] | None = None,
                name: str = "imagefolder") -> FileSource:
    split_dir = find_split_dir(root, split)
    folders = class_folders(split_dir)
    if classes is None:
        classes = tuple(sorted(folders))
        index = {f: i for i, f in enumerate(classes)}
    else:
        classes = tuple(classes)
        wanted = {c.lower(): i for i, c in enumerate(classes)}
        missing = sorted(set(wanted) - {f.lower() for f in folders})
        if missing:
            raise DatasetError(f"{split_dir} has no folder for class(es) {', '.join(missing)}")
        index = {f: wanted.get(f.lower()) for f in folders}
    return scan(name, split, root, split_dir, classes, index.get)


def scan(name: str, split: str, root: Path, split_dir: Path, classes: tuple[str, ...],
         label_of: Callable[[str], int | None]) -> FileSource:
    """List the images of every class folder; a folder that label_of maps to None is an error."""
    folders = class_folders(split_dir)
    unknown = sorted(f for f in folders if label_of(f) is None)
    if unknown:
        raise DatasetError(f"{split_dir} has folders that are not classes of {name}: "
                           f"{', '.join(unknown)} (classes: {', '.join(classes)})")
    refs, labels = [], []
    for folder in sorted(folders):
        for path in sorted(folders[folder].iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                refs.append(ImageRef(path))
                labels.append(label_of(folder))
    return FileSource(name, split, root, refs, np.array(labels, dtype=np.int64), classes)


def find_split_dir(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    names = SPLIT_NAMES.get(split, (split,))
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name.lower() in names:
            return d
    present = sorted(d.name for d in root.iterdir() if d.is_dir())
    raise DatasetError(f"no folder for split {split!r} in {root} (looked for {', '.join(names)}; "
                       f"found {', '.join(present) or 'no folders'})")


def class_folders(split_dir: Path) -> dict[str, Path]:
    return {d.name: d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")}
