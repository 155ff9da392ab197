"""Reading an upload: Gradio's file payload to something ``load_image`` reads, the upload's
file deleted as soon as it is decoded (``discard_upload``), and why a file could not be read,
in plain words."""
from __future__ import annotations

import base64
import binascii
import filecmp
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

from mpafer.images import ImageError

log = logging.getLogger("mpafer.demo")

def image_source(value: Any) -> Any:
    """What ``load_image`` should read: Gradio's file payload (a dict with ``path``, or a
    ``data:`` URL, decoded in memory) becomes a path or bytes; anything else is passed on."""
    if not isinstance(value, dict):
        return value
    if value.get("path"):
        return value["path"]
    url = value.get("url") or ""
    if url.startswith("data:") and "," in url:
        try:
            return base64.b64decode(url.split(",", 1)[1], validate=False)
        except (binascii.Error, ValueError) as err:
            raise ImageError(f"the uploaded data is not valid base64 ({err})") from err
    raise ImageError("the upload carried no file")


def _same_file(path: Path, other: Path) -> bool:
    try:
        return path.stat().st_size == other.stat().st_size and filecmp.cmp(path, other, shallow=False)
    except OSError:
        return False


# Uploads deleted lately. Gradio's page fires the image's change event twice when a photo replaces
# another, both times with the same upload; the second finds the file gone and changes nothing.
_DISCARDED: "OrderedDict[str, None]" = OrderedDict()
_DISCARDED_MAX = 4096
_DISCARDED_LOCK = threading.Lock()


def already_discarded(value: Any) -> bool:
    """True for a file payload whose upload this process has already analysed and deleted."""
    if not isinstance(value, dict) or not value.get("path"):
        return False
    try:
        path = Path(value["path"]).resolve()
    except (OSError, RuntimeError, TypeError, ValueError):
        return False
    with _DISCARDED_LOCK:
        known = str(path) in _DISCARDED
    return known and not path.exists()


def _remember_discarded(path: Path) -> None:
    with _DISCARDED_LOCK:
        _DISCARDED[str(path)] = None
        while len(_DISCARDED) > _DISCARDED_MAX:
            _DISCARDED.popitem(last=False)


def discard_upload(value: Any, uploads: str | Path | None, keep: Iterable[str | Path] = ()) -> bool:
    """Delete Gradio's file of an upload (and its folder, when empty) once it has been decoded.

    Only a file payload (a dict with ``path``) inside ``uploads`` (the app's private temp folder)
    is deleted, never a file elsewhere, and never a copy of one of the ``keep`` files (the
    bundled examples, which Gradio hands out again each time an example is clicked). True when
    a file was deleted.
    """
    if uploads is None or not isinstance(value, dict) or not value.get("path"):
        return False
    try:
        root = Path(uploads).resolve()
        path = Path(value["path"]).resolve()
    except (OSError, RuntimeError, TypeError, ValueError):
        return False
    if root not in path.parents or not path.is_file():
        return False
    if any(_same_file(path, Path(k)) for k in keep):
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError:
        log.warning("could not delete an upload", exc_info=True)
        return False
    _remember_discarded(path)
    if path.parent != root:
        try:
            path.parent.rmdir()  # Gradio gives each upload a folder of its own
        except OSError:
            pass
    return True


def _reason(err: Exception, image: Any) -> str:
    """The loader's reason, with Gradio's temp path replaced by the name the user knows."""
    text = str(err)
    if isinstance(image, dict) and image.get("path"):
        text = text.replace(str(image["path"]), str(image.get("orig_name") or "the upload"))
    return text[:300]


def unreadable(err: Exception, image: Any) -> str:
    reason = _reason(err, image)
    for start, heading in (("image too small: ", "This picture is too small to look for a face in"),
                           ("image too large to open safely: ", "This picture is too large to open safely")):
        if reason.startswith(start):
            return f"**{heading}:** {reason[len(start):]}."
    return f"**This file could not be read as an image.** {reason}"

