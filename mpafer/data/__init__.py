"""Face-expression datasets, decoded once into uint8 arrays and cached.

    from mpafer.data import load_dataset
    test = load_dataset("ferplus", "/path/to/ferplus", "test", image_size=None)
"""

from .base import DatasetError, FaceDataset
from .classes import AFFECTNET7_CLASSES, AFFECTNET8_CLASSES, FERPLUS_CLASSES, RAFDB_CLASSES
from .loading import ADAPTERS, load_dataset
from .torch_dataset import TorchFaceDataset

__all__ = [
    "ADAPTERS", "AFFECTNET7_CLASSES", "AFFECTNET8_CLASSES", "DatasetError", "FERPLUS_CLASSES",
    "FaceDataset", "RAFDB_CLASSES", "TorchFaceDataset", "load_dataset",
]
