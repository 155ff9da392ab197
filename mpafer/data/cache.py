"""Decoded datasets saved once, so a second load decodes nothing.

An entry is two files: <stem>.images.npy (the uint8 pixels, memory-mapped on load, so even a
10 GB AffectNet cache opens at once) and <stem>.npz (labels, classes, unreadable files). The stem
holds a hash of what produced the entry (adapter, root, split, size, options, and the name,
size and mtime of every input file): editing, adding or removing a file gives a new stem, and
stale entries are simply never read again. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import FaceDataset

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the decoding or the file layout changes


def default_cache_dir() -> Path:
    """$MPAFER_CACHE/datasets, else ~/.cache/mpafer/datasets."""
    base = os.environ.get("MPAFER_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "mpafer") / "datasets"


def cache_key(settings: dict, files: Sequence[Path], root: Path) -> str:
    """Hash of the settings and of each file's relative name, size and mtime."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True).encode())
    for f in files:
        try:
            st = os.stat(f)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except FileNotFoundError:
            stamp = "missing"
        except OSError as exc:
            stamp = f"unreadable:{exc.errno}"
        h.update(f"{os.path.relpath(f, root)}\0{stamp}\n".encode())
    return h.hexdigest()[:20]


def read_cache(stem: Path) -> tuple[FaceDataset, list[str]] | None:
    """The cached dataset and its unreadable-file list, or None when absent or damaged."""
    images_file, table_file = _files(stem)
    if not (images_file.is_file() and table_file.is_file()):
        return None
    try:
        # copy-on-write map: pages load on first touch and the array stays writable
        images = np.asarray(np.load(images_file, mmap_mode="c", allow_pickle=False))
        with np.load(table_file, allow_pickle=False) as z:
            soft = z["soft_labels"] if "soft_labels" in z.files else None
            dataset = FaceDataset(images, z["labels"], soft, tuple(z["classes"].tolist()),
                                  str(z["name"]), str(z["split"]))
            bad = z["bad"].tolist()
    except Exception as exc:  # truncated, foreign or hand-edited files: rebuild them
        log.warning("ignoring damaged dataset cache %s (%s); decoding again", stem, exc)
        return None
    log.info("loaded %r from cache %s", dataset, stem)
    return dataset, bad


def write_cache(stem: Path, dataset: FaceDataset, bad: list[str]) -> None:
    """Save the pixels, then the table; each atomically (temporary file + rename), so a crash
    never leaves a half-written file, and a table only exists beside finished pixels.

    A cache that cannot be written is only a warning: the data itself is fine.
    """
    images_file, table_file = _files(stem)
    table = {"labels": dataset.labels, "classes": np.array(dataset.classes, dtype=str),
             "name": np.array(dataset.name), "split": np.array(dataset.split),
             "bad": np.array(bad, dtype=str).reshape(-1)}
    if dataset.soft_labels is not None:
        table["soft_labels"] = dataset.soft_labels
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(images_file, lambda f: np.save(f, dataset.images, allow_pickle=False))
        _atomic_write(table_file, lambda f: np.savez(f, **table))
    except OSError as exc:
        log.warning("could not write dataset cache %s (%s); continuing without it", stem, exc)


def _files(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".images.npy"), stem.with_name(stem.name + ".npz")


def _atomic_write(path: Path, write) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp",
                                     delete=False) as f:
        tmp = f.name
        try:
            write(f)
        except BaseException:
            f.close()
            os.unlink(tmp)
            raise
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise
