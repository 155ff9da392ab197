"""RAF-DB basic: <root>/EmoLabel/list_patition_label.txt and <root>/Image/aligned/*_aligned.jpg.

Label lines read `train_00001.jpg 5` (the file's own spelling 'patition'); the name prefix gives
the split and labels 1..7 become 0..6. RAF-DB has no validation set: 'valid' reads the test list,
as papers that report RAF-DB do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetError
from .classes import RAFDB_CLASSES
from .decode import ImageRef
from .source import FileSource

LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
IMAGE_DIR = Path("Image") / "aligned"
PREFIX = {"train": "train_", "valid": "test_", "test": "test_"}


def open_source(root: Path, split: str) -> FileSource:
    if split not in PREFIX:
        raise DatasetError(f"rafdb has splits train and test; got {split!r}")
    label_file = root / LABEL_FILE
    if not label_file.is_file():
        raise DatasetError(f"{label_file} not found: rafdb expects <root>/{LABEL_FILE.as_posix()} "
                           f"and images in <root>/{IMAGE_DIR.as_posix()}/")
    refs, labels = [], []
    for line_no, line in enumerate(label_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit() or not 1 <= int(fields[1]) <= 7:
            raise DatasetError(f"{label_file} line {line_no}: expected '<name>.jpg <1..7>', "
                               f"got {line!r}")
        name, label = fields
        if name.startswith(PREFIX[split]):
            stem = Path(name).stem
            refs.append(ImageRef(root / IMAGE_DIR / f"{stem}_aligned.jpg"))
            labels.append(int(label) - 1)
    return FileSource("rafdb", split, root, refs, np.array(labels, dtype=np.int64), RAFDB_CLASSES,
                      index_files=(label_file,))
