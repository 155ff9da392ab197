"""How the demo's server runs: a private temp folder, uploads kept apart, images served
atomically, the port checked before the model loads, torch threads shared between requests.

Privacy, in short (``demo/app.py`` says it in full): Gradio writes each upload to disk before
a handler runs; here that happens in a temp folder of this process's own, removed at exit,
each upload in a folder with an unguessable name, deleted once decoded (``demo.uploads``).
"""
from __future__ import annotations

import atexit
import errno
import os
import secrets
import socket
import tempfile
from pathlib import Path

CONCURRENCY = 2  # requests served at once; each gets cores // CONCURRENCY torch threads


def private_temp_dir() -> Path:
    """Point Gradio at a fresh temp folder of this process's own, removed at exit.

    Call before the Blocks are built (Gradio reads ``GRADIO_TEMP_DIR`` then). An existing
    ``GRADIO_TEMP_DIR`` is used as the parent, so hosts that redirect temp files still can.
    """
    folder = tempfile.TemporaryDirectory(prefix="mpafer-gradio-", dir=os.environ.get("GRADIO_TEMP_DIR"))
    atexit.register(folder.cleanup)
    os.environ["GRADIO_TEMP_DIR"] = folder.name
    return Path(folder.name)


def private_uploads() -> None:
    """Give every upload a folder of its own, with an unguessable name. Idempotent.

    Gradio 6.31 names an upload's folder after the hash of its bytes, so two people who upload
    the same photo share one file, and deleting it after one analysis (``demo.uploads.discard_upload``)
    could pull it from under the other's. Mixing random bytes into that hash keeps the folders
    apart (and makes a folder's name say nothing about what is in it).
    """
    from gradio import route_utils

    upload_file = route_utils.GradioUploadFile
    if getattr(upload_file, "_mpafer_private", False):
        return
    original = upload_file.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.sha.update(secrets.token_bytes(16))

    upload_file.__init__ = __init__
    upload_file._mpafer_private = True


def port_problem(host: str, port: int) -> str | None:
    """Why the app could not listen on ``host``:``port``, in one line that names ``--port``, or None.

    Checked before the model loads, so a port already in use (another copy of the demo) is
    said at once; the server binds the same way (address reuse on, as uvicorn does)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, OverflowError, UnicodeError) as err:
        return f"cannot listen on --host {host!r} --port {port}: {getattr(err, 'strerror', None) or err}"
    with socket.socket(family, kind, proto) as sock:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return (f"port {port} is already in use on {host} (is the demo already running?); "
                        f"choose another with --port, e.g. --port {port + 1 if port < 65535 else 7860}")
            if err.errno in (errno.EACCES, errno.EPERM):
                return f"port {port} needs administrator rights on this machine; choose another with --port, e.g. --port 7860"
            return f"cannot listen on {host}:{port} ({err.strerror or err}); choose another with --port or --host"
    return None


def torch_threads(concurrency: int = CONCURRENCY) -> int:
    """Intra-op threads per request so that concurrent requests share the cores, not fight.

    Measured on a 2-core box shared with another busy process: a 112 px forward pass took
    27 ms with 1 thread and 1.2 s with 2 (spinning OpenMP threads starved of a core).
    """
    return max(1, (os.cpu_count() or 1) // concurrency)


def atomic_image_cache() -> None:
    """Make Gradio write the images it serves atomically (write aside, then rename).

    Gradio 6.31 names a served image after the hash of its bytes and rewrites that file in
    place on every request (``processing_utils.save_pil_to_cache``), so two users who get
    the same picture (an example, or one face shown twice) race: one response's file is
    truncated while the other is being sent, and the download fails with "Too little data
    for declared Content-Length" (seen with 8 concurrent clients in demo/load_test.py).
    Gradio's own ``save_file_to_cache`` already uses the rename pattern; this applies it to
    images too. Idempotent.
    """
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "_mpafer_atomic", False):
        return

    def save_pil_to_cache(img, cache_dir, name="image", format="webp"):
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        target = (folder / f"{name}.{format}").resolve()
        handle, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(staging, target)  # readers of the old copy keep a complete file
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return str(target)

    save_pil_to_cache._mpafer_atomic = True
    processing_utils.save_pil_to_cache = save_pil_to_cache
