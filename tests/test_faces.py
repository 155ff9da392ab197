"""Face detection on the bundled examples, crop geometry, regions and patch-grid masks."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from conftest import run_in_threads

from mpafer.faces import (
    KEYPOINT_NAMES,
    REGION_NAMES,
    Face,
    FaceDetector,
    crop_face,
    cut_by_tile_edge,
    face_regions,
    region_masks,
    tile_windows,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"

# Where Eileen Collins' face is in the 512x512 astronaut photo (checked by eye).
ASTRONAUT_FACE_CENTER = (225, 127)


@pytest.fixture(scope="module")
def detector():
    with FaceDetector() as shared:
        yield shared


@pytest.fixture(scope="module")
def astronaut():
    return Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")


def center(box):
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def close_to(point, expected, tolerance):
    return abs(point[0] - expected[0]) <= tolerance and abs(point[1] - expected[1]) <= tolerance


# --- detection -------------------------------------------------------------------------


def test_examples_are_small_enough_to_ship():
    for name in ("astronaut.jpg", "group.jpg"):
        assert (EXAMPLES / name).stat().st_size < 150_000


def test_astronaut_has_one_face_where_her_face_is(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.8
    assert close_to(face.center, ASTRONAUT_FACE_CENTER, 25)
    assert 70 <= face.width <= 130 and 70 <= face.height <= 130
    assert set(face.keypoints) == set(KEYPOINT_NAMES)
    kp = face.keypoints
    assert kp["right_eye"][0] < kp["left_eye"][0]  # subject's right eye is image-left
    eye_y = (kp["right_eye"][1] + kp["left_eye"][1]) / 2
    assert eye_y < kp["nose_tip"][1] < kp["mouth_center"][1]
    for x, y in kp.values():
        assert face.box[0] - 5 <= x <= face.box[2] + 5 and face.box[1] - 5 <= y <= face.box[3] + 5


def test_group_has_four_faces_left_to_right(detector):
    group = Image.open(EXAMPLES / "group.jpg")
    faces = detector.detect(group)
    assert len(faces) == 4
    xs = [face.box[0] for face in faces]
    assert xs == sorted(xs)
    quadrants = {
        (face.center[0] > group.width / 2, face.center[1] > group.height / 2) for face in faces
    }
    assert len(quadrants) == 4


def test_small_faces_need_the_tiles():
    # The collage's faces are 9 % of the frame, below what one 128 px pass resolves.
    group = Image.open(EXAMPLES / "group.jpg")
    with FaceDetector(tile_levels=0) as single_pass:
        assert len(single_pass.detect(group)) < 4


def test_max_faces_keeps_the_best_and_sorts_them(detector):
    group = Image.open(EXAMPLES / "group.jpg")
    everyone = detector.detect(group)
    with FaceDetector(max_faces=2) as two:
        best = two.detect(group)
    assert len(best) == 2
    assert [f.box[0] for f in best] == sorted(f.box[0] for f in best)
    assert min(f.score for f in best) >= sorted(f.score for f in everyone)[-2] - 1e-6


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_faces_in_blank_or_noise(detector, kind):
    if kind == "blank":
        image = Image.new("RGB", (640, 480), (128, 128, 128))
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    assert detector.detect(image) == []


def test_boxes_map_back_from_a_large_photo(detector, astronaut):
    # 3000x2000 canvas: detection runs on a 1024 px copy (and its tiles, as the face is
    # under 10 % of the frame); the box must land on the original.
    canvas = Image.new("RGB", (3000, 2000), (250, 250, 250))
    offset = (1300, 350)
    canvas.paste(astronaut.resize((1536, 1536)), offset)
    faces = detector.detect(canvas)
    assert len(faces) == 1
    expected = (offset[0] + ASTRONAUT_FACE_CENTER[0] * 3, offset[1] + ASTRONAUT_FACE_CENTER[1] * 3)
    assert close_to(faces[0].center, expected, 45)
    assert 220 <= faces[0].width <= 380


def test_grayscale_input(detector, astronaut):
    assert len(detector.detect(astronaut.convert("L"))) == 1


def test_detect_from_threads(detector, astronaut):
    counts = []

    def work():
        for _ in range(3):
            counts.append(len(detector.detect(astronaut)))

    errors = run_in_threads(work)
    assert not errors and counts == [1] * 12


def test_closed_detector_refuses_work(astronaut):
    detector = FaceDetector()
    assert not detector.closed
    detector.close()
    detector.close()  # idempotent
    assert detector.closed
    with pytest.raises(RuntimeError, match="closed"):
        detector.detect(astronaut)


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found"):
        FaceDetector(model_path=tmp_path / "missing.tflite")


@pytest.mark.parametrize("close", [True, False])
def test_process_exits_cleanly(close):
    # MediaPipe's own __del__ raises at interpreter exit; ours must not let it.
    script = textwrap.dedent(
        f"""
        from PIL import Image
        from mpafer.faces import FaceDetector
        detector = FaceDetector()
        assert len(detector.detect(Image.open("assets/examples/astronaut.jpg"))) == 1
        if {close}:
            detector.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Exception ignored" not in result.stderr


def test_tile_windows_cover_the_image_with_overlap():
    windows = tile_windows(1024, 576, levels=1)
    assert windows[0] == (0, 0, 1024, 576)
    tiles = windows[1:]
    assert all(x1 - x0 == 512 and y1 - y0 == 512 for x0, y0, x1, y1 in tiles)
    assert {x0 for x0, *_ in tiles} == {0, 256, 512} and {y0 for _, y0, *_ in tiles} == {0, 64}
    assert tile_windows(200, 150, levels=1) == [(0, 0, 200, 150)]  # tiles below 128 px skipped


def test_faces_cut_by_inner_tile_edges_are_dropped():
    tile = (256, 0, 768, 512)  # inner edges at x=256, x=768 and y=512 of a 1024x1024 image
    assert not cut_by_tile_edge((400, 100, 500, 200), tile, 1024, 1024)
    assert cut_by_tile_edge((250, 100, 350, 200), tile, 1024, 1024)  # crosses x=256
    assert cut_by_tile_edge((700, 100, 770, 200), tile, 1024, 1024)  # crosses x=768
    assert cut_by_tile_edge((400, 450, 500, 515), tile, 1024, 1024)  # crosses y=512
    assert not cut_by_tile_edge((400, -3, 500, 80), tile, 1024, 1024)  # y=0 is the border
    assert not cut_by_tile_edge((0, 0, 90, 90), (0, 0, 1024, 1024), 1024, 1024)


# --- cropping --------------------------------------------------------------------------


def marked_image():
    """120x80 gradient with a pure green dot at (12, 10): a face sits at the corner."""
    xs = np.linspace(0, 255, 120, dtype=np.float32)
    pixels = np.zeros((80, 120, 3), np.uint8)
    pixels[..., 0] = xs[None, :].astype(np.uint8)
    pixels[..., 2] = 200
    pixels[8:13, 10:15] = (0, 255, 0)
    return Image.fromarray(pixels)


CORNER_FACE = Face(box=(0.0, 0.0, 40.0, 40.0), score=0.9, keypoints={"nose_tip": (12.5, 10.5)})


@pytest.mark.parametrize("pad", ["edge", "black"])
def test_crop_near_the_border_is_padded_and_mapped(pad):
    image = marked_image()
    crop, info = crop_face(image, CORNER_FACE, size=96, margin=0.25, pad=pad)
    assert crop.size == (96, 96) and crop.mode == "RGB"
    # square side 40 * 1.5 = 60 centred on (20, 20): starts 10 px outside the image
    assert info.origin == (-10.0, -10.0) and info.scale == pytest.approx(60 / 96)
    corner = crop.getpixel((1, 1))
    if pad == "black":
        assert corner == (0, 0, 0)
    else:
        assert corner[2] == 200  # the image's border colour repeated
    # the keypoint lands on the green dot in the crop
    kx, ky = info.keypoints["nose_tip"]
    r, g, b = crop.getpixel((int(kx), int(ky)))
    assert g > 200 and r < 60 and b < 80
    # the mapping round-trips, and the face box sits where the margin puts it
    assert info.to_image(*info.to_crop(33.0, 44.0)) == pytest.approx((33.0, 44.0))
    assert info.face_box == pytest.approx((16.0, 16.0, 80.0, 80.0))
    assert info.box_to_image(info.face_box) == pytest.approx(CORNER_FACE.box)


def test_crop_of_a_detected_face(detector, astronaut):
    face = detector.detect(astronaut)[0]
    crop, info = crop_face(astronaut, face, size=224)
    assert crop.size == (224, 224)
    for name, (x, y) in face.keypoints.items():
        assert info.to_image(*info.keypoints[name]) == pytest.approx((x, y))
    x0, y0, x1, y1 = info.face_box
    assert x0 == pytest.approx(224 / 6, abs=1.5) and x1 == pytest.approx(224 * 5 / 6, abs=1.5)


def test_crop_face_validates_arguments(astronaut):
    with pytest.raises(ValueError):
        crop_face(astronaut, CORNER_FACE, size=0)
    with pytest.raises(ValueError):
        crop_face(astronaut, CORNER_FACE, size=64, pad="mirror")


# --- regions and masks -----------------------------------------------------------------

VERTICAL_ORDER = ["forehead", "brows", "eyes", "nose", "mouth"]


def assert_sane_regions(regions, size):
    for name, (x0, y0, x1, y1) in regions.items():
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, name
    centres = [center(regions[name])[1] for name in VERTICAL_ORDER]
    assert centres == sorted(centres), dict(zip(VERTICAL_ORDER, centres, strict=True))
    eyes_y, mouth_y = center(regions["eyes"])[1], center(regions["mouth"])[1]
    assert eyes_y < center(regions["cheeks"])[1] < mouth_y


def test_regions_of_a_detected_face(detector, astronaut):
    face = detector.detect(astronaut)[0]
    _, info = crop_face(astronaut, face, size=224)
    regions = face_regions(info.keypoints, 224, info.face_box)
    assert tuple(regions) == REGION_NAMES
    assert_sane_regions(regions, 224)
    x0, y0, x1, y1 = regions["eyes"]
    for eye in ("right_eye", "left_eye"):
        ex, ey = info.keypoints[eye]
        assert x0 < ex < x1 and y0 < ey < y1
    mx, my = info.keypoints["mouth_center"]
    assert regions["mouth"][0] < mx < regions["mouth"][2]


def test_regions_fall_back_to_face_geometry():
    regions = face_regions({}, 112)  # no keypoints, no face box: default crop layout
    assert_sane_regions(regions, 112)
    partial = face_regions({"nose_tip": (56.0, 60.0)}, 112, (20.0, 20.0, 92.0, 92.0))
    assert_sane_regions(partial, 112)
    assert partial["face"] == (20.0, 20.0, 92.0, 92.0)


def test_regions_stay_inside_when_the_face_fills_the_crop():
    keypoints = {
        "right_eye": (10.0, 8.0),
        "left_eye": (54.0, 8.0),
        "nose_tip": (32.0, 30.0),
        "mouth_center": (32.0, 60.0),
    }
    regions = face_regions(keypoints, 64, (0.0, -10.0, 64.0, 70.0))
    for x0, y0, x1, y1 in regions.values():
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64


def test_region_masks_on_a_patch_grid(detector, astronaut):
    face = detector.detect(astronaut)[0]
    _, info = crop_face(astronaut, face, size=224)
    regions = face_regions(info.keypoints, 224, info.face_box)
    masks = region_masks(regions, 14, 14)
    assert set(masks) == set(regions)
    for name, mask in masks.items():
        assert mask.shape == (14, 14) and mask.dtype == bool and mask.any(), name
    assert not (masks["cheeks"] & masks["nose"]).any()
    # rows follow the face from top to bottom
    mean_row = {name: np.nonzero(masks[name])[0].mean() for name in VERTICAL_ORDER}
    assert [mean_row[n] for n in VERTICAL_ORDER] == sorted(mean_row.values())
    soft = region_masks(regions, 14, 14, soft=True)
    assert all(m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1 for m in soft.values())
    assert (soft["face"] > 0).sum() >= masks["face"].sum()


def test_tiny_regions_still_get_a_cell():
    masks = region_masks({"speck": (100.0, 50.0, 100.5, 50.5)}, 7, 7, crop_size=224)
    assert masks["speck"].sum() == 1 and masks["speck"][1, 3]


def test_region_masks_need_the_crop_size():
    with pytest.raises(ValueError, match="crop_size"):
        region_masks({"face": (0.0, 0.0, 10.0, 10.0)}, 14, 14)


def test_mirrored_face_mirrors_its_keypoints(detector, astronaut):
    plain = detector.detect(astronaut)[0]
    mirrored = detector.detect(ImageOps.mirror(astronaut))[0]
    assert mirrored.center[0] == pytest.approx(astronaut.width - plain.center[0], abs=8)
    # "right_eye" is the subject's right eye, so it stays image-left after mirroring
    assert mirrored.keypoints["right_eye"][0] < mirrored.keypoints["left_eye"][0]
