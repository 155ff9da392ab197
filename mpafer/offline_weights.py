"""Pretrained weights offline: find them in the local caches, or fail at once with a message that names
them and says how to supply them (never a download attempt that hangs: ``HF_HUB_OFFLINE=1`` or an
unreachable hub is checked before open_clip is asked for anything).
"""
from __future__ import annotations

import os
import socket
from typing import Any

import open_clip


class BackboneError(RuntimeError):
    """A backbone could not be built or its weights could not be found."""


def offline_requested() -> bool:
    return any(os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"}
               for k in ("HF_HUB_OFFLINE", "MPAFER_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(host: str = "huggingface.co", timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def how_to_supply(name: str, tag: str) -> str:
    call = f"'{name}', pretrained='{tag}'" if tag else f"'{name}'"
    return (
        f"To use these weights offline, download them once on a machine with network, e.g.\n"
        f"  python -c \"import open_clip; open_clip.create_model({call})\"\n"
        f"and copy the Hugging Face cache (~/.cache/huggingface/hub, or set HF_HOME / cache_dir) here, "
        f"or save the weights file and pass its path instead of the tag "
        f"(e.g. --pretrained /path/to/open_clip_model.safetensors), "
        f"or point model_name at a 'local-dir:' folder holding open_clip_config.json and the weights."
    )


def cached_weights(pretrained_cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """Path of already-downloaded weights for an open_clip pretrained tag, else None."""
    if pretrained_cfg.get("file"):
        return pretrained_cfg["file"] if os.path.isfile(pretrained_cfg["file"]) else None
    hub = pretrained_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = pretrained_cfg.get("url", "")
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(target):
            return target
    return None


def check_pretrained_tag(name: str, tag: str, cache_dir: str | None) -> None:
    """Fail fast, before open_clip tries to download, when the tag cannot be satisfied offline."""
    pretrained_cfg = open_clip.get_pretrained_cfg(name, tag)
    if not pretrained_cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise BackboneError(
            f"'{tag}' is neither a pretrained tag of open_clip model '{name}' nor an existing weights file. "
            f"Known tags: {', '.join(tags) or 'none'}."
        )
    if cached_weights(pretrained_cfg, cache_dir):
        return
    if offline_requested():
        reason = "HF_HUB_OFFLINE is set, so nothing may be downloaded"
    elif not hub_reachable():
        reason = "the model hub cannot be reached from this machine"
    else:
        return  # online and not cached: let open_clip download it, as a user expects
    raise BackboneError(
        f"Pretrained weights '{name}' / '{tag}' are not in the local cache and {reason}.\n"
        + how_to_supply(name, tag)
    )


def check_hf_hub(repo: str, cache_dir: str | None) -> None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "open_clip_config.json", cache_dir=cache_dir)
    if isinstance(cached, str):
        return
    if offline_requested() or not hub_reachable():
        raise BackboneError(
            f"Hub model 'hf-hub:{repo}' is not in the local cache and cannot be downloaded "
            f"(offline or hub unreachable).\n" + how_to_supply(f"hf-hub:{repo}", "")
        )
