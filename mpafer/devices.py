"""Turn a user's --device into a torch.device, with a clear error instead of a traceback."""
from __future__ import annotations

import torch


def resolve_device(requested: str | None) -> torch.device:
    """``None``: cuda when available, else cpu. Raises ValueError for unknown or unavailable devices."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ValueError(f"unknown device {requested!r} (use cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested} was asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device
