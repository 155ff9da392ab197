"""load_dataset: pick the adapter, reuse the decoded cache when it matches, report unreadable files."""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Sequence

from . import affectnet, ferplus_folder, imagefolder, rafdb
from .base import DatasetError, FaceDataset
from .cache import cache_key, default_cache_dir, read_cache, write_cache
from .ferplus_pack import FerplusPackSource
from .source import Source

log = logging.getLogger(__name__)

ADAPTERS = {
    "ferplus": FerplusPackSource,
    "ferplus-folder": ferplus_folder.open_source,
    "rafdb": rafdb.open_source,
    "affectnet7": partial(affectnet.open_source, n_classes=7),
    "affectnet8": partial(affectnet.open_source, n_classes=8),
    "imagefolder": imagefolder.open_source,
}
SPLIT_ALIASES = {"training": "train", "val": "valid", "validation": "valid", "testing": "test"}
SHOWN_BAD = 5  # unreadable files named in the error message


def load_dataset(name: str, root: str | os.PathLike, split: str, image_size: int | None = 112, *,
                 classes: Sequence[str] | None = None, cache_dir: str | os.PathLike | bool | None = None,
                 skip_bad: bool = False, progress: bool = True) -> FaceDataset:
    """Load one split of a face dataset as uint8 RGB images of image_size x image_size.

    name: one of ADAPTERS. split: train, valid or test (val, validation, ... accepted).
    image_size: square side every image is resized to once; None keeps the native size
      (48 for FERPlus), which must then be one square size for all images.
    classes: label order for 'imagefolder' (default: sorted folder names).
    cache_dir: where decoded arrays are kept (default $MPAFER_CACHE/datasets or
      ~/.cache/mpafer/datasets); False turns caching off.
    skip_bad: drop missing or corrupt image files with a warning instead of raising DatasetError.
    """
    if name not in ADAPTERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(ADAPTERS)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DatasetError(f"image_size must be a positive int or None, got {image_size!r}")
    if classes is not None and name != "imagefolder":
        raise DatasetError(f"classes can only be given for 'imagefolder'; {name} has fixed classes")
    split = SPLIT_ALIASES.get(split.lower(), split.lower())
    root = Path(root).expanduser().resolve()
    kwargs = {"classes": classes} if classes is not None else {}
    source: Source = ADAPTERS[name](root, split, **kwargs)

    cached, stem = None, None
    if cache_dir is not False:
        settings = {"adapter": name, "root": str(root), "split": split, "image_size": image_size,
                    "classes": list(classes) if classes is not None else None}
        key = cache_key(settings, source.files, root)
        stem = Path(cache_dir or default_cache_dir()).expanduser() / f"{name}-{split}-{key}"
        cached = read_cache(stem)
    if cached is not None:
        dataset, bad = cached
    else:
        dataset, bad = source.read(image_size, progress)
        if stem is not None:  # saved even with unreadable files: a rerun with skip_bad is instant
            write_cache(stem, dataset, bad)

    if bad:
        total = len(dataset) + len(bad)
        if not skip_bad:
            shown = ", ".join(bad[:SHOWN_BAD]) + (", ..." if len(bad) > SHOWN_BAD else "")
            raise DatasetError(f"{len(bad)} of {total} images could not be read in {root}: first few: "
                               f"{shown}; pass --skip-bad / skip_bad=True to continue without them")
        log.warning("%s %s: skipped %d of %d images that could not be read (first: %s)",
                    name, split, len(bad), total, bad[0])
    return dataset
