"""FERPlus in its official layout: <root>/FER2013{Train,Valid,Test}/label.csv plus the PNGs.

label.csv rows (no header): name,box,neutral,happiness,surprise,sadness,anger,disgust,fear,
contempt,unknown,NF. The box is always the whole 48x48 image, so it is not used. Labels follow
the same majority rule as the pack; excluded images are never decoded.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .base import DatasetError
from .classes import FERPLUS_CLASSES
from .decode import ImageRef
from .ferplus_votes import majority_labels, vote_distribution
from .source import FileSource

SPLIT_DIRS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
N_VOTES = 10


def open_source(root: Path, split: str) -> FileSource:
    if split not in SPLIT_DIRS:
        raise DatasetError(f"ferplus-folder has splits {', '.join(SPLIT_DIRS)}; got {split!r}")
    folder = root / SPLIT_DIRS[split]
    label_file = folder / "label.csv"
    if not label_file.is_file():
        raise DatasetError(f"{label_file} not found: ferplus-folder expects <root>/"
                           f"{SPLIT_DIRS[split]}/label.csv with the PNGs beside it")
    names, votes = _read_label_csv(label_file)
    labels = majority_labels(votes)
    keep = np.flatnonzero(labels >= 0)
    return FileSource("ferplus-folder", split, root, [ImageRef(folder / names[i]) for i in keep],
                      labels[keep], FERPLUS_CLASSES, vote_distribution(votes[keep]), (label_file,))


def _read_label_csv(path: Path) -> tuple[list[str], np.ndarray]:
    names, votes = [], []
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            counts = row[2:2 + N_VOTES]
            if line_no == 1 and counts and counts[0].strip().lower() == "neutral":
                continue  # tolerate a header row
            if len(row) < 2 + N_VOTES or not all(c.strip().isdigit() for c in counts):
                raise DatasetError(f"{path} line {line_no}: expected name,box and {N_VOTES} vote "
                                   f"counts, got {row!r}")
            names.append(row[0].strip())
            votes.append([int(c) for c in counts])
    if not names:
        raise DatasetError(f"{path} holds no rows")
    return names, np.array(votes, dtype=np.int64)
