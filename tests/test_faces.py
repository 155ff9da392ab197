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
    FaceList,
    crop_face,
    cut_by_tile_edge,
    face_regions,
    largest,
    limit_faces,
    reading_order,
    region_masks,
    tile_sides,
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

NO_FACES = sorted((REPO / "tests" / "data" / "no_faces").glob("*.[jp][pn]g"))
ASTRONAUT_FACE_BOX = (175, 76, 276, 177)  # where the detector puts her face (checked by eye)


def face_grid(rows, cols, size=(1280, 720), face_px=None, seed=0):
    """The astronaut's head and shoulders in a ``rows`` x ``cols`` grid on a ``size`` canvas:
    a group picture whose true face boxes are known. Returns (picture, true boxes by row)."""
    rng = np.random.default_rng(seed)
    photo = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")
    x0, y0, x1, y1 = ASTRONAUT_FACE_BOX
    canvas = Image.new("RGB", size, (230, 226, 220))
    cell_w, cell_h = size[0] // cols, size[1] // rows
    truth = []
    for row in range(rows):
        for col in range(cols):
            side = face_px or 0.45 * cell_h
            scale = side / (y1 - y0)
            tile = photo.resize((round(512 * scale), round(512 * scale)), Image.Resampling.LANCZOS)
            if (row + col) % 2:
                tile = ImageOps.mirror(tile)
            # the face at a jittered place in its cell (rows not on one line)
            fx = col * cell_w + (cell_w - side) * rng.uniform(0.3, 0.7)
            fy = row * cell_h + (cell_h - side) * rng.uniform(0.35, 0.65)
            ox = x0 if (row + col) % 2 == 0 else 512 - x1
            cell = Image.new("RGB", (cell_w - 4, cell_h - 4), (200, 200, 200))
            cell.paste(tile, (round(fx - col * cell_w - ox * scale), round(fy - row * cell_h - y0 * scale)))
            canvas.paste(cell, (col * cell_w + 2, row * cell_h + 2))
            truth.append((fx, fy, fx + side, fy + side))
    return canvas, truth


def box_overlap(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_examples_are_small_enough_to_ship():
    for name in ("astronaut.jpg", "group.jpg"):
        assert (EXAMPLES / name).stat().st_size < 150_000


def test_both_models_are_bundled():
    models = REPO / "assets" / "models"
    assert (models / "face_detection_short_range.tflite").is_file()
    assert (models / "face_detection_full_range_sparse.tflite").is_file()
    notice = (REPO / "assets" / "NOTICE").read_text()
    assert "face_detection_full_range_sparse.tflite" in notice and "face_detection_short_range.tflite" in notice


def test_astronaut_has_one_face_where_her_face_is(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1 and faces.found == 1 and not faces.limited
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


def test_group_has_four_faces_in_reading_order(detector):
    group = Image.open(EXAMPLES / "group.jpg")
    faces = detector.detect(group)
    assert len(faces) == 4 and isinstance(faces, FaceList) and faces.found == 4
    right = [face.center[0] > group.width / 2 for face in faces]
    lower = [face.center[1] > group.height / 2 for face in faces]
    assert list(zip(lower, right)) == [(False, False), (False, True), (True, False), (True, True)]


@pytest.mark.parametrize("grid, size", [((4, 4), (1920, 1080)), ((6, 6), (1280, 720))])
def test_every_face_of_a_group_picture_and_no_other_box(detector, grid, size):
    # 6x6 on 1280x720: faces of about 45 px, 3.5 % of the picture's width
    picture, truth = face_grid(*grid, size=size)
    faces = detector.detect(picture)
    assert len(faces) == len(truth) == faces.found
    for face, true_box in zip(faces, truth):  # one to one, and in reading order
        assert box_overlap(face.box, true_box) > 0.4, (face.box, true_box)


def test_small_faces_need_the_tiles():
    picture, truth = face_grid(6, 6, size=(1280, 720))
    with FaceDetector(tile_levels=0) as whole_picture_only:
        assert len(whole_picture_only.detect(picture)) < len(truth) // 2


def test_faces_down_to_40_px_are_found(detector):
    picture, truth = face_grid(4, 8, size=(1280, 720), face_px=40)
    assert len(detector.detect(picture)) == len(truth) == 32


def test_the_limit_keeps_the_largest_and_says_how_many_were_found():
    picture, truth = face_grid(3, 4, size=(1280, 720))
    small = picture.copy()  # faces of two sizes: the first row smaller
    shrunk = picture.crop((0, 0, 1280, 240)).resize((640, 120))
    small.paste((230, 226, 220), (0, 0, 1280, 240))
    small.paste(shrunk, (320, 60))
    with FaceDetector(max_faces=5) as five:
        faces = five.detect(small)
        everyone = five.detect(picture)
    assert len(faces) == 5 and faces.found == 12 and faces.limited
    assert min(f.width for f in faces) > 80  # none of the four shrunk faces (about 50 px)
    assert faces == reading_order(faces)
    assert len(everyone) == 5 and everyone.found == 12


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_faces_in_blank_or_noise(detector, kind):
    if kind == "blank":
        image = Image.new("RGB", (640, 480), (128, 128, 128))
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
    assert detector.detect(image) == []


def test_no_faces_in_twenty_face_free_pictures(detector):
    assert len(NO_FACES) == 20
    assert sum(path.stat().st_size for path in NO_FACES) < 1_000_000
    found = {}
    for path in NO_FACES:
        image = Image.open(path)
        for scale in (1, 3):  # 480x360 and 1440x1080: no tiles, then two sizes of tiles
            faces = detector.detect(image.resize((image.width * scale, image.height * scale)))
            if faces:
                found[f"{path.name} x{scale}"] = [(f.box, f.score) for f in faces]
    assert found == {}


def closeup(fill, grey=False):
    """The astronaut's face filling ``fill`` of a 256 px square (over 1: cut off at the edges)."""
    photo = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")
    side = (ASTRONAUT_FACE_BOX[2] - ASTRONAUT_FACE_BOX[0]) / fill
    cx, cy = 225, 127
    crop = photo.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
    crop = crop.resize((256, 256), Image.Resampling.BICUBIC)
    return crop.convert("L") if grey else crop


@pytest.mark.parametrize("fill, grey", [(1.0, False), (1.25, True), (1.4, False), (1.4, True)])
def test_a_face_that_fills_the_picture_is_found_by_the_padded_retry(detector, fill, grey):
    picture = closeup(fill, grey)
    faces = detector.detect(picture)
    assert len(faces) == 1
    face = faces[0]
    assert close_to(face.center, (128, 128), 40)
    assert face.width > 150 and 0 <= face.box[0] < face.box[2] <= 256 and 0 <= face.box[1] < face.box[3] <= 256


def test_the_retry_is_what_finds_the_tightest_crops():
    with FaceDetector(pad_retry=False) as no_retry:
        assert no_retry.detect(closeup(1.4)) == []


def test_the_mirrored_look_maps_the_face_back(detector, astronaut):
    # the same face found on the picture and on its mirror image: same box, eyes on the same sides
    (plain,), _ = detector._find_padded(astronaut, 1.0)
    (mirrored,), _ = detector._find_padded(astronaut, 1.0, mirror=True)
    assert all(abs(a - b) <= 6 for a, b in zip(plain.box, mirrored.box))
    for face in (plain, mirrored):
        assert face.keypoints["right_eye"][0] < face.keypoints["nose_tip"][0] < face.keypoints["left_eye"][0]
    assert close_to(mirrored.keypoints["right_eye"], plain.keypoints["right_eye"], 6)


def test_the_brightened_look_lifts_dark_faces(detector, astronaut):
    from mpafer.face_detection import _brighten

    dark = astronaut.point(lambda v: v // 8)
    lifted = np.asarray(_brighten(dark, 0.4).convert("L"), dtype=float)
    assert lifted.mean() > 3 * np.asarray(dark.convert("L"), dtype=float).mean()
    faces, _ = detector._find_padded(dark, 1.0, gamma=0.4)
    assert len(faces) == 1 and close_to(faces[0].center, ASTRONAUT_FACE_CENTER, 20)


def test_retry_looks_run_in_order_until_one_finds_a_face(monkeypatch):
    from mpafer import face_detection

    tried = []
    found = Face((10.0, 10.0, 60.0, 60.0), 0.9, {})

    def fake_find_padded(self, rgb, scale, **look):
        tried.append(look)
        return ([found] if look.get("mirror") else []), scale

    monkeypatch.setattr(face_detection.FaceDetector, "_find_padded", fake_find_padded)
    with FaceDetector() as patched:
        faces = patched.detect(Image.open(NO_FACES[0]).convert("RGB"))
    assert tried == [{}, {"mirror": True}]  # the brightened look is not needed
    assert [face.box for face in faces] == [found.box]
    assert face_detection.RETRY_LOOKS[-1] == {"gamma": 0.4}


def test_boxes_map_back_from_a_large_photo(detector, astronaut):
    # 3000x2000 canvas: detection runs on a 2048 px copy (the face is 7 % of it); the box
    # must land on the original.
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
    with pytest.raises(FileNotFoundError, match="model not found"):
        FaceDetector(full_range_path=tmp_path / "missing.tflite")
    with FaceDetector(full_range=False, full_range_path=tmp_path / "missing.tflite") as short_only:
        assert short_only.tile_model == "short"


def test_detector_arguments_are_checked():
    for bad in ({"max_faces": 0}, {"min_confidence": 1.5}, {"tile_side": 64}, {"tile_model": "mid"}):
        with pytest.raises(ValueError):
            FaceDetector(**bad)


@pytest.mark.parametrize("close", [True, False])
def test_process_exits_cleanly(close):
    # MediaPipe's own __del__ raises at interpreter exit; ours must not let it. Loading the
    # full-range model prints 46 lines about sparse tensors, which are held back.
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
    assert "Sparsity tensors" not in result.stderr


def test_tile_sides():
    assert tile_sides(1920, 1080) == [300, 600]
    assert tile_sides(1280, 720) == [300, 600]
    assert tile_sides(1024, 576) == [300]  # 600 is not under the short side
    assert tile_sides(512, 512) == [300]
    assert tile_sides(480, 360) == []  # a webcam frame: the whole-picture passes find ~32 px faces
    assert tile_sides(1920, 1080, levels=0) == []
    assert tile_sides(3000, 700) == [300, 600, 700]  # a panorama also gets squares of its height
    assert tile_sides(2048, 1536, levels=3) == [300, 600, 1200]


@pytest.mark.parametrize("overlap", [1 / 3, 0.5])
def test_tile_windows_cover_the_image_with_overlap(overlap):
    tiles = tile_windows(1024, 576, 300, overlap)
    assert all(x1 - x0 == 300 and y1 - y0 == 300 for x0, y0, x1, y1 in tiles)
    xs, ys = sorted({t[0] for t in tiles}), sorted({t[1] for t in tiles})
    assert xs[0] == 0 and xs[-1] == 1024 - 300 and ys[0] == 0 and ys[-1] == 576 - 300
    for positions in (xs, ys):  # neighbours share at least ``overlap`` of a side
        assert all(b - a <= 300 * (1 - overlap) + 1e-9 for a, b in zip(positions, positions[1:]))
    assert len(tile_windows(1024, 576, 300, 1 / 3)) < len(tile_windows(1024, 576, 300, 0.5))
    assert tile_windows(200, 150, 300) == [(0, 0, 150, 150), (50, 0, 200, 150)]


def test_faces_cut_by_inner_tile_edges_are_dropped():
    tile = (256, 0, 768, 512)  # inner edges at x=256, x=768 and y=512 of a 1024x1024 image
    assert not cut_by_tile_edge((400, 100, 500, 200), tile, 1024, 1024)
    assert cut_by_tile_edge((250, 100, 350, 200), tile, 1024, 1024)  # crosses x=256
    assert cut_by_tile_edge((700, 100, 770, 200), tile, 1024, 1024)  # crosses x=768
    assert cut_by_tile_edge((400, 450, 500, 515), tile, 1024, 1024)  # crosses y=512
    assert not cut_by_tile_edge((400, -3, 500, 80), tile, 1024, 1024)  # y=0 is the border
    assert not cut_by_tile_edge((0, 0, 90, 90), (0, 0, 1024, 1024), 1024, 1024)


def boxes(*items):
    return [Face(tuple(float(v) for v in box), 0.9) for box in items]


def test_reading_order_groups_rows_by_overlap():
    # two rows; in each, faces sit a little higher or lower than their neighbours, and the
    # second row's leftmost face is higher than the first row's rightmost centre
    row1 = boxes((300, 110, 360, 170), (20, 100, 80, 160), (160, 125, 220, 185))
    row2 = boxes((170, 190, 230, 250), (30, 175, 90, 235), (310, 200, 370, 260))
    ordered = reading_order(row2 + row1)
    assert [f.box[0] for f in ordered] == [20, 160, 300, 30, 170, 310]
    # raw (y, x) order would interleave the rows
    assert [f.box[0] for f in sorted(row1 + row2, key=lambda f: (f.box[1], f.box[0]))] != [20, 160, 300, 30, 170, 310]


def test_reading_order_of_faces_of_different_sizes():
    big, small_right, small_below = boxes((0, 0, 200, 200), (260, 120, 300, 160), (60, 260, 100, 300))
    assert reading_order([small_below, small_right, big]) == [big, small_right, small_below]
    assert reading_order([]) == []


def test_largest_and_limit_faces():
    faces = FaceList(boxes((0, 0, 10, 10), (100, 0, 150, 50), (0, 100, 30, 130), (200, 0, 220, 20)), found=4)
    assert [f.width for f in largest(faces, 2)] == [50, 30]
    kept = limit_faces(faces, 2)
    assert isinstance(kept, FaceList) and kept.found == 4 and kept.limited
    assert [f.box[:2] for f in kept] == [(100, 0), (0, 100)]  # reading order
    assert limit_faces(faces, 9).found == 4 and not limit_faces(faces, 9).limited
    assert limit_faces(list(faces), 3).found == 4
    assert FaceList([1, 2], found=1).found == 2  # never fewer than kept


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
