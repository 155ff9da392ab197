import os
from contextlib import contextmanager

# Offline by construction: nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "assets" / "examples" / "astronaut.jpg"
GROUP = REPO / "assets" / "examples" / "group.jpg"


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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served_app(concurrency: int | None = None, checkpoint: str | None = "untrained"):
    """The demo on a free loopback port, in this process; yields (demo, temp dir). ``checkpoint``: the
    untrained model by default (fast, no bundle needed); None serves the bundled default model."""
    import sys

    sys.path.insert(0, str(REPO))
    from demo.app import LAUNCH_OPTIONS, build_app, private_temp_dir
    from mpafer.predictor import Predictor

    saved = os.environ.get("GRADIO_TEMP_DIR")
    temp = private_temp_dir()
    predictor = Predictor(checkpoint)  # "untrained" is mpafer.predictor.UNTRAINED
    demo = build_app(predictor)
    queue = demo.queue(default_concurrency_limit=concurrency) if concurrency else demo.queue()
    queue.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                 **LAUNCH_OPTIONS)
    try:
        yield demo, temp
    finally:
        demo.close()
        predictor.close()
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved


def run_in_threads(work, threads: int = 4) -> list[BaseException]:
    """Run ``work()`` in several threads at once; the exceptions they raised."""
    import threading

    errors: list[BaseException] = []

    def guarded():
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - returned to the test, which asserts on it
            errors.append(exc)

    pool = [threading.Thread(target=guarded) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return errors
