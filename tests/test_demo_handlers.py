"""The demo's handlers as plain functions: no server, no browser."""
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ASTRONAUT, GROUP, REPO

sys.path.insert(0, str(REPO))  # `demo` is a folder of scripts, imported from the repo root

from demo import handlers  # noqa: E402
from mpafer.predictor import UNTRAINED, Predictor  # noqa: E402


@pytest.fixture(scope="module")
def predictor():
    with Predictor(UNTRAINED) as shared:
        yield shared


def _astronaut() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB")


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def assert_friendly(outputs, *words):
    assert outputs.session is None and outputs.probabilities is None
    assert "Traceback" not in outputs.message and "Error" not in outputs.message
    for word in words:
        assert word in outputs.message


def test_astronaut_one_face_with_label_and_heatmap(predictor):
    out = handlers.analyze(predictor, str(ASTRONAUT), False, "happiness")
    assert out.message.startswith("**One face:**")
    assert len(out.session.faces) == 1
    label = out.session.faces[0].label
    assert label in out.message and max(out.probabilities, key=out.probabilities.get) == label
    assert out.heatmap.size == (224, 224) and out.class_heatmap.size == (224, 224)
    assert out.face_selector["visible"] is False  # one face: no selector
    assert out.gradcam["visible"] is False
    assert out.annotated.size == (512, 512)
    assert out.regions and len(out.regions[0]) == len(handlers.REGION_HEADERS)
    assert {row[0] for row in out.regions} >= {"mouth", "eyes"}
    kept = out.session.faces[0]  # the tab's state: full-size maps are redrawn, not stored
    assert kept.heatmaps == {} and kept.maps is not None and kept.patch_features is not None


def test_group_four_faces_and_face_selector(predictor):
    out = handlers.analyze(predictor, str(GROUP), False, None)
    assert len(out.session.faces) == 4 and out.message.startswith("**4 faces**")
    assert out.face_selector["visible"] and [v for _, v in out.face_selector["choices"]] == [0, 1, 2, 3]
    view = handlers.select_face(predictor, out.session, 2, "anger", True)
    face = out.session.faces[2]
    assert view.probabilities == face.probabilities
    assert view.gradcam["visible"] and view.gradcam["value"].size == (224, 224)
    assert face.gradcam is not None  # computed once, kept with the face
    # the dropdown's class changes the second heatmap, not the first
    other = handlers.select_face(predictor, out.session, 2, "happiness", False)
    assert np.asarray(other.heatmap).tolist() == np.asarray(view.heatmap).tolist()
    if face.label not in ("anger", "happiness"):
        assert np.asarray(other.class_heatmap).tolist() != np.asarray(view.class_heatmap).tolist()
    assert handlers.select_face(predictor, out.session, 99, None, False).probabilities  # clamped
    assert handlers.select_face(predictor, None, 0, None, False) == handlers.EMPTY_FACE


def test_gradio_payload_and_upload_name(predictor, tmp_path):
    junk = tmp_path / "7f3a9c" / "notes.jpg"
    junk.parent.mkdir()
    junk.write_bytes(b"plain text pretending to be a photo")
    out = handlers.analyze(predictor, {"path": str(junk), "orig_name": "holiday.jpg"}, False, None)
    assert_friendly(out, "holiday.jpg")
    assert str(tmp_path) not in out.message  # no server paths shown
    ok = handlers.analyze(predictor, {"path": str(ASTRONAUT), "orig_name": "a.jpg", "url": None}, False, None)
    assert len(ok.session.faces) == 1
    buffer = io.BytesIO()
    _astronaut().save(buffer, format="PNG")
    import base64
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert len(handlers.analyze(predictor, {"path": None, "url": url}, False, None).session.faces) == 1


def test_bad_inputs_get_a_message_not_an_exception(predictor, tmp_path):
    assert handlers.analyze(predictor, None, False, None).message == handlers.NO_IMAGE
    not_image = tmp_path / "x.png"
    not_image.write_text("hello")
    assert_friendly(handlers.analyze(predictor, str(not_image), False, None), "could not be read")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert_friendly(handlers.analyze(predictor, str(empty), False, None), "could not be read")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(ASTRONAUT.read_bytes()[:5000])
    assert_friendly(handlers.analyze(predictor, str(truncated), False, None), "could not be read")
    assert_friendly(handlers.analyze(predictor, str(tmp_path / "missing.jpg"), False, None), "could not be read")
    assert_friendly(handlers.analyze(predictor, 12345, False, None), "could not be read")

    blank = _save(Image.new("RGB", (640, 480), (200, 200, 200)), tmp_path / "blank.png")
    out = handlers.analyze(predictor, str(blank), False, None)
    assert out.message == handlers.NO_FACE and out.session is None and out.annotated.size == (640, 480)


def test_odd_but_valid_images_are_handled(predictor, tmp_path):
    face = _astronaut()
    rgba = face.convert("RGBA")
    rgba.putalpha(200)
    grey = face.convert("L")
    rotated = face.transpose(Image.Transpose.ROTATE_90)  # stored sideways ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90 degrees clockwise to display"
    exif[0x010F] = "PrivateCam"  # camera make: metadata that must not be served back
    cases = {
        "rgba": _save(rgba, tmp_path / "rgba.png"),
        "grey": _save(grey, tmp_path / "grey.jpg"),
        "exif": _save(rotated, tmp_path / "exif.jpg", exif=exif.tobytes()),
        "array16": (np.asarray(grey, dtype=np.uint16) * 257),
    }
    for name, source in cases.items():
        out = handlers.analyze(predictor, str(source) if isinstance(source, Path) else source, False, None)
        assert out.session is not None and len(out.session.faces) == 1, (name, out.message)
    # served images carry no metadata: a photo's EXIF (here its orientation; GPS alike) stays behind
    assert not handlers.analyze(predictor, str(cases["exif"]), False, None).annotated.getexif()
    # EXIF applied: the face is found where it is in the upright photo, not on its side
    upright = handlers.analyze(predictor, face, False, None).session.faces[0].box
    turned = handlers.analyze(predictor, str(cases["exif"]), False, None).session.faces[0].box
    assert np.allclose(turned, upright, atol=12)


def test_huge_image_is_downscaled_before_decoding(predictor, tmp_path):
    big = Image.new("RGB", (10000, 10000), (120, 120, 120))
    big.paste(_astronaut().resize((6000, 6000)), (2000, 2000))
    path = _save(big, tmp_path / "big.jpg", quality=40)
    del big
    start = time.perf_counter()
    out = handlers.analyze(predictor, str(path), False, None)
    elapsed = time.perf_counter() - start
    assert len(out.session.faces) == 1
    assert max(out.annotated.size) <= handlers.UPLOAD_MAX_SIDE
    assert elapsed < 5.0


def test_ten_faces_all_handled_in_bounded_time(predictor):
    face = _astronaut().crop((120, 20, 340, 260))
    sheet = Image.new("RGB", (1280, 560), (90, 90, 90))
    for i in range(10):
        tile = face.resize((256, 280))
        if i % 2:
            tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        sheet.paste(tile, ((i % 5) * 256, (i // 5) * 280))
    start = time.perf_counter()
    out = handlers.analyze(predictor, np.asarray(sheet), False, None)
    elapsed = time.perf_counter() - start
    assert len(out.session.faces) == 10 and out.message.startswith("**10 faces**")
    assert len(out.face_selector["choices"]) == 10
    assert elapsed < 5.0


def test_probe(predictor):
    out = handlers.analyze(predictor, str(GROUP), False, None)
    probe = handlers.probe(predictor, out.session, 1, "wrinkled nose")
    assert probe.heatmap.size == (224, 224)
    assert "wrinkled nose" in probe.message and "closest class prompt" in probe.message
    assert sorted(row[0] for row in probe.scores) == sorted(predictor.classes)
    values = [row[1] for row in probe.scores]
    assert values == sorted(values, reverse=True)
    assert handlers.probe(predictor, out.session, 1, "  ").heatmap is None
    assert "first" in handlers.probe(predictor, None, 0, "smile").message


def test_live_frames(predictor):
    frame = np.asarray(Image.open(GROUP).convert("RGB"))  # 800x800
    out = handlers.live(predictor, frame)
    assert out.shape == (handlers.LIVE_MAX_SIDE, handlers.LIVE_MAX_SIDE, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, np.asarray(Image.fromarray(frame).resize(out.shape[1::-1])))  # drawn on
    assert handlers.live(predictor, None) is None
    assert handlers.live(predictor, np.zeros((0, 5, 3), dtype=np.uint8)) is None  # a broken frame: no crash


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_requests_leave_no_files_behind(predictor, tmp_path, monkeypatch):
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(private / "gradio"))
    upload = ASTRONAUT.read_bytes()
    before_repo = _files_under(REPO / "demo")
    out = handlers.analyze(predictor, upload, True, "anger")
    handlers.select_face(predictor, out.session, 0, "fear", True)
    handlers.probe(predictor, out.session, 0, "raised eyebrows")
    handlers.live(predictor, np.asarray(_astronaut()))
    assert out.session.faces
    assert _files_under(private) == set()
    assert _files_under(REPO / "demo") == before_repo
    assert not (Path(os.getcwd()) / ".gradio").exists()
