"""Dataset faces (no detector, no keypoints): their facial regions and their model inputs.

A dataset face (a FERPlus frame) is what the model's input protocol makes a detected face
look like: a square of side ``box * (1 + 2 * margin)`` centred ``shift_y * box`` below the box
centre. Inverting that gives the face box inside the frame; the keypoints are then where
BlazeFace puts them in a box (``CANONICAL_KEYPOINTS``).
"""
from __future__ import annotations

import numpy as np
import torch

from .transforms import to_model_input
from .face_geometry import Box, Regions, face_regions, region_masks
from .input_protocol import InputProtocol, to_grey


def framed_face_box(size: int, protocol: InputProtocol) -> Box:
    """The detector box, in pixels of a ``size`` x ``size`` frame prepared with ``protocol``."""
    side = size / (1 + 2 * float(protocol.margin))
    centre_y = size / 2 - float(protocol.shift_y) * side  # the crop centre sat shift_y * box below the box's
    return (size / 2 - side / 2, centre_y - side / 2, size / 2 + side / 2, centre_y + side / 2)


def framed_face_regions(size: int, protocol: InputProtocol) -> Regions:
    return face_regions({}, size, framed_face_box(size, protocol))


def framed_region_masks(size: int, grid: tuple[int, int], protocol: InputProtocol) -> dict[str, np.ndarray]:
    """Region masks on the model's patch grid for dataset faces framed by ``protocol``."""
    return region_masks(framed_face_regions(size, protocol), *grid)


def dataset_inputs(model, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) faces -> the model's (B, 3, S, S) input, prepared as evaluation does."""
    batch = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if model.config.input.grey and batch.shape[-1] == 3:
        batch = to_grey(batch)
    info = model.backbone_info
    return to_model_input(batch, model.image_size, info.mean, info.std, device=model.device)
