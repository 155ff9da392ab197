"""Image in, one explained result per face out.

``Predictor`` owns the model, the face detector and the explainer. For each image it finds
the faces, crops each one square with a margin, classifies all crops in one batch and fills
one ``FaceExplanation`` per face off that same forward pass (class maps, best-matching
descriptions per facial region). The occlusion check and Grad-CAM, which need more passes,
are added to it only when asked (``explain``). A picture already read by ``load_image`` goes
in through ``predict_picture`` and is not decoded again.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, fields as dc_fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .transforms import to_model_input
from .input_protocol import to_grey
from .backbone import BackboneConfig
from .bf16_inference import Bf16ImageTower
from .description_calibration import load_calibration
from .description_scores import DescriptionScore
from .explain import Explainer, ProbeResult, gradcam, normalize_map, upsample
from .explanation import FaceExplanation
from .occlusion import OcclusionResult, occlusion_effects, pixel_masks
from .faces import (DEFAULT_MAX_FACES, Box, CropInfo, FaceDetector, FaceList, crop_face,
                    face_regions, limit_faces, region_masks)
from .images import DEFAULT_MAX_SIDE, load_image
from .model import MPAFER, MPAFERConfig, create_model
from .precision import inference_autocast, inference_precision, uses_bf16_tower

log = logging.getLogger(__name__)

# ``checkpoint=UNTRAINED`` asks for the random-weight fallback explicitly (tests, trying the
# pipeline); a folder that happens to be called "untrained" can be given as "./untrained".
UNTRAINED = "untrained"
FALLBACK_BACKBONE = "mpafer-tiny-face"  # 112 px, 14x14 patch grid, like the default model


def untrained_model(device: str | torch.device = "cpu") -> MPAFER:
    """A small random-weight MPA-FER: the whole pipeline runs, the predictions mean nothing.

    Seeded (the backbone by its config, the prompts here), so every run shows the same output.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model(MPAFERConfig(backbone=BackboneConfig(FALLBACK_BACKBONE)), device=device).eval()


def resolve_model(checkpoint: str | Path | MPAFER | None, device: str | torch.device = "cpu"
                  ) -> tuple[MPAFER, str, bool]:
    """(model, where it came from, untrained?) for a checkpoint path, a model, UNTRAINED or None.

    None means the default checkpoint (``mpafer.defaults``); when no model is bundled, the
    untrained fallback, flagged so that callers can warn about it.
    """
    if isinstance(checkpoint, MPAFER):
        return checkpoint.eval(), "model given in code", False
    if checkpoint is None:
        from .defaults import default_checkpoint

        checkpoint = default_checkpoint()
        if checkpoint is None:
            log.warning("no default model is bundled: using an untrained random-weight model")
            return untrained_model(device), f"untrained fallback ({FALLBACK_BACKBONE}, random weights)", True
    if str(checkpoint) == UNTRAINED:
        return untrained_model(device), f"untrained fallback ({FALLBACK_BACKBONE}, random weights)", True
    from .checkpoint import load_checkpoint

    return load_checkpoint(checkpoint, device=device), str(checkpoint), False


@dataclass
class FaceResult:
    box: Box  # x0, y0, x1, y1 in pixels of the (upright, possibly downscaled) image
    score: float  # detector confidence
    label: str
    probabilities: dict[str, float]
    crop_info: CropInfo
    explanation: FaceExplanation  # everything that explains this face, filled by the library

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    # the explanation's parts under the names this result has always had
    @property
    def crop(self) -> Image.Image:
        return self.explanation.crop

    @property
    def regions(self) -> dict[str, list[DescriptionScore]]:
        return self.explanation.descriptions

    @property
    def maps(self) -> np.ndarray:
        return self.explanation.maps

    @property
    def region_boxes(self) -> dict[str, Box]:
        return self.explanation.region_boxes

    @property
    def region_masks(self) -> dict[str, np.ndarray]:
        return self.explanation.region_masks

    @property
    def patch_features(self) -> torch.Tensor | None:
        return self.explanation.patch_features

    @property
    def gradcam(self) -> np.ndarray | None:
        """(S, S) Grad-CAM of the predicted class, when it was asked for."""
        return self.explanation.gradcam(self.label)

    @property
    def gradcam_regions(self) -> dict[str, float] | None:
        return self.explanation.gradcam_regions(self.label)

    def to_dict(self, heatmaps: bool = False) -> dict[str, Any]:
        """JSON-safe summary. ``heatmaps=True`` adds every class map (and Grad-CAM, if any) on
        the model's patch grid, in [0, 1] on one scale for all classes (``heat_scale``: the
        cosines at 0 and 1), rows top to bottom; the grid covers
        ``crop_box`` (image pixels), so upsampling it bilinearly there redraws the overlay."""
        size = self.crop_info.size
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "label": self.label,
            "probabilities": {k: round(float(v), 4) for k, v in self.probabilities.items()},
            "crop_box": [round(float(v), 1) for v in self.crop_info.box_to_image((0.0, 0.0, size, size))],
            **self.explanation.to_dict(heatmaps),
        }


@dataclass
class CropPrediction:
    """A face that came already cropped: its label, probabilities and (C, H, W) class maps."""

    label: str
    probabilities: dict[str, float]
    maps: np.ndarray


def _square(image: Image.Image, side: int) -> Image.Image:
    """An RGB copy at side x side: one antialiased resize from any crop size (PIL, as the
    dataset decoder makes its faces), so the model never sees a second resampling."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.size != (side, side):
        rgb = rgb.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return rgb


def _float32(output):
    """A model output with every tensor in float32 (under bf16 autocast some come out bfloat16), so what
    reads it afterwards (explanations, probes) computes as in float32."""
    values = {f.name: getattr(output, f.name).float() for f in dc_fields(output)
              if f.name != "text" and torch.is_tensor(getattr(output, f.name))}
    return replace(output, **values)


def _first(output, n: int):
    """The first n rows of a model output (the unflipped half of a TTA batch)."""
    values = {f.name: getattr(output, f.name)[:n] for f in dc_fields(output) if f.name != "text"}
    return replace(output, **values)


class Predictor:
    """Find, classify and explain every face in an image. Safe to share between threads.

    ``checkpoint``: a checkpoint folder, an ``MPAFER`` model, ``UNTRAINED``, or None for the
    default (see ``resolve_model``). ``untrained`` is True when predictions are not meaningful.
    ``crop_size``: side of the crops that maps are drawn on (the model sees them resized).
    ``precision``: "auto" (bf16 where the hardware computes it natively, else float32), "bf16" (float32,
    with a warning, where it would be emulated) or "fp32". bf16 is autocast on a GPU and a bfloat16 copy
    of the image tower on a CPU (``mpafer.bf16_inference``). It applies to the classifying pass (and
    occlusion, which reuses it); its outputs are handed on in float32, and Grad-CAM, descriptions and
    probes compute in float32.
    """

    def __init__(self, checkpoint: str | Path | MPAFER | None = None, device: str | torch.device = "cpu",
                 detector: FaceDetector | None = None, max_faces: int = DEFAULT_MAX_FACES, crop_size: int = 224,
                 margin: float | None = None, precision: str = "auto"):
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {max_faces}")
        self.model, self.source, self.untrained = resolve_model(checkpoint, device)
        self.device = torch.device(device)
        self.precision = inference_precision(self.device, precision)
        # bf16 on a CPU: a bfloat16 copy of the image tower (made at the first call), not autocast
        self.bf16_tower = Bf16ImageTower(self.model) if uses_bf16_tower(self.device, self.precision) else None
        self.max_faces = max_faces
        self.crop_size = crop_size
        self.protocol = self.model.config.input  # grey, framing and flip TTA, as the model was trained
        self.margin = self.protocol.margin if margin is None else margin
        self._owns_detector = detector is None
        self.detector = detector or FaceDetector(max_faces=max_faces)
        # description statistics stored beside the checkpoint, if any (else raw scores, flagged)
        folder = Path(self.source)
        calibration = load_calibration(folder, self.model) if folder.is_dir() else None
        self.explainer = Explainer(self.model, calibration)
        # one model call at a time: Grad-CAM hooks the model, and CPU threads are better spent
        # inside one batched forward than on several competing ones
        self._lock = threading.RLock()
        with self._lock, torch.no_grad():
            self.class_features = self.model.class_text_features().features.detach().clone()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes

    # ---- pipeline ----------------------------------------------------------------------------
    def preprocess(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        """RGB crops -> (B, 3, S, S) model input, prepared exactly as evaluation prepares faces
        (grey when the model's input protocol says so)."""
        side = self.model.image_size
        pixels = np.stack([np.asarray(_square(c, side)) for c in crops])
        if self.protocol.grey:
            pixels = to_grey(pixels)
        info = self.model.backbone_info
        return to_model_input(pixels, side, info.mean, info.std, device=self.device)

    def forward(self, batch: torch.Tensor):
        """The one forward pass of a batch; with the protocol's flip TTA the mirrored copies ride
        along in the same batch and their probabilities are averaged in (maps stay unflipped)."""
        # float32 and the CPU's bf16 tower (scored in float32) hand the output on as it is: no per-frame copy
        autocasts = self.precision == "bf16" and self.bf16_tower is None
        settle = _float32 if autocasts else (lambda output: output)
        # the tower calls the model too, with its bfloat16 copy as the image encoder
        run = self.bf16_tower or (lambda images: self.model(images, with_text_tokens=False))
        with self._lock, torch.no_grad(), inference_autocast(self.device, self.precision):
            if not self.protocol.tta_flip:
                output = settle(run(batch))
                return output, output.probabilities.cpu()
            both = settle(run(torch.cat([batch, batch.flip(-1)])))
        n = batch.shape[0]
        probabilities = (both.probabilities[:n] + both.probabilities[n:]).cpu() / 2
        return _first(both, n), probabilities

    def predict_crops(self, crops: Sequence[Any]) -> list[CropPrediction]:
        """Classify faces that are already cropped (your own detector, a dataset): one result each,
        prepared with the same protocol as detected faces. Images: anything ``load_image`` reads."""
        pictures = [load_image(c) for c in crops]
        if not pictures:
            return []
        output, probabilities = self.forward(self.preprocess(pictures))
        return [CropPrediction(label=self.classes[int(p.argmax())],
                               probabilities={c: float(v) for c, v in zip(self.classes, p.tolist())},
                               maps=output.maps[i].float().cpu().numpy())
                for i, p in enumerate(probabilities)]

    def detect(self, image: Image.Image) -> FaceList:
        """Faces in ``image``: at most ``max_faces`` (the largest), in reading order (rows top
        to bottom, each left to right); ``.found`` counts every face the detector found."""
        return limit_faces(self.detector.detect(image), self.max_faces)

    def predict(self, image: Any, explain: bool = True, gradcam: bool = False, occlusion: bool = False,
                max_side: int | None = DEFAULT_MAX_SIDE) -> list[FaceResult]:
        """Every face in ``image`` (anything ``mpafer.images.load_image`` reads), in reading
        order, at most ``max_faces`` (the largest); the list's ``found`` counts all faces found.

        ``explain=False`` is the fast path: class maps only, no region descriptions. ``gradcam``
        and ``occlusion`` add those checks of the predicted class to every face (see ``explain``).
        No face: an empty list. Unreadable input: ``ImageError``.
        """
        return self.predict_picture(load_image(image, max_side=max_side), explain, gradcam, occlusion)

    def predict_picture(self, picture: Image.Image, explain: bool = True, gradcam: bool = False,
                        occlusion: bool = False) -> list[FaceResult]:
        """``predict`` for a picture ``load_image`` already made (upright RGB): not decoded again."""
        faces = self.detect(picture)
        if not faces:
            return FaceList()
        crops = [crop_face(picture, face, self.crop_size, self.margin, shift_y=self.protocol.shift_y)
                 for face in faces]
        output, probabilities = self.forward(self.preprocess([crop for crop, _ in crops]))
        results = []
        for i, (face, (crop, info)) in enumerate(zip(faces, crops)):
            predicted = int(probabilities[i].argmax())
            boxes = face_regions(info.keypoints, self.crop_size, info.face_box)
            masks = region_masks(boxes, *self.model.grid)
            patches = output.patch_features[i].detach().clone()
            explanation = FaceExplanation(
                classes=self.classes, label=self.classes[predicted], crop=crop,
                maps=output.maps[i].float().cpu().numpy(), topk=self.model.config.topk,
                descriptions=self.explainer.region_scores(patches, masks, predicted) if explain else {},
                description_method=self.explainer.scorer.method,
                region_boxes=dict(boxes), region_masks=masks, patch_features=patches)
            results.append(FaceResult(
                box=face.box, score=face.score, label=self.classes[predicted],
                probabilities={c: float(p) for c, p in zip(self.classes, probabilities[i].tolist())},
                crop_info=info, explanation=explanation))
        if gradcam:
            self.add_gradcam(results)
        if occlusion:
            for result in results:
                self.explain(result, occlusion=True)
        return FaceList(results, found=faces.found)

    # ---- what costs more passes, added to a face's explanation once ---------------------------
    def explain(self, face: FaceResult, gradcam: str | Sequence[str] | bool | None = None,
                occlusion: bool = False) -> FaceExplanation:
        """``face.explanation``, with what is asked and not there yet added to it: the predicted
        class's occlusion check (one batched pass), Grad-CAM of the predicted class (``True``) or of
        the classes named (one backward pass for all missing). What it already holds is not rerun."""
        explanation = face.explanation
        if occlusion and explanation.occlusion is None:
            explanation.occlusion = self.occlusion(face)
        wanted = [face.label] if gradcam is True else [gradcam] if isinstance(gradcam, str) else list(gradcam or [])
        missing = list(dict.fromkeys(c for c in wanted if c not in explanation.gradcams))
        if missing:
            explanation.gradcams.update(zip(missing, self._gradcams([face] * len(missing), missing)))
        return explanation

    def add_gradcam(self, faces: Sequence[FaceResult], classes: Sequence[str] | None = None) -> None:
        """Add Grad-CAM (of the predicted class, or ``classes``) to each face's explanation: one
        backward pass for the batch."""
        if not faces:
            return
        names = list(classes or [f.label for f in faces])
        for face, name, cam in zip(faces, names, self._gradcams(faces, names)):
            face.explanation.gradcams[name] = cam

    def _gradcams(self, faces: Sequence[FaceResult], classes: Sequence[str]) -> np.ndarray:
        """(B, s, s) Grad-CAM at the model's input size, one face and class each."""
        batch = self.preprocess([f.crop for f in faces])
        targets = [face.explanation.index(name) for face, name in zip(faces, classes)]
        with self._lock:
            maps = gradcam(self.model, batch, targets)
        return np.stack([normalize_map(m) for m in maps])

    def gradcam_map(self, face: FaceResult, class_name: str | None = None) -> np.ndarray:
        """(S, S) Grad-CAM in [0, 1] for any class of a face, computed afresh and not kept."""
        cam = self._gradcams([face], [class_name or face.label])[0]
        return normalize_map(upsample(torch.from_numpy(cam), face.crop.width))

    def occlusion(self, face: FaceResult, class_name: str | None = None) -> OcclusionResult:
        """How the class's probability (the predicted one by default) changes when each facial
        region is blurred out: one batched forward pass of the occluded copies, flip TTA included."""
        batch = self.preprocess([face.crop])
        masks = pixel_masks(face.region_boxes, batch.shape[-1], crop_size=face.crop_info.size)
        target = self.classes.index(class_name or face.label)
        return occlusion_effects(lambda images: self.forward(images)[1], batch[0], masks, target)

    def description_heatmap(self, face: FaceResult, class_name: str | None = None) -> np.ndarray:
        """(h, w) where the face matches a class's descriptions (the predicted class by default)."""
        with self._lock, torch.no_grad():
            return self.explainer.description_heatmap(face.patch_features, face.region_masks,
                                                      self.classes.index(class_name or face.label))

    def probe(self, face: FaceResult, text: str) -> ProbeResult:
        """Where free text matches this face, how close it is to each class, and how it compares
        with the model's own descriptions on the same face."""
        if face.patch_features is None:
            raise ValueError("this face result has no patch features to probe")
        with self._lock, torch.no_grad():
            return self.explainer.probe(face.patch_features, text, face.crop.width, self.class_features,
                                        face_mask=face.region_masks.get("face"))

    def close(self) -> None:
        """Release the face detector if this predictor created it."""
        if self._owns_detector:
            self.detector.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
