"""Run settings: YAML merged with command-line overrides, and the hash a resumed run must match."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    """The configuration is invalid, or does not match the run being resumed."""


def deep_merge(base: dict, override: dict, where: str = "", open_sections: tuple[str, ...] = ("model",)) -> dict:
    """``override`` over ``base``; keys unknown to ``base`` are errors, except under ``open_sections``
    (the model section is checked by its own dataclass)."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        path = f"{where}{key}"
        is_open = path.split(".")[0] in open_sections
        if key not in merged and not is_open:
            raise ConfigError(f"unknown config key '{path}' (known: {', '.join(sorted(merged))})")
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and path not in open_sections:
            merged[key] = deep_merge(merged[key], value, f"{path}.", open_sections)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_dotted(config: dict, key: str, value: Any, open_sections: tuple[str, ...] = ("model",)) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    if parts[0] not in open_sections and parts[-1] not in node:
        raise ConfigError(f"--set {key}: unknown key (known here: {', '.join(sorted(node))})")
    node[parts[-1]] = value


def load_yaml(path: str | Path) -> dict:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err


def apply_sets(config: dict, items: Iterable[str]) -> None:
    """``--set key=value`` items; values are YAML (numbers, null, lists ...)."""
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        set_dotted(config, key.strip(), yaml.safe_load(text))


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def hashed_view(config: dict, not_hashed: Iterable[str] = ()) -> dict[str, Any]:
    """The settings that change what is learned (flattened); the others may differ on resume."""
    skip = set(not_hashed)
    return {k: v for k, v in flatten(config).items() if k not in skip}


def config_hash(config: dict, not_hashed: Iterable[str] = ()) -> str:
    view = hashed_view(config, not_hashed)
    return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()[:16]


def config_difference(old: dict, new: dict, not_hashed: Iterable[str] = ()) -> list[str]:
    a, b = hashed_view(old, not_hashed), hashed_view(new, not_hashed)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
