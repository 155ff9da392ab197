"""AffectNet, 7 or 8 classes, from the official CSVs or from a re-packaged class-folder copy.

Official: <root>/training.csv (train) and <root>/validation.csv (valid and test: AffectNet's test
set is not public), images under <root>/Manually_Annotated_Images/<subDirectory_filePath>, each
cropped to its face box. Expressions 0..7 (8-class) or 0..6 (7-class) are kept; 8 none,
9 uncertain and 10 no-face, and 7 contempt for 7 classes, are dropped.

Re-packaged: <root>/<split>/<class>/ with class folders named by expression code (0..7) or by
emotion (anger/angry, happy/happiness, ...); see EMOTION_ALIASES.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from . import imagefolder
from .base import DatasetError
from .classes import AFFECTNET8_CLASSES
from .decode import ImageRef
from .source import FileSource

CSV_FILES = {"train": "training.csv", "valid": "validation.csv", "test": "validation.csv"}
IMAGE_DIR = "Manually_Annotated_Images"
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
EMOTION_ALIASES = {
    "neutral": 0, "happy": 1, "happiness": 1, "sad": 2, "sadness": 2, "surprise": 3,
    "surprised": 3, "fear": 4, "fearful": 4, "disgust": 5, "disgusted": 5, "anger": 6,
    "angry": 6, "contempt": 7,
}


def open_source(root: Path, split: str, n_classes: int) -> FileSource:
    if split not in CSV_FILES:
        raise DatasetError(f"affectnet has splits {', '.join(CSV_FILES)}; got {split!r}")
    name, classes = f"affectnet{n_classes}", AFFECTNET8_CLASSES[:n_classes]
    if (root / CSV_FILES[split]).is_file():
        return _from_csv(name, split, root, root / CSV_FILES[split], classes)
    if any((root / f).is_file() for f in set(CSV_FILES.values())):
        raise DatasetError(f"{root / CSV_FILES[split]} not found (split {split!r})")
    try:
        split_dir = imagefolder.find_split_dir(root, split)
    except DatasetError as exc:
        raise DatasetError(f"{root} holds neither AffectNet's {CSV_FILES[split]} nor a class-folder "
                           f"copy: {exc}") from exc

    def label_of(folder: str) -> int | None:
        key = folder.strip().lower()
        code = int(key) if key.isdigit() else EMOTION_ALIASES.get(key)
        if code is None or code > 10:
            return None  # not an AffectNet folder: an error, not a silent skip
        return code if code < n_classes else -1  # dropped like the CSV rows

    source = imagefolder.scan(name, split, root, split_dir, classes, label_of)
    keep = np.flatnonzero(source.labels >= 0)
    return FileSource(name, split, root, [source.refs[i] for i in keep], source.labels[keep], classes)


def _from_csv(name: str, split: str, root: Path, table: Path, classes: tuple[str, ...]) -> FileSource:
    refs, labels = [], []
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{table} lacks column(s) {', '.join(missing)}")
        for line_no, row in enumerate(reader, start=2):
            try:
                expression = int(row["expression"])
                box = tuple(float(row[c]) for c in COLUMNS[1:5])
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"{table} line {line_no}: {exc}") from exc
            if 0 <= expression < len(classes):
                refs.append(ImageRef(root / IMAGE_DIR / row["subDirectory_filePath"], box))
                labels.append(expression)
    return FileSource(name, split, root, refs, np.array(labels, dtype=np.int64), classes,
                      index_files=(table,))
