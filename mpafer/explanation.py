"""One face's explanation: everything the library says about why it predicted what it did.

``Predictor.predict`` fills a ``FaceExplanation`` per face from the forward pass that made the
prediction (class maps, the descriptions of each region); ``Predictor.explain`` adds, once,
what costs more passes (the occlusion check, Grad-CAM of any class). A UI only reads it.

What follows from the maps alone (a class's heatmap on the face's one colour scale, the
top-k cells that entered the logit, "why A rather than B") is derived on read: cheap, and
the object stays small enough to keep per browser tab.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .description_scores import DescriptionScore
from .heatmaps import HeatScale, contrast_map, normalize_map, region_activation, topk_cells, upsample
from .occlusion import OcclusionResult

Box = tuple[float, float, float, float]


@dataclass
class FaceExplanation:
    classes: tuple[str, ...]
    label: str  # the predicted class: the default of every per-class view
    crop: Image.Image  # S x S RGB crop every map is drawn on
    maps: np.ndarray  # (C, h, w) CGLA patch-to-class cosines, from the forward pass
    topk: int  # how many cells CGLA's local term averages
    descriptions: dict[str, list[DescriptionScore]] = field(default_factory=dict)  # region -> best matches
    description_method: str = "raw"  # "raw" (uncalibrated), "zscore" or "region_minus_face"
    region_boxes: dict[str, Box] = field(default_factory=dict)  # crop pixels
    region_masks: dict[str, np.ndarray] = field(default_factory=dict)  # on the patch grid
    patch_features: torch.Tensor | None = None  # (N, D): probes need no second pass
    occlusion: OcclusionResult | None = None  # the predicted class's, once ``Predictor.explain`` ran it
    # class -> Grad-CAM in [0, 1] at the model's input size (upsampled on read: 4x smaller to keep)
    gradcams: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.crop.width

    @property
    def calibrated(self) -> bool:
        return self.description_method != "raw"

    @property
    def scale(self) -> HeatScale:
        """The one colour scale of all of this face's class maps (cosines at the cold and hot ends)."""
        return HeatScale.of(self.maps)

    def index(self, class_name: str | None) -> int:
        name = class_name or self.label
        if name not in self.classes:
            raise ValueError(f"unknown class {name!r} (classes: {', '.join(self.classes)})")
        return self.classes.index(name)

    def heatmap(self, class_name: str | None = None) -> np.ndarray:
        """(S, S) map of a class (the predicted one by default) in [0, 1] on the face's one scale:
        a class that matches weakly everywhere stays cold."""
        grid = torch.from_numpy(np.ascontiguousarray(self.maps[self.index(class_name)], dtype=np.float32))
        return self.scale.apply(upsample(grid, self.size))

    def cells(self, class_name: str | None = None) -> np.ndarray:
        """(h, w) boolean: the top-k cells whose mean is the class's local CGLA score."""
        return topk_cells(self.maps[self.index(class_name)], self.topk)

    def contrast(self, first: str, second: str) -> np.ndarray:
        """(h, w) "why ``first`` rather than ``second``": first's map minus second's (cosines)."""
        return contrast_map(self.maps, self.index(first), self.index(second))

    def gradcam(self, class_name: str | None = None) -> np.ndarray | None:
        """(S, S) Grad-CAM in [0, 1] of a class, or None until ``Predictor.explain`` computed it."""
        cam = self.gradcams.get(class_name or self.label)
        return None if cam is None else normalize_map(upsample(torch.from_numpy(cam), self.size))

    def gradcam_regions(self, class_name: str | None = None) -> dict[str, float] | None:
        """Mean Grad-CAM inside each facial region, or None without that class's Grad-CAM."""
        cam = self.gradcams.get(class_name or self.label)
        return None if cam is None else region_activation(cam, self.region_masks)

    def to_dict(self, heatmaps: bool = False) -> dict[str, Any]:
        """JSON-safe: the region descriptions; ``heatmaps=True`` adds every class map (and the
        predicted class's Grad-CAM, if any) on the patch grid, in [0, 1] on the face's one scale
        (``heat_scale``: the cosines at 0 and 1), rows top to bottom."""
        data: dict[str, Any] = {
            "regions": {region: [d.to_dict() for d in items] for region, items in self.descriptions.items()},
        }
        cam_regions = self.gradcam_regions()
        if cam_regions is not None:
            data["gradcam_regions"] = {k: round(v, 4) for k, v in cam_regions.items()}
        if self.occlusion is not None:
            data["occlusion"] = self.occlusion.to_dict(self.classes)
        if heatmaps:
            scale = self.scale
            data["heatmaps"] = {c: _grid_list(scale.apply(self.maps[i])) for i, c in enumerate(self.classes)}
            data["heat_scale"] = [round(scale.low, 4), round(scale.high, 4)]
            cam = self.gradcams.get(self.label)
            if cam is not None:
                pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(cam)[None, None],
                                                                 self.maps.shape[-2:])[0, 0]
                data["gradcam"] = _grid_list(normalize_map(pooled))
        return data


def _grid_list(values: np.ndarray) -> list[list[float]]:
    return np.round(values.astype(np.float64), 3).tolist()
