import os

# Offline by construction: nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)  # 2 shared cores: keep timings stable
    except ImportError:
        pass


@pytest.fixture
def tiny_config():
    from mpafer.backbone import BackboneConfig
    from mpafer.model import MPAFERConfig

    return MPAFERConfig(backbone=BackboneConfig("mpafer-tiny"), topk=4, visual_prompt_tokens=2,
                        visual_prompt_depth=-1, n_ctx=4)


@pytest.fixture
def tiny_model(tiny_config):
    from mpafer.model import create_model

    return create_model(tiny_config)


def ferplus_dir() -> Path | None:
    candidates = [os.environ.get("MPAFER_FERPLUS"), REPO.parent / "shared" / "data" / "ferplus"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "test.npz").is_file():
            return Path(candidate)
    return None
