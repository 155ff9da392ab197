"""Saved state: atomic run folders, the optimiser as safetensors + JSON (no pickle), RNG state, last/.

last/ holds a stage's own weights files (written by ``Task.save_weights``) beside
train_state.safetensors (the optimiser's tensors) and train_state.json (epoch, best, settings
hash, optimiser metadata, schedule, RNG): everything needed to continue after its epoch exactly.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from mpafer.checkpoint import CheckpointError

from .config import ConfigError, config_difference

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Fill a temporary folder, then swap it in: ``path`` always holds a whole state, old or new.

    Two renames are not one atomic step; a crash between them leaves ``path.old``, which
    ``existing_folder`` falls back to.
    """
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    for file in tmp.iterdir():  # on the disk before the rename makes them visible
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def existing_folder(path: Path, marker: str = STATE_JSON) -> Path | None:
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / marker).is_file():
            return candidate
    return None


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser state_dict as safetensors tensors plus JSON (no pickle)."""
    tensors, plain = {}, {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[key] = value
    return tensors, {"state": plain, "param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = tensor
    for pid, values in meta["state"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state().tolist(), "python": list(random.getstate())}
    state["python"][1] = list(state["python"][1])
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_last(out: Path, save_weights: Callable[[Path], None], optimizer, scheduler, param_names: list[str],
              info: dict) -> None:
    """last/: the stage's weights plus everything needed to continue after ``info['epoch']``."""
    with atomic_folder(out / "last") as folder:
        save_weights(folder)
        tensors, optimizer_meta = flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(folder / STATE_TENSORS), metadata={"format": "mpafer-train-state"})
        state = {**info, "optimizer": optimizer_meta, "scheduler": scheduler.state_dict(), "rng": rng_state(),
                 "param_names": param_names}
        (folder / STATE_JSON).write_text(json.dumps(state, indent=1), encoding="utf-8")


def read_last(out: Path) -> tuple[Path, dict] | None:
    folder = existing_folder(out / "last")
    if folder is None:
        return None
    try:
        return folder, json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / STATE_JSON} cannot be read ({err})") from err


def check_resumable(previous: tuple[Path, dict] | None, config: dict, digest: str, out: Path,
                    resume: bool | None, global_batch: int, not_hashed=()) -> None:
    """Refuse to overwrite a run, or to continue one with other settings than it started with.

    ``resume``: True (--resume), False (a run in ``out`` is an error), None (always continue one).
    """
    if previous is None:
        return
    state = previous[1]
    if resume is False:
        raise ConfigError(f"{out} already holds a run (last finished epoch {state.get('epoch')}); "
                          f"pass --resume to continue it, or choose another --out")
    if state.get("config_hash") != digest:
        changes = config_difference(state.get("config", {}), config, not_hashed)
        raise ConfigError(f"cannot resume {out}: the configuration differs from the one it was started with "
                          f"({'; '.join(changes) or 'config hash differs'}). Resume with the same settings, "
                          f"or start a new run in another --out")
    if state.get("global_batch") != global_batch:
        raise ConfigError(f"cannot resume {out}: it was trained with a global batch of {state.get('global_batch')} "
                          f"images per step, this launch has {global_batch}; resume with as many processes "
                          f"and the same batch size")


def restore_training(previous: tuple[Path, dict], param_names: list[str], optimizer, scheduler) -> tuple[int, dict]:
    """Optimiser, schedule and RNG as they were after the last finished epoch; returns (epoch, best)."""
    folder, state = previous
    if state["param_names"] != param_names:
        raise CheckpointError(f"{folder}: its optimiser state is for {state['param_names']}")
    optimizer.load_state_dict(unflatten_optimizer(load_file(str(folder / STATE_TENSORS)), state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    return int(state["epoch"]), state["best"]
