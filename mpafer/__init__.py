"""mpafer: interpretable facial-expression recognition with MPA-FER on open_clip.

Imports are lazy so that light modules (descriptions, images) load without torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "BackboneConfig": "backbone", "load_backbone": "backbone", "BackboneError": "backbone",
    "MPAFER": "model", "MPAFERConfig": "model", "create_model": "model",
    "LossConfig": "losses", "mpafer_loss": "objective", "compute_prototypes": "prototypes",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "CheckpointError": "checkpoint",
    "load_bank": "descriptions", "BankError": "descriptions",
    "load_image": "images", "ImageError": "images",
    "Predictor": "predictor",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'mpafer' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
