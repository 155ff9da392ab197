"""Checkpoints: a folder with ``mpafer.safetensors`` (tensors) and ``mpafer.json`` (everything else).

Tensors: the learnable prompts, the class prototypes, the cached hard-prompt features, and (with
text_anchor) the soft prompts' fixed offset to the hard prompts' ensemble.
JSON: the model config, the classes and hard prompts (so a checkpoint stands alone when the
bank file changes), and the backbone's identity: name, weights source and a fingerprint of
the frozen weights. Loading checks that fingerprint, so prompts are never silently applied
to a backbone they were not trained on. Nothing here unpickles.
"""
from __future__ import annotations

import json
from dataclasses import asdict
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbone import Backbone, BackboneConfig, load_backbone
from .descriptions import HardPrompt
from .model import MPAFER, MPAFERConfig

FORMAT = "mpafer-checkpoint"
VERSION = 1
TENSORS_FILE = "mpafer.safetensors"
CONFIG_FILE = "mpafer.json"
_FIXED = {"prototypes": "prototypes", "hard_text_features": "hard_text_cache",
          "text_anchor_offset": "text_anchor_offset"}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the backbone it is loaded into."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _portable_backbone(config: BackboneConfig, folder: Path) -> dict[str, Any]:
    """Store a local-dir backbone inside the checkpoint folder as a relative path, so the pair moves together."""
    data = config.to_dict()
    name = config.model_name
    if name.startswith("local-dir:"):
        target = Path(name[len("local-dir:"):]).resolve()
        try:
            data["model_name"] = "local-dir:" + os.path.relpath(target, folder.resolve())
        except ValueError:  # another drive on Windows: keep it absolute
            pass
    return data


def save_checkpoint(model: MPAFER, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``folder/mpafer.safetensors`` and ``folder/mpafer.json`` atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"learnable.{k}": v.float().contiguous().cpu() for k, v in model.learnable_state_dict().items()}
    model.hard_text_features()
    for key, attribute in _FIXED.items():
        value = getattr(model, attribute)
        if value.numel():
            tensors[key] = value.float().contiguous().cpu()
    config = model.config.to_dict()
    config["backbone"] = _portable_backbone(model.config.backbone, folder)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "classes": list(model.classes),
        "prompt_names": list(model.prompt_names),
        "hard_prompts": [asdict(p) for p in model.hard_prompts],
        "backbone": {**config["backbone"], "fingerprint": model.backbone_info.fingerprint},
        "num_learnable": model.num_learnable(),
        "extra": extra or {},
    }
    tmp = folder / (TENSORS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    os.replace(tmp, folder / TENSORS_FILE)
    _atomic_write_text(folder / CONFIG_FILE, json.dumps(meta, indent=2))
    return folder


def _checkpoint_folder(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_file() and path.name in (TENSORS_FILE, CONFIG_FILE):
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a folder with {CONFIG_FILE} "
                              f"and {TENSORS_FILE})")
    for name in (CONFIG_FILE, TENSORS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint folder {path} has no {name}")
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    folder = _checkpoint_folder(path)
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not valid JSON ({err}); the checkpoint is corrupt") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not an mpafer checkpoint (no format '{FORMAT}')")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{folder / CONFIG_FILE}: checkpoint version {meta.get('version')} is not "
                              f"supported by this mpafer (reads version {VERSION})")
    return meta


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    file = _checkpoint_folder(path) / TENSORS_FILE
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{file} cannot be read as safetensors ({err}); the file is corrupt or truncated") from err


def _resolve_backbone_config(data: dict[str, Any], folder: Path) -> BackboneConfig:
    config = BackboneConfig.from_dict(data)
    name = config.model_name
    if name.startswith("local-dir:") and not Path(name[len("local-dir:"):]).is_absolute():
        config.model_name = "local-dir:" + str((folder / name[len("local-dir:"):]).resolve())
    return config


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    backbone: Backbone | BackboneConfig | None = None, check_fingerprint: bool = True) -> MPAFER:
    """Rebuild a trained model. ``backbone`` overrides where the frozen weights come from
    (e.g. a local copy of the same weights); its fingerprint must still match unless
    ``check_fingerprint`` is False (deliberate re-targeting, e.g. an fp16 copy of the backbone)."""
    folder = _checkpoint_folder(path)
    meta = read_metadata(folder)
    tensors = read_tensors(folder)
    try:
        config = MPAFERConfig.from_dict(meta["config"])
        config.backbone = _resolve_backbone_config(meta["config"]["backbone"], folder)
        hard = [HardPrompt(**p) for p in meta["hard_prompts"]]
        classes, prompt_names = meta["classes"], meta["prompt_names"]
        expected = meta["backbone"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE} is incomplete or malformed: {err}") from err

    if isinstance(backbone, BackboneConfig):
        backbone = load_backbone(backbone, device=device)
    backbone = backbone or load_backbone(config.backbone, device=device)
    if check_fingerprint and backbone.fingerprint != expected.get("fingerprint"):
        raise CheckpointError(
            f"checkpoint {folder} was trained on backbone {expected.get('model_name')} "
            f"(weights: {expected.get('pretrained')}, fingerprint {expected.get('fingerprint')}), "
            f"but the backbone given is {backbone.config.describe()} (fingerprint {backbone.fingerprint}). "
            f"Load it with the backbone it was trained on."
        )
    config.backbone = backbone.config
    model = MPAFER(config, backbone, classes, prompt_names, hard).to(device)

    learnable = {k[len("learnable."):]: v for k, v in tensors.items() if k.startswith("learnable.")}
    own = model.learnable_parameters()
    if set(learnable) != set(own):
        raise CheckpointError(f"{folder}: learnable tensors {sorted(learnable)} do not match the model's "
                              f"{sorted(own)}; the config and tensors disagree")
    with torch.no_grad():
        for name, param in own.items():
            if tuple(learnable[name].shape) != tuple(param.shape):
                raise CheckpointError(f"{folder}: tensor {name} has shape {tuple(learnable[name].shape)}, "
                                      f"the model expects {tuple(param.shape)}")
            param.copy_(learnable[name].to(param.dtype))
    for key, attribute in _FIXED.items():
        if key in tensors:
            setattr(model, attribute, tensors[key].to(device))
    if config.text_anchor and config.use_text_prompts and \
            tuple(model.text_anchor_offset.shape) != (len(classes), model.embed_dim):
        raise CheckpointError(f"{folder}: the config anchors the soft prompts to the hard prompts (text_anchor) "
                              f"but the tensors hold no ({len(classes)}, {model.embed_dim}) text_anchor_offset")
    if model.hard_text_cache.numel() and model.hard_text_cache.shape[0] != len(hard):
        raise CheckpointError(f"{folder}: {model.hard_text_cache.shape[0]} cached hard-prompt features "
                              f"for {len(hard)} hard prompts")
    return model.eval()
