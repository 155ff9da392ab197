"""The demo's handlers as plain functions: no server, no browser."""
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from conftest import ASTRONAUT, GROUP, REPO

sys.path.insert(0, str(REPO))  # `demo` is a folder of scripts, imported from the repo root

from demo import face_panel, handlers, legends, live_view, outputs, probe_view, wording  # noqa: E402
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
    # the crop (224 px) with its colour legend below
    assert out.heatmap.width == 224 and out.heatmap.height > 224 and out.class_heatmap.size == out.heatmap.size
    assert out.face_selector["visible"] is False  # one face: no selector
    assert out.gradcam["visible"] is False
    assert out.annotated.size == (512, 512)
    assert out.regions and len(out.regions[0]) == len(face_panel.REGION_HEADERS)
    assert {row[0] for row in out.regions} >= {"mouth", "eyes"}
    kept = out.session.faces[0].explanation  # the tab's state: patch-grid maps; full-size ones drawn on read
    assert kept.maps.shape[1:] == predictor.model.grid and kept.patch_features is not None
    assert kept.occlusion is not None and kept.gradcams == {}  # the panel's checks, filled once, for this face


def test_an_upload_is_decoded_once(predictor, monkeypatch):
    """The handler decodes the upload (size limits, friendly errors); the predictor takes the picture as it is."""
    import mpafer.predictor
    from mpafer import images

    decoded = []
    real = images.load_image
    monkeypatch.setattr(handlers, "load_image", lambda *a, **k: decoded.append("handler") or real(*a, **k))
    monkeypatch.setattr(mpafer.predictor, "load_image", lambda *a, **k: decoded.append("predictor") or real(*a, **k))
    assert handlers.analyze(predictor, str(ASTRONAUT)).session.faces and decoded == ["handler"]


def test_group_four_faces_and_face_selector(predictor):
    out = handlers.analyze(predictor, str(GROUP), False, None)
    assert len(out.session.faces) == 4 and out.message.startswith("**4 faces**")
    assert out.face_selector["visible"] and [v for _, v in out.face_selector["choices"]] == [0, 1, 2, 3]
    view = handlers.select_face(predictor, out.session, 2, "anger", True)
    face = out.session.faces[2]
    assert view.probabilities == face.probabilities
    assert view.gradcam["visible"] and view.gradcam["value"].width == 224  # with its legend below
    assert "Grad-CAM for anger" in view.gradcam["label"]  # the class picked, not only the predicted one
    handlers.select_face(predictor, out.session, 2, None, True)
    assert face.gradcam is not None  # the predicted class's: computed once, kept with the face
    assert all(f.gradcam is None for i, f in enumerate(out.session.faces) if i != 2)  # for the face shown only
    with_cam = handlers.analyze(predictor, str(GROUP), True, None)
    assert [f.gradcam is not None for f in with_cam.session.faces] == [True, False, False, False]
    # the dropdown's class changes the second heatmap, not the first
    other = handlers.select_face(predictor, out.session, 2, "happiness", False)
    assert np.asarray(other.heatmap).tolist() == np.asarray(view.heatmap).tolist()
    if face.label not in ("anger", "happiness"):
        assert np.asarray(other.class_heatmap).tolist() != np.asarray(view.class_heatmap).tolist()
    assert handlers.select_face(predictor, out.session, 99, None, False).probabilities  # clamped
    assert handlers.select_face(predictor, None, 0, None, False) == outputs.EMPTY_FACE


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
    probe = probe_view.probe(predictor, out.session, 1, "wrinkled nose")
    assert probe.heatmap.width == 224 and probe.heatmap.height > 224  # with its colour legend
    assert '"wrinkled nose"' in probe.message and "Closest expression:" in probe.message
    assert any(probe.message.split("\n")[1].startswith(words) for words in ("Strong match", "Some match", "No match"))
    # the bar chart's data: every class, largest first, relative to the average class
    chart = probe.chart
    assert list(chart[probe_view.PROBE_CHART_X]) and sorted(chart[probe_view.PROBE_CHART_X]) == sorted(predictor.classes)
    values = list(chart[probe_view.PROBE_CHART_Y])
    assert values == sorted(values, reverse=True) and abs(sum(values)) < 1e-3
    assert probe_view.probe(predictor, out.session, 1, "  ").heatmap is None
    assert "first" in probe_view.probe(predictor, None, 0, "smile").message


def test_probe_text_goes_through_the_description_template_once(predictor, monkeypatch):
    """The library (Explainer.probe) applies the face template; the handler hands it the words only,
    so the text encoder sees the template once, and the message says how the words were read."""
    from mpafer.description_bank import DESCRIPTION_TEMPLATE

    session = handlers.analyze(predictor, str(ASTRONAUT)).session
    seen, encoded = [], []
    original, encode = predictor.probe, predictor.model.encode_text
    monkeypatch.setattr(predictor, "probe", lambda face, text: seen.append(text) or original(face, text))
    monkeypatch.setattr(predictor.model, "encode_text", lambda texts: encoded.extend(texts) or encode(texts))
    first = probe_view.probe(predictor, session, 0, "  wrinkled   nose. ")
    probe_view.probe(predictor, session, 0, "a photo of a face with a big grin")
    assert seen == ["wrinkled nose.", "a photo of a face with a big grin"]  # the words, not yet templated
    assert encoded == [DESCRIPTION_TEMPLATE.format(description="wrinkled nose"), "a photo of a face with a big grin"]
    assert 'read by the model as "a photo of a face with wrinkled nose."' in first.message
    assert not hasattr(probe_view, "probe_prompt")  # one place applies the template
    assert DESCRIPTION_TEMPLATE == "a photo of a face with {description}."  # what the bank is encoded with


def test_probe_refuses_empty_non_text_and_caps_long_text(predictor):
    session = handlers.analyze(predictor, str(ASTRONAUT)).session
    for bad in ("", "   ", "\n\t", None, 42, ["smile"], {"text": "smile"}, "1234 !!! ??", "🙂🙂"):
        out = probe_view.probe(predictor, session, 0, bad)
        assert out.heatmap is None and out.chart is None and out.message, bad
        assert "e.g. wrinkled nose" in out.message, (bad, out.message)
    long = " ".join(["raised inner brows"] * 40)  # 759 characters
    out = probe_view.probe(predictor, session, 0, long)
    assert out.heatmap is not None
    assert f"limited to {probe_view.PROBE_MAX_CHARS}" in out.message and "759 characters" in out.message
    used = out.message.split('"')[1]
    assert len(used) <= probe_view.PROBE_MAX_CHARS and long.startswith(used) and long[len(used)] == " "  # cut at a word
    assert f"only the first {len(used)} were used" in out.message
    ok = probe_view.probe(predictor, session, 0, "raised inner brows")
    assert "limited to" not in ok.message and "Notice" not in ok.message


def test_probe_message_is_plain_text_and_not_english_gets_a_notice(predictor):
    session = handlers.analyze(predictor, str(ASTRONAUT)).session
    markup = "<b>wide</b> **eyes** <img src=x onerror=alert(1)> [link](http://x)"
    out = probe_view.probe(predictor, session, 0, markup)
    assert markup in out.message  # shown as typed (the app shows it in a Textbox), not escaped or dropped
    assert "Notice" not in out.message
    for foreign in ("la bouche ouverte avec un sourire", "ojos muy abiertos", "ein breites Lächeln",
                    "улыбка", "笑顔", "sourire ébahi"):
        notice = probe_view.probe(predictor, session, 0, foreign)
        assert "does not look like English" in notice.message, foreign
        assert notice.heatmap is not None  # a notice, not a refusal
    for english in ("corners of the mouth pulled up", "eyes wide open", "a frown", "nose wrinkled in disgust"):
        assert probe_view.language_notice(english) == "", english


def test_heatmaps_carry_a_colour_legend_and_the_picker_starts_at_the_prediction(predictor):
    out = handlers.analyze(predictor, str(ASTRONAUT))
    face = out.session.faces[0]
    assert out.heat_class["value"] == face.label  # no class asked for: the predicted one
    scale = face.explanation.scale
    assert f"{scale.low:.3f}" in out.heat_legend and f"{scale.high:.3f}" in out.heat_legend
    assert "Red" in out.heat_legend and "blue" in out.heat_legend
    pixels = np.asarray(out.heatmap)
    bar = pixels[224 + 3 + 4]  # the middle of the colour bar under the crop
    left, right = bar[5].astype(int), bar[-6].astype(int)
    assert left[2] > left[0] + 60 and right[0] > right[2] + 60  # blue on the left, red on the right
    # another class keeps its pick; another face (or a new photo) goes back to the predicted class
    other = next(c for c in predictor.classes if c != face.label)
    assert handlers.select_face(predictor, out.session, 0, other, False).heat_class["value"] == other
    view, cleared = handlers.change_face(predictor, out.session, 0, False)
    assert view.heat_class["value"] == face.label and cleared == outputs.EMPTY_PROBE
    assert handlers.analyze(predictor, str(ASTRONAUT)).probe_message == ""


def test_descriptions_short_table_and_the_rest_with_words(predictor):
    out = handlers.analyze(predictor, str(GROUP))
    face = out.session.faces[0]
    per_region = {}
    for row in out.regions:
        per_region.setdefault(row[0], []).append(row)
    assert per_region and all(len(rows) <= face_panel.SHORT_TABLE_ROWS for rows in per_region.values())
    assert len(out.regions) + len(out.more_regions) == sum(len(items) for items in face.regions.values())
    assert out.more_regions  # the rest, behind the accordion
    for region, rows in per_region.items():  # the short table holds each region's best-ranked ones
        ranks = [int(row[4].split("/")[0]) for row in rows]
        rest = [int(row[4].split("/")[0]) for row in out.more_regions if row[0] == region]
        assert ranks == sorted(ranks) and (not rest or max(ranks) < min(rest))
    for row in out.regions + out.more_regions:
        assert row[3].split(" (")[0] in ("strong match", "some match", "no match"), row
    assert "Match" in out.score_key and "strong match" in out.score_key
    # each row says the expression its description was written for (marked when it is the predicted one)
    assert face_panel.REGION_HEADERS[1:3] == ["description", "written for"]
    written = {(item.region, item.text): item for items in face.regions.values() for item in items}
    assert {item.class_name for item in written.values()} - {face.label}  # other classes' descriptions too
    for row in out.regions + out.more_regions:
        item = written[(row[0], row[1])]
        assert row[2] == item.class_name + (" (predicted)" if item.predicted else ""), row
        assert item.predicted == (item.class_name == face.label)
    # no description_calibration.json beside the untrained model: the key says the scores are uncalibrated
    assert not predictor.explainer.calibrated and "**uncalibrated**" in out.score_key
    assert "Written for" in out.score_key


def test_score_words():
    from mpafer.description_scores import DescriptionScore

    def score(value, method="zscore", rank=1, of=150):
        return DescriptionScore("mouth", "happiness", "lips pulled back", value, 0.2, rank, of, True, method)

    assert wording.match_words(score(1.46)) == "strong match (+1.5)"
    assert wording.match_words(score(0.31)) == "some match (+0.3)"
    assert wording.match_words(score(-0.4)) == "no match (-0.4)"
    assert wording.match_words(score(0.08, "region_minus_face")) == "strong match (+0.080)"
    assert wording.match_level(score(-0.01, "region_minus_face")) == "no match"
    # uncalibrated cosines: the words compare ranks within the region
    assert wording.match_words(score(0.231, "raw", rank=15)) == "strong match (0.231)"
    assert wording.match_level(score(0.2, "raw", rank=50)) == "some match"
    assert wording.match_level(score(0.2, "raw", rank=51)) == "no match"
    assert probe_view.probe_level(0.9) == "strong match" and probe_view.probe_level(0.6) == "some match"
    assert probe_view.probe_level(0.1) == "no match"
    assert wording.confidence_words(0.9) == "the model is quite sure"
    assert wording.confidence_words(0.3).startswith("the model is unsure")


def test_too_small_and_too_large_pictures_are_said_in_plain_words(predictor, tmp_path):
    tiny = _save(Image.new("RGB", (1, 1), (128, 128, 128)), tmp_path / "dot.png")
    out = handlers.analyze(predictor, {"path": str(tiny), "orig_name": "dot.png"})
    assert_friendly(out, "too small", "1x1 pixels")
    from test_images import png_header_only

    for width, height in ((13000, 12000), (40000, 40000)):
        bomb = tmp_path / f"bomb{width}.png"
        bomb.write_bytes(png_header_only(width, height))
        out = handlers.analyze(predictor, {"path": str(bomb), "orig_name": "huge.png"})
        assert_friendly(out, "too large to open safely", "megapixels", "smaller copy", "huge.png")
        assert "DOS" not in out.message and "bomb" not in out.message and str(tmp_path) not in out.message


def _exif_photo(path: Path, marker: str) -> bytes:
    """The astronaut with a unique camera make and GPS position in its EXIF: bytes no other file has."""
    exif = Image.Exif()
    exif[0x010F] = marker  # Make
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (51.0, 30.0, 12.0), "W", (0.0, 7.0, 40.0)
    _astronaut().save(path, quality=90, exif=exif)
    return path.read_bytes()


def test_upload_is_deleted_once_decoded_but_examples_and_other_files_stay(predictor, tmp_path):
    import shutil

    uploads = tmp_path / "gradio"
    folder = uploads / "f00d"
    folder.mkdir(parents=True)
    upload = folder / "holiday.jpg"
    data = _exif_photo(upload, "PrivateCam-1")
    out = handlers.analyze(predictor, {"path": str(upload), "orig_name": "holiday.jpg"}, uploads=uploads,
                           keep=[ASTRONAUT])
    assert len(out.session.faces) == 1
    assert not upload.exists() and not folder.exists() and uploads.is_dir()
    # the page asks again for the same upload (it does when a photo replaces another): nothing changes
    again = handlers.analyze(predictor, {"path": str(upload), "orig_name": "holiday.jpg"}, uploads=uploads)
    assert again == outputs.UNCHANGED and all(value == gr.skip() for value in again)
    assert not [p for p in uploads.rglob("*") if p.is_file() and p.read_bytes() == data]
    assert not out.annotated.getexif() and "exif" not in out.annotated.info

    junk = uploads / "beef" / "notes.jpg"  # not an image: deleted all the same
    junk.parent.mkdir()
    junk.write_bytes(b"not a photo")
    assert_friendly(handlers.analyze(predictor, {"path": str(junk), "orig_name": "notes.jpg"}, uploads=uploads),
                    "notes.jpg")
    assert not junk.exists()

    example = uploads / "cafe" / "astronaut.jpg"  # Gradio's copy of an example: clicked again later
    example.parent.mkdir()
    shutil.copy(ASTRONAUT, example)
    for _ in range(2):
        assert handlers.analyze(predictor, {"path": str(example)}, uploads=uploads, keep=[ASTRONAUT]).session
    assert example.exists()

    mine = tmp_path / "mine.jpg"  # outside the app's upload folder, or a plain path: never deleted
    shutil.copy(ASTRONAUT, mine)
    assert handlers.analyze(predictor, {"path": str(mine)}, uploads=uploads).session and mine.exists()
    sneaky = uploads / ".." / "mine.jpg"
    assert handlers.analyze(predictor, {"path": str(sneaky)}, uploads=uploads).session and mine.exists()
    inside = uploads / "dead" / "plain.jpg"
    inside.parent.mkdir()
    shutil.copy(ASTRONAUT, inside)
    assert handlers.analyze(predictor, str(inside), uploads=uploads).session and inside.exists()
    assert handlers.analyze(predictor, {"path": str(inside)}).session and inside.exists()  # no folder given


def test_live_frames(predictor):
    frame = np.asarray(Image.open(GROUP).convert("RGB"))  # 800x800
    out = live_view.live(predictor, frame)
    assert out.shape == (live_view.LIVE_MAX_SIDE, live_view.LIVE_MAX_SIDE, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, np.asarray(Image.fromarray(frame).resize(out.shape[1::-1])))  # drawn on
    assert live_view.live(predictor, None) is None
    assert live_view.live(predictor, np.zeros((0, 5, 3), dtype=np.uint8)) is None  # a broken frame: no crash


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
    handlers.select_face(predictor, out.session, 0, "fear", True, "anger")
    handlers.contrast(predictor, out.session, 0, "fear", "happiness")
    probe_view.probe(predictor, out.session, 0, "raised eyebrows")
    live_view.live(predictor, np.asarray(_astronaut()))
    assert out.session.faces
    assert _files_under(private) == set()
    assert _files_under(REPO / "demo") == before_repo
    assert not (Path(os.getcwd()) / ".gradio").exists()


def test_analyze_outputs_are_the_face_view_then_the_probe():
    """The app wires AnalyzeOutputs, FaceView and ContrastOutputs to lists of components by position."""
    fields = outputs.AnalyzeOutputs._fields
    face = outputs.FaceView._fields
    assert fields[:3] == ("annotated", "message", "face_selector") and fields[3:3 + len(face)] == face
    assert fields[3 + len(face):] == tuple(f"probe_{name}" for name in outputs.ProbeOutputs._fields) + ("session",)
    assert set(outputs.ContrastOutputs._fields) <= set(face)
    assert len(outputs.EMPTY_FACE) == len(face) and len(outputs.UNCHANGED) == len(fields)


def _outline_pixels(picture: Image.Image, face, heat: np.ndarray) -> np.ndarray:
    """(S, S) True where ``picture`` (a heatmap with its legend below) differs from the bare overlay."""
    from mpafer.heatmaps import overlay

    side = face.crop.width
    drawn = np.asarray(picture)[:side].astype(int)
    plain = np.asarray(overlay(face.crop, heat)).astype(int)
    changed = np.any(drawn != plain, axis=-1)
    assert (drawn[changed] == 255).all()  # white lines only
    return changed


def test_class_heatmaps_outline_the_patches_that_entered_the_score(predictor):
    out = handlers.analyze(predictor, str(ASTRONAUT))
    face = out.session.faces[0]
    other = face_panel.runner_up(face)
    view = handlers.select_face(predictor, out.session, 0, other, False)
    k = predictor.model.config.topk
    masks = []
    for picture, name in ((out.heatmap, face.label), (view.class_heatmap, other)):
        cells = face.explanation.cells(name)
        assert cells.shape == predictor.model.grid and cells.sum() == k
        changed = _outline_pixels(picture, face, face.explanation.heatmap(name))
        assert changed.any()
        # every outline pixel lies on the edge of one of the top-k cells (within the line width)
        step = face.crop.width / cells.shape[0]
        near = np.zeros_like(changed)
        for r, c in zip(*np.nonzero(cells)):
            near[max(0, int(r * step) - 3):int((r + 1) * step) + 3, max(0, int(c * step) - 3):int((c + 1) * step) + 3] = True
        assert near[changed].all()
        # ... and most top-k cells carry outline pixels (a cell inside a block of them has none)
        touched = sum(bool(changed[int(r * step):int((r + 1) * step) + 1, int(c * step):int((c + 1) * step) + 1].any())
                      for r, c in zip(*np.nonzero(cells)))
        assert touched >= k // 2
        masks.append(changed)
    if not np.array_equal(face.explanation.cells(face.label), face.explanation.cells(other)):
        assert not np.array_equal(masks[0], masks[1])  # each class's own cells
    note = f"outlined: the {k} patches that entered the score"
    assert legends.outline_note(k) == note and "Outlined in white" in out.heat_legend
    assert f"the {k} patches that entered the score" in out.heat_legend
    bare = legends.heatmap_image(face.crop, face.explanation.heatmap(), face.explanation.scale)
    assert bare.height < out.heatmap.height  # the legend strip has one more line: the outline note


def test_contrast_why_a_rather_than_b(predictor):
    out = handlers.analyze(predictor, str(ASTRONAUT))
    face = out.session.faces[0]
    ranked = sorted(face.probabilities, key=face.probabilities.get, reverse=True)
    assert ranked[0] == face.label
    assert face_panel.runner_up(face) == ranked[1] and out.contrast_class["value"] == ranked[1]  # B starts at the runner-up
    assert f"Why {face.label} rather than {ranked[1]}?" in out.contrast_legend
    assert f"evidence for {face.label}" in out.contrast_legend and f"evidence for {ranked[1]}" in out.contrast_legend
    picture = np.asarray(out.contrast)
    side = face.crop.width
    assert picture.shape[1] == side and picture.shape[0] > side  # the crop with its own legend below

    def colour_at_extreme(image: np.ndarray, first: str, second: str) -> tuple[np.ndarray, float]:
        """The colour blended onto the crop (alpha 0.5) at the cell where the two maps differ most."""
        diff = face.explanation.contrast(first, second)
        assert diff.shape == predictor.model.grid
        r, c = np.unravel_index(int(np.argmax(np.abs(diff))), diff.shape)
        step = side // diff.shape[0]
        y, x = r * step + step // 2, c * step + step // 2
        colour = 2 * (image[y, x].astype(float) - 0.5 * np.asarray(face.crop)[y, x].astype(float))
        return colour, float(diff[r, c])

    colour, value = colour_at_extreme(picture, face.label, ranked[1])
    red_minus_blue = colour[0] - colour[2]
    assert red_minus_blue > 60 if value > 0 else red_minus_blue < -60  # red for A, blue for B
    swapped = np.asarray(handlers.contrast(predictor, out.session, 0, ranked[1], face.label).contrast)
    colour, _ = colour_at_extreme(swapped, face.label, ranked[1])
    assert (colour[0] - colour[2]) * red_minus_blue < 0  # the other way round: the other colour
    bar = picture[side + 3 + 4]  # the middle of the legend's colour bar
    left, right = bar[5].astype(int), bar[-6].astype(int)
    assert left[2] > left[0] + 40 and right[0] > right[2] + 40  # blue (B) on the left, red (A) on the right

    # another B redraws the contrast alone; A is the class of the second heatmap
    third = handlers.contrast(predictor, out.session, 0, None, ranked[2])
    assert third.contrast_class["value"] == ranked[2] and f"rather than {ranked[2]}" in third.contrast_legend
    assert not np.array_equal(np.asarray(third.contrast), picture)
    same = handlers.contrast(predictor, out.session, 0, ranked[2], ranked[2])  # B = A: the most probable other
    assert same.contrast_class["value"] == ranked[0]
    view = handlers.select_face(predictor, out.session, 0, ranked[3], False, ranked[2])  # A moves, B kept
    assert view.contrast_class["value"] == ranked[2]
    assert f"Why {ranked[3]} rather than {ranked[2]}?" in view.contrast_legend
    view, _ = handlers.change_face(predictor, out.session, 0, False)  # a face picked: B back at the runner-up
    assert view.contrast_class["value"] == ranked[1]
    assert handlers.contrast(predictor, None, 0, None, None) == outputs.EMPTY_CONTRAST


def test_occlusion_check_runs_for_the_face_shown_once(predictor, monkeypatch):
    from mpafer.occlusion import OCCLUDED_REGIONS

    calls = []
    original = predictor.occlusion
    monkeypatch.setattr(predictor, "occlusion", lambda face, *args: calls.append(id(face)) or original(face, *args))
    out = handlers.analyze(predictor, str(GROUP))
    faces = out.session.faces
    assert len(faces) == 4 and calls == [id(faces[0])]  # only the face on screen, not all four
    result = original(faces[0])
    assert result.target == predictor.classes.index(faces[0].label)  # the predicted class
    assert [row[0] for row in out.occlusion] == [r.region for r in result.regions]
    assert set(row[0] for row in out.occlusion) == set(OCCLUDED_REGIONS)
    assert all(len(row) == len(wording.OCCLUSION_HEADERS) for row in out.occlusion)
    changes = [float(row[2].split()[0]) for row in out.occlusion]
    assert changes == sorted(changes)  # the largest drop first
    assert changes == pytest.approx([100 * r.change for r in result.regions], abs=0.051)
    for row, region in zip(out.occlusion, result.regions):
        assert row[1] == f"{result.probability:.0%} → {region.probability:.0%}" and row[2].endswith(" points")
        assert row[3] == wording.occlusion_words(region.change, faces[0].label, predictor.classes[region.label])
    assert f"Blurring check for {faces[0].label}" in out.occlusion_summary
    assert f"{faces[0].confidence:.0%} on the whole face" in out.occlusion_summary
    handlers.select_face(predictor, out.session, 0, "anger", True)  # another class, Grad-CAM: kept, not rerun
    handlers.contrast(predictor, out.session, 0, None, "fear")
    assert len(calls) == 1
    view, _ = handlers.change_face(predictor, out.session, 2, False)
    assert calls == [id(faces[0]), id(faces[2])] and view.occlusion
    handlers.change_face(predictor, out.session, 2, False)
    assert len(calls) == 2


def test_occlusion_in_words():
    from mpafer.occlusion import OcclusionResult, RegionOcclusion

    classes = ["neutral", "happiness", "surprise"]
    result = OcclusionResult(1, 0.82, (RegionOcclusion("mouth", 0.40, -0.42, 0), RegionOcclusion("eyes", 0.79, -0.03, 1),
                                       RegionOcclusion("nose", 0.824, 0.004, 1), RegionOcclusion("brows", 0.86, 0.04, 1),
                                       RegionOcclusion("cheeks", 0.95, 0.13, 1)))
    rows = wording.occlusion_rows(result, classes)
    assert rows[0] == ["mouth", "82% → 40%", "-42.0 points",
                       "matters a lot: without it the model is much less sure of happiness; it then sees neutral"]
    assert rows[1][3] == "matters a little: without it the model is a little less sure of happiness"
    assert rows[2][2] == "+0.4 points" and rows[2][3] == "hardly matters"
    assert rows[3][3].startswith("works a little against happiness")
    assert rows[4][3].startswith("works strongly against happiness")
    summary = wording.occlusion_summary(result, classes)
    assert "Blurring check for happiness** (82% on the whole face)" in summary
    assert "Blurring the mouth lowers happiness most, to 40%." in summary
    flat = OcclusionResult(1, 0.5, (RegionOcclusion("eyes", 0.49, -0.01, 1),))
    assert "No single part lowers happiness by 2 points or more" in wording.occlusion_summary(flat, classes)


def test_gradcam_follows_the_class_picker(predictor, monkeypatch):
    from mpafer.heatmaps import overlay

    out = handlers.analyze(predictor, str(ASTRONAUT), True)
    face = out.session.faces[0]
    assert out.gradcam["visible"] and out.gradcam["label"] == f"Grad-CAM for {face.label} (the predicted expression)"
    other = face_panel.runner_up(face)
    expected = np.asarray(overlay(face.crop, predictor.gradcam_map(face, other))).astype(int)  # computed afresh
    calls = []
    compute = predictor._gradcams
    monkeypatch.setattr(predictor, "_gradcams", lambda faces, names: calls.extend(names) or compute(faces, names))
    view = handlers.select_face(predictor, out.session, 0, other, True)
    assert calls == [other] and view.gradcam["label"] == f"Grad-CAM for {other} (the expression picked above)"
    drawn = np.asarray(view.gradcam["value"])[:face.crop.height].astype(int)
    assert np.abs(drawn - expected).max() <= 1  # the other class's own Grad-CAM, not the predicted one's
    assert not np.array_equal(np.asarray(view.gradcam["value"]), np.asarray(out.gradcam["value"]))
    assert "picked expression" in view.heat_legend
    handlers.select_face(predictor, out.session, 0, other, True, "fear")  # another B: the map is kept
    assert calls == [other]
    back = handlers.select_face(predictor, out.session, 0, face.label, True)  # the predicted one: kept with the face
    assert calls == [other] and np.array_equal(np.asarray(back.gradcam["value"]), np.asarray(out.gradcam["value"]))
    assert handlers.select_face(predictor, out.session, 0, other, False).gradcam["visible"] is False
