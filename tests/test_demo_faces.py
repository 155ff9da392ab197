"""The demo with many faces: numbered markers that never overlap or leave the picture, the
details and the "showing N of M" note below it, and live labels smoothed per face."""
import sys
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import ASTRONAUT, REPO

sys.path.insert(0, str(REPO))  # `demo` is a folder of scripts, imported from the repo root

from demo import annotate, handlers, live_view, wording  # noqa: E402
from mpafer.faces import FaceList  # noqa: E402
from mpafer.predictor import UNTRAINED, Predictor  # noqa: E402
from mpafer.tracking import FaceTracker  # noqa: E402


@pytest.fixture(scope="module")
def predictor():
    with Predictor(UNTRAINED) as shared:
        yield shared


def fake(box, label="happiness", confidence=0.82):
    return SimpleNamespace(box=tuple(float(v) for v in box), label=label, confidence=confidence)


def overlap(a, b):
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def assert_clean(plan, size):
    rects = [tag.rect for tag in plan.tags] + ([plan.legend_rect] if plan.legend_rect else [])
    for rect in rects:
        assert 0 <= rect[0] < rect[2] <= size[0] and 0 <= rect[1] < rect[3] <= size[1], rect
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert overlap(a, b) == 0, (a, b)


def grid_faces(rows, cols, size, side):
    cell_w, cell_h = size[0] / cols, size[1] / rows
    return [fake((c * cell_w + (cell_w - side) / 2, r * cell_h + (cell_h - side) / 2,
                  c * cell_w + (cell_w + side) / 2, r * cell_h + (cell_h + side) / 2))
            for r in range(rows) for c in range(cols)]


@pytest.mark.parametrize("rows, cols, size, side", [(6, 6, (1280, 720), 45), (7, 7, (1280, 720), 60),
                                                    (1, 1, (512, 512), 100), (2, 2, (800, 800), 80)])
def test_markers_never_overlap_or_leave_the_picture(rows, cols, size, side):
    faces = grid_faces(rows, cols, size, side)
    plan = annotate.layout(size, faces)
    assert [tag.text for tag in plan.tags] == [str(n) for n in range(1, len(faces) + 1)]
    assert plan.legend == [] and plan.legend_rect is None
    assert_clean(plan, size)


def test_markers_of_faces_at_the_picture_edges_and_in_a_crowd_stay_clean():
    rng = np.random.default_rng(3)
    size = (640, 480)
    faces = [fake((0, 0, 60, 60)), fake((580, 420, 640, 480)), fake((590, 0, 640, 50))]
    for _ in range(25):  # a crowd: overlapping boxes packed in one corner
        x, y = rng.uniform(0, 200), rng.uniform(0, 150)
        faces.append(fake((x, y, x + 40, y + 40)))
    plan = annotate.layout(size, faces)
    assert len(plan.tags) == len(faces)
    assert_clean(plan, size)


def test_live_labels_carry_the_details_or_fall_back_to_a_legend():
    size = (480, 360)
    one = annotate.layout(size, [fake((200, 100, 300, 200), "surprise", 0.51)], labels=True)
    assert [tag.text for tag in one.tags] == ["1 surprise 51%"] and one.legend_rect is None
    assert_clean(one, size)
    crowded = grid_faces(4, 6, size, 60)  # no room for "n label p%" beside 24 faces
    plan = annotate.layout(size, crowded, labels=True)
    assert [tag.text for tag in plan.tags] == [str(n) for n in range(1, 25)]
    assert plan.legend and plan.legend_rect[3] == size[1]
    assert "24: happiness 82%" in " ".join(plan.legend)
    assert_clean(plan, size)


def test_annotate_draws_markers_and_keeps_the_size():
    picture = Image.new("RGB", (640, 480), (128, 128, 128))
    faces = [fake((100, 100, 200, 200)), fake((300, 120, 390, 210))]
    out = annotate.annotate(picture, faces)
    assert out.size == picture.size and not out.getexif()
    assert not np.array_equal(np.asarray(out), np.asarray(picture))
    live = annotate.annotate(picture, grid_faces(4, 6, (640, 480), 70), labels=True)
    assert live.size == picture.size
    assert np.asarray(live)[-5:].mean() < 60  # the legend strip at the bottom


def test_the_note_says_when_the_limit_is_reached():
    faces = FaceList([fake((0, 0, 10, 10)), fake((20, 0, 30, 10), "neutral", 0.4)], found=63)
    message = wording.describe_faces(faces)
    assert message.startswith("**Showing the 2 largest of 63 faces**")
    assert "reading order" in message and "2: neutral (40%)" in message
    assert wording.describe_faces(FaceList(faces, found=2)).startswith("**2 faces**, numbered in reading order")
    assert wording.describe_faces([faces[0]]).startswith("**One face:** happiness (82%)")
    assert wording.describe_faces(FaceList([faces[0]], found=5)).startswith("**Showing the 1 largest of 5 faces**")


def group_picture(rows, cols, size=(1280, 720)):
    photo = Image.open(ASTRONAUT).convert("RGB")
    head = photo.crop((120, 20, 340, 260))  # head and shoulders
    canvas = Image.new("RGB", size, (200, 200, 200))
    cell_w, cell_h = size[0] // cols, size[1] // rows
    for r in range(rows):
        for c in range(cols):
            tile = head.resize((min(cell_w, cell_h) - 6, min(cell_w, cell_h) - 6))
            canvas.paste(ImageOps.mirror(tile) if (r + c) % 2 else tile, (c * cell_w + 3, r * cell_h + 3))
    return canvas


def test_a_group_photo_past_the_limit(predictor):
    small = Predictor(predictor.model, detector=predictor.detector, max_faces=12)
    out = handlers.analyze(small, np.asarray(group_picture(4, 5)), False, None)
    assert out.message.startswith("**Showing the 12 largest of 20 faces**"), out.message
    assert len(out.session.faces) == 12 and len(out.face_selector["choices"]) == 12
    assert out.annotated.size == (1280, 720)


def test_a_group_photo_every_face_numbered_in_reading_order(predictor):
    out = handlers.analyze(predictor, np.asarray(group_picture(3, 6)), False, None)
    assert out.message.startswith("**18 faces**, numbered in reading order"), out.message
    centres = [((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2) for f in out.session.faces]
    rows = [int(y // 240) for _, y in centres]
    assert rows == sorted(rows) and rows.count(0) == rows.count(1) == rows.count(2) == 6
    for row in range(3):
        xs = [x for (x, _), r in zip(centres, rows) if r == row]
        assert xs == sorted(xs)


def test_live_labels_are_smoothed_per_face(predictor):
    frame = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    tracker = FaceTracker(window_s=0.5)
    picture = Image.fromarray(frame)
    faces = predictor.predict(picture, explain=False)
    other = next(c for c in predictor.classes if c != faces[0].label)
    # the same face, as if the model had said something else in each of four frames
    flicker = [{c: (0.9 if c == (faces[0].label if n % 2 else other) else 0.1 / 7) for c in predictor.classes}
               for n in range(4)]
    shown = []
    for n, probs in enumerate(flicker):
        frame_faces = [replace(faces[0], probabilities=probs, label=max(probs, key=probs.get))]
        (face,) = live_view.smooth(frame_faces, tracker, now=n * 0.1)
        shown.append(face.label)
        assert face.explanation.heatmap(face.label).shape == (predictor.crop_size, predictor.crop_size)
    assert shown[0] == other and len(tracker.tracks) == 1
    assert face.probabilities[other] == pytest.approx(face.probabilities[faces[0].label])  # two frames each
    out = live_view.live(predictor, frame, tracker)
    assert out.shape == (live_view.LIVE_MAX_SIDE, live_view.LIVE_MAX_SIDE, 3) and len(tracker.tracks) == 1
    assert tracker.tracks[0].history and len(tracker.tracks[0].history) >= 1
