"""Where the bundled default model lives, and how a user points mpafer at another one."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "mpafer-ferplus-default"
CHECKPOINT_ENV = "MPAFER_CHECKPOINT"
MODELS_DIR = Path(__file__).resolve().parents[1] / "assets" / "models"


def default_checkpoint() -> Path | None:
    """The checkpoint folder to use when none is given.

    ``$MPAFER_CHECKPOINT`` wins (returned even if it does not exist, so that loading it reports
    the mistake); else ``<repo>/assets/models/mpafer-ferplus-default`` when it holds a checkpoint;
    else None: no model is bundled with this checkout.
    """
    override = os.environ.get(CHECKPOINT_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    bundled = MODELS_DIR / DEFAULT_MODEL_NAME
    return bundled if (bundled / "mpafer.json").is_file() else None
