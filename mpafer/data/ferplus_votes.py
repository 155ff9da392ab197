"""FER+ crowd votes to labels: the official 'majority' rule and the soft-label distribution.

Votes come in 10 columns: the 8 emotions of FERPLUS_CLASSES, then 'unknown' and 'NF' (not a face).
"""

from __future__ import annotations

import numpy as np

N_EMOTIONS = 8


def majority_labels(votes: np.ndarray) -> np.ndarray:
    """FERPlus `majority` mode (src/ferplus.py): int64 label per row, -1 where the image is excluded.

    1. counts of 1 or less are outliers and set to 0;
    2. the label is the argmax if it holds more than half of the remaining votes, else 'unknown';
    3. 'unknown' and 'NF' images are excluded.
    """
    v = np.asarray(votes, dtype=np.int64)
    v = np.where(v <= 1, 0, v)
    top = v.argmax(1)
    labels = np.where(2 * v.max(1) > v.sum(1), top, -1)
    labels[labels >= N_EMOTIONS] = -1
    return labels


def vote_distribution(votes: np.ndarray) -> np.ndarray:
    """float32 (N, 8) soft labels: the emotion votes, outliers dropped, normalised to sum to 1 per row.

    As FERPlus's own rule (and ``majority_labels``), a count of one vote is an annotator's outlier
    and is dropped before normalising. A row left with no emotion vote keeps its raw votes.
    """
    raw = np.asarray(votes, dtype=np.float32)
    kept = np.where(raw <= 1, 0.0, raw)[:, :N_EMOTIONS]
    empty = kept.sum(1) == 0
    kept[empty] = raw[empty, :N_EMOTIONS]
    return kept / np.maximum(kept.sum(1, keepdims=True), 1e-12)
