"""MediaPipe's side of face detection: loading a BlazeFace model through the tasks API, keeping the
native loader's noise off stderr, and closing detectors in time (MediaPipe's own ``__del__`` fails at
interpreter exit, after its thread pool is gone).
"""

from __future__ import annotations

import atexit
import os
import tempfile
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path


def load_blazeface(path: Path, min_confidence: float):
    # Imported here: importing this module (and mpafer.faces) never loads MediaPipe.
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_path=str(path)),
        running_mode=vision.RunningMode.IMAGE,
        min_detection_confidence=min_confidence,
    )
    return vision.FaceDetector.create_from_options(options)


def close_all(models: list) -> None:
    for model in models:
        model.close()


@contextmanager
def filtered_stderr(noise: bytes):
    """Hold back what native code writes to stderr meanwhile; pass on every line but ``noise``."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(line for line in held.read().splitlines(keepends=True) if noise not in line)
            if kept:
                os.write(2, kept)


OPEN_DETECTORS: weakref.WeakSet = weakref.WeakSet()  # every FaceDetector not yet closed
_exit_hook_registered = False


def _close_open_detectors() -> None:
    for detector in list(OPEN_DETECTORS):
        detector.close()


def register_exit_hook() -> None:
    """Close leftover detectors at exit while MediaPipe's thread pool still works.

    concurrent.futures shuts its pools down from ``threading._register_atexit`` hooks, which
    run before ``atexit`` and in reverse order of registration. Registering there after
    MediaPipe created its pool puts our hook first. Falls back to ``atexit`` on Pythons
    without that hook (then an unclosed detector may still print MediaPipe's traceback).
    """
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    register = getattr(threading, "_register_atexit", atexit.register)
    register(_close_open_detectors)
    _exit_hook_registered = True
