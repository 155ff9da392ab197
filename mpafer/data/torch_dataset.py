"""A torch Dataset view of a FaceDataset for DataLoader use (augmentation runs on the GPU, elsewhere)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import FaceDataset


class TorchFaceDataset(Dataset):
    """Items are (uint8 (3, S, S) image, int label, float32 (C,) soft label).

    Without soft labels the soft label is the one-hot hard label, so batches always collate
    the same way and one loss can serve every dataset.
    """

    def __init__(self, data: FaceDataset) -> None:
        self.data = data
        if data.soft_labels is not None:
            self.soft = data.soft_labels
        else:
            self.soft = np.eye(len(data.classes), dtype=np.float32)[data.labels]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image = torch.from_numpy(np.ascontiguousarray(self.data.images[i])).permute(2, 0, 1)
        return image, int(self.data.labels[i]), torch.from_numpy(self.soft[i])
