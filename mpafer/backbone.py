"""Frozen open_clip backbones: one place that turns a name or a config into a model.

Sources, in the spirit of open_clip's factory:

* ``BackboneConfig("ViT-B-16", pretrained="openai")``  built-in name + pretrained tag
* ``BackboneConfig("ViT-B-16", pretrained="/path/weights.safetensors")``  + local file
* ``BackboneConfig("hf-hub:org/repo")``  a Hugging Face Hub model
* ``BackboneConfig("local-dir:/path/folder")``  ``open_clip_config.json`` + weights
* ``BackboneConfig("mpafer-tiny")``  a config shipped in ``mpafer/model_configs``

Nothing is fetched when the weights are not cached and the machine is offline:
``HF_HUB_OFFLINE=1`` (or an unreachable hub) fails at once with a message that
names the weights and says how to supply them (mpafer.offline_weights).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from torch import nn

from .offline_weights import BackboneError, check_hf_hub, check_pretrained_tag
from .stems import build_stem
from .text_tower import resolve_hf_name

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
STEM_KEY = "mpafer_stem"  # our one extension of open_clip's config format
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class BackboneConfig:
    model_name: str  # built-in/packaged name, "hf-hub:org/repo" or "local-dir:/path"
    pretrained: str | None = None  # tag ("openai"), weights file path, or None = random init
    image_size: int | None = None  # overrides the config's input size (positional embeddings resized)
    cache_dir: str | None = None
    seed: int = 0  # random-init backbones (no weights) are drawn from this seed, so they can be rebuilt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BackboneConfig":
        known = ("model_name", "pretrained", "image_size", "cache_dir", "seed")
        return cls(**{k: data[k] for k in known if k in data})

    def describe(self) -> str:
        return self.model_name + (f" (weights: {self.pretrained})" if self.pretrained else "")


@dataclass
class Backbone:
    """A frozen open_clip model plus what the rest of mpafer needs to know about it."""

    model: nn.Module
    config: BackboneConfig
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fingerprint: str = field(default="")

    def identity(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "fingerprint": self.fingerprint}


def _register_packaged_configs() -> None:
    if MODEL_CONFIG_DIR not in getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", []):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


_register_packaged_configs()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise BackboneError(f"cannot read model config {path}: {err}") from err


def _find_weights(folder: Path) -> Path | None:
    for name in ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")
    return found[0] if found else None


HF_TEXT_PREFIX = "text.transformer."  # a pretrained HF text tower's own weights: never in our files


def pretrained_hf_text(model_cfg: dict[str, Any]) -> bool:
    """True when the text tower is a pretrained Hugging Face model loaded from its own files."""
    text_cfg = model_cfg.get("text_cfg", {})
    return bool(text_cfg.get("hf_model_name")) and text_cfg.get("hf_model_pretrained", True)


def _resolve_text_cfg(cfg: dict[str, Any]) -> None:
    text_cfg = cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key):
            text_cfg[key] = resolve_hf_name(text_cfg[key])


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers prints a load report and a progress bar for every tower it builds; keep the
    demo's and the CLI's output clean (errors still raise)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_weights(model: nn.Module, weights: Path, skip_prefix: str | None) -> None:
    try:
        if skip_prefix is None:
            open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True)
            return
        result = open_clip.load_checkpoint(model, str(weights), strict=False, weights_only=True)
    except Exception as err:  # safetensors/torch raise many types; say which file and why
        raise BackboneError(f"cannot load weights {weights} into this architecture: {err}") from err
    # the pretrained text tower came from its own verified files; everything else must be in ours
    missing = [k for k in result.missing_keys if not k.startswith(skip_prefix)]
    if missing or result.unexpected_keys:
        raise BackboneError(f"cannot load weights {weights} into this architecture: missing {missing[:5]}, "
                            f"unexpected {list(result.unexpected_keys)[:5]}")


def build_from_config(model_cfg: dict[str, Any], weights: Path | None = None,
                      image_size: int | None = None) -> nn.Module:
    """Build a CLIP from a plain config dict (our stem extension allowed) and load its weights.

    A pretrained Hugging Face text tower (``hf_model_name``, e.g. ``packaged:all-MiniLM-L6-v2``)
    is loaded from its own files; ``weights`` then holds everything else.
    """
    cfg = copy.deepcopy(model_cfg)
    stem_cfg = cfg.pop(STEM_KEY, None)
    custom_text = cfg.pop("custom_text", False)
    cfg.pop("mpafer_text_sha256", None)  # provenance only
    _resolve_text_cfg(cfg)
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = image_size
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    with quiet_transformers():
        model = model_class(**cfg)
    if stem_cfg is not None:
        visual = model.visual
        visual.conv1 = build_stem(stem_cfg, out_channels=visual.conv1.out_channels,
                                  stride=visual.patch_size[0])
    if weights is not None:
        _load_weights(model, weights, HF_TEXT_PREFIX if pretrained_hf_text(model_cfg) else None)
    return model


def _build(config: BackboneConfig) -> nn.Module:
    name = config.model_name
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise BackboneError(f"local model folder {folder} has no open_clip_config.json")
        folder_config = _read_json(folder / "open_clip_config.json")
        model_cfg = folder_config.get("model_cfg")
        if not model_cfg:
            raise BackboneError(f"{folder / 'open_clip_config.json'} has no 'model_cfg'")
        weights = Path(config.pretrained) if config.pretrained else _find_weights(folder)
        model = build_from_config(model_cfg, weights, config.image_size)
        # the folder's own normalisation (e.g. a backbone trained on grey faces) travels with it
        preprocess = {**asdict(PreprocessCfg(size=model.visual.image_size)), **folder_config.get("preprocess_cfg", {})}
        open_clip.set_model_preprocess_cfg(model, preprocess)
        return model

    if name.startswith("hf-hub:"):
        check_hf_hub(name[len("hf-hub:"):], config.cache_dir)
        return open_clip.create_model(name, cache_dir=config.cache_dir, force_image_size=config.image_size)

    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise BackboneError(f"unknown open_clip model '{name}'. Known: {', '.join(open_clip.list_models())}")
    weights = None
    pretrained = config.pretrained
    if pretrained:
        if Path(pretrained).expanduser().is_file():
            weights = Path(pretrained).expanduser()
        elif Path(pretrained).suffix in _WEIGHT_SUFFIXES or os.sep in pretrained:
            raise BackboneError(f"weights file {pretrained} does not exist")
        else:
            check_pretrained_tag(name, pretrained, config.cache_dir)
            return open_clip.create_model(name, pretrained=pretrained, cache_dir=config.cache_dir,
                                          force_image_size=config.image_size, weights_only=True)
    return build_from_config(model_cfg, weights, config.image_size)


def freeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    return model.eval()


def weight_fingerprint(model: nn.Module, samples_per_tensor: int = 4096) -> str:
    """A cheap, stable identity of frozen weights: names, shapes and strided value samples.

    Hashing every byte of ViT-L would take seconds; a few thousand evenly spaced values per
    tensor already tell two trainings or two architectures apart.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).to("cpu", torch.float32)
        step = max(1, flat.numel() // samples_per_tensor)
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(flat[::step].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_for(model: nn.Module, config: BackboneConfig):
    context_length = getattr(model, "context_length", None) or 77
    if config.model_name.startswith("hf-hub:"):
        return open_clip.get_tokenizer(config.model_name, cache_dir=config.cache_dir)
    text_cfg = {}
    if config.model_name.startswith("local-dir:"):
        folder = Path(config.model_name[len("local-dir:"):]).expanduser()
        text_cfg = _read_json(folder / "open_clip_config.json")["model_cfg"].get("text_cfg", {})
    else:
        text_cfg = (open_clip.get_model_config(config.model_name) or {}).get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(resolve_hf_name(text_cfg["hf_tokenizer_name"]),
                           context_length=int(text_cfg.get("context_length", 77)))
    return open_clip.SimpleTokenizer(context_length=context_length)


def load_backbone(config: BackboneConfig | str, device: str | torch.device = "cpu") -> Backbone:
    """Build the open_clip model named by ``config``, frozen and in eval mode."""
    if isinstance(config, str):
        config = BackboneConfig(config)
    with torch.random.fork_rng(devices=[]):  # deterministic random init, caller's RNG untouched
        torch.manual_seed(config.seed)
        model = freeze(_build(config)).to(device)
    visual = getattr(model, "visual", None)
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise BackboneError(
            f"{config.describe()}: mpafer needs an open_clip VisionTransformer image tower "
            f"(got {type(visual).__name__}); ResNet and timm towers have no patch tokens for prompts."
        )
    preprocess = open_clip.get_model_preprocess_cfg(model)
    image_size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
    return Backbone(
        model=model,
        config=config,
        tokenizer=tokenizer_for(model, config),
        image_size=int(image_size),
        mean=tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD)),
        fingerprint=weight_fingerprint(model),
    )


def save_model_folder(model: nn.Module, model_cfg: dict[str, Any], folder: str | Path,
                      preprocess_cfg: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a 'local-dir:' folder (open_clip_config.json + open_clip_model.safetensors).

    ``dtype=torch.float16`` halves the file; loading casts the weights back to the model's dtype.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    skip = HF_TEXT_PREFIX if pretrained_hf_text(model_cfg) else None  # rebuilt from its own files
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    tmp = folder / "open_clip_config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, folder / "open_clip_config.json")
    state = {}
    for key, value in model.state_dict().items():
        if skip and key.startswith(skip):
            continue
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.contiguous()
    save_file(state, str(folder / "open_clip_model.safetensors.tmp"))
    os.replace(folder / "open_clip_model.safetensors.tmp", folder / "open_clip_model.safetensors")
    return folder
