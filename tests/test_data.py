"""Dataset adapters, bad-file handling and the decoded cache (mpafer.data).

Small trees of generated faces stand in for RAF-DB, AffectNet, FERPlus and image folders; the
real FERPlus pack is used when it is present and skipped cleanly when it is not.
"""

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mpafer.data import (
    AFFECTNET7_CLASSES, AFFECTNET8_CLASSES, FERPLUS_CLASSES, RAFDB_CLASSES, DatasetError,
    FaceDataset, TorchFaceDataset, load_dataset,
)
from mpafer.data import decode as decode_module
from mpafer.data.ferplus_votes import majority_labels, vote_distribution

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_default_cache(tmp_path, monkeypatch):
    """No test may write into the user's ~/.cache."""
    monkeypatch.setenv("MPAFER_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def decode_calls(monkeypatch):
    """Counts calls of the per-image decoder (still decoding for real)."""
    calls = []
    real = decode_module.decode_image

    def counting(ref, size):
        calls.append(ref.path)
        return real(ref, size)

    monkeypatch.setattr(decode_module, "decode_image", counting)
    return calls


def face(seed: int, size: int = 64, gray: bool = False) -> np.ndarray:
    """A smooth random image (JPEG keeps it recognisable); distinct per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4) if gray else (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    return np.asarray(img)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def load(*args, **kwargs) -> FaceDataset:
    return load_dataset(*args, progress=False, **kwargs)


# ---------------------------------------------------------------- fake dataset trees

def make_rafdb(root: Path, n_train: int = 7, n_test: int = 3) -> dict[str, list[int]]:
    """RAF-DB basic layout; labels cycle through 1..7. Returns the 0-based labels per split."""
    lines, labels = [], {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(1, n + 1):
            raw = (i - 1) % 7 + 1
            lines.append(f"{split}_{i:05d}.jpg {raw}")
            labels[split].append(raw - 1)
            save(root / "Image" / "aligned" / f"{split}_{i:05d}_aligned.jpg", face(i + 100 * (split == "test"), 100))
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return labels


FERPLUS_VOTES = [  # vote rows and the label the official majority rule gives them
    ([10, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0),
    ([0, 8, 2, 0, 0, 0, 0, 0, 0, 0], 1),
    ([5, 1, 1, 1, 1, 1, 0, 0, 0, 0], 0),   # single votes are outliers: 5 of 5 remain
    ([4, 4, 2, 0, 0, 0, 0, 0, 0, 0], -1),  # no majority
    ([0, 0, 0, 0, 0, 0, 0, 0, 7, 3], -1),  # majority 'unknown'
    ([0, 0, 0, 0, 0, 0, 0, 0, 2, 8], -1),  # majority 'not a face'
    ([0, 0, 0, 0, 0, 0, 0, 9, 1, 0], 7),
    ([0, 0, 0, 2, 6, 0, 2, 0, 0, 0], 4),
]


def make_ferplus_folder(root: Path) -> dict[str, np.ndarray]:
    """Official FERPlus layout, label.csv without header, quoted box. Returns gray pixels per name."""
    pixels = {}
    for k, split_dir in enumerate(("FER2013Train", "FER2013Valid", "FER2013Test")):
        folder = root / split_dir
        folder.mkdir(parents=True)
        with open(folder / "label.csv", "w", newline="") as f:
            writer = csv.writer(f)
            for i, (votes, _) in enumerate(FERPLUS_VOTES):
                name = f"fer{k * 100 + i:07d}.png"
                pixels[name] = face(k * 100 + i, 48, gray=True)
                save(folder / name, pixels[name])
                writer.writerow([name, "(0, 0, 48, 48)", *votes])
    return pixels


AFFECTNET_ROWS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1]  # expression per CSV row


def make_affectnet(root: Path) -> None:
    """Official AffectNet CSVs; each photo is black with a white face box."""
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal"]
    for table in ("training.csv", "validation.csv"):
        with open(root / table, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for i, expression in enumerate(AFFECTNET_ROWS):
                rel = f"{i % 3 + 1}/{table[:5]}_{i}.jpg"
                photo = np.zeros((600, 800, 3), np.uint8)
                x, y, w, h = 500, 300, 120, 130
                photo[y:y + h, x:x + w] = 255
                save(root / "Manually_Annotated_Images" / rel, photo)
                writer.writerow([rel, x, y, w, h, "1.0;2.0;3.0", expression, 0.1, -0.2])


# ---------------------------------------------------------------- FaceDataset

def small_dataset(soft: bool = True) -> FaceDataset:
    labels = np.array([0, 1, 2, 0, 0, 1, 2, 2, 2, 0])
    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    p = np.eye(3, dtype=np.float32)[labels] if soft else None
    return FaceDataset(images, labels, p, ("a", "b", "c"), "toy", "train")


def test_face_dataset_counts_subset_and_per_class():
    ds = small_dataset()
    assert len(ds) == 10 and ds.image_size == 4
    assert ds.per_class_counts().tolist() == [4, 2, 4]
    sub = ds.subset(ds.labels == 2)
    assert sub.labels.tolist() == [2, 2, 2, 2]
    assert sub.images[:, 0, 0, 0].tolist() == [2, 6, 7, 8]
    assert sub.soft_labels.shape == (4, 3) and sub.classes == ds.classes
    picked = ds.subset([9, 1])
    assert picked.images[:, 0, 0, 0].tolist() == [9, 1] and picked.labels.tolist() == [0, 1]

    few = ds.per_class(3, seed=0)
    assert few.per_class_counts().tolist() == [3, 2, 3]
    assert np.all(np.diff(few.images[:, 0, 0, 0].astype(int)) > 0)  # dataset order kept
    assert np.array_equal(few.images, ds.per_class(3, seed=0).images)
    seeds = {tuple(ds.per_class(1, seed=s).images[:, 0, 0, 0]) for s in range(20)}
    assert len(seeds) > 1  # the seed matters
    assert "n=10" in repr(ds)


def test_face_dataset_rejects_inconsistent_arrays():
    ds = small_dataset()
    with pytest.raises(DatasetError, match="uint8"):
        FaceDataset(ds.images.astype(np.float32), ds.labels, None, ds.classes, "t", "s")
    with pytest.raises(DatasetError, match="0..2"):
        FaceDataset(ds.images, ds.labels + 1, None, ds.classes, "t", "s")
    with pytest.raises(DatasetError, match="sum to 1"):
        FaceDataset(ds.images, ds.labels, ds.soft_labels * 2, ds.classes, "t", "s")
    with pytest.raises(DatasetError, match="boolean mask"):
        ds.subset(np.ones(3, bool))


# ---------------------------------------------------------------- FERPlus votes and folder

def test_majority_rule_matches_official_protocol():
    votes = np.array([v for v, _ in FERPLUS_VOTES])
    assert majority_labels(votes).tolist() == [label for _, label in FERPLUS_VOTES]
    p = vote_distribution(votes)
    assert p.dtype == np.float32 and p.shape == (len(votes), 8)
    assert np.allclose(p[1], [0, 0.8, 0.2, 0, 0, 0, 0, 0])
    # single votes are outliers and dropped before normalising, as FERPlus's own rule does
    assert np.allclose(p[2], [1, 0, 0, 0, 0, 0, 0, 0])
    assert np.allclose(vote_distribution(np.array([[6, 3, 1, 0, 0, 0, 0, 0, 0, 0]])), [[2 / 3, 1 / 3, 0, 0, 0, 0, 0, 0]])
    # a row whose emotion votes are all single keeps them rather than dividing by zero
    assert np.allclose(vote_distribution(np.array([[1, 1, 0, 0, 0, 0, 0, 0, 5, 3]])), [[0.5, 0.5, 0, 0, 0, 0, 0, 0]])


def test_ferplus_folder_majority_labels_and_native_pixels(tmp_path):
    root = tmp_path / "FERPlus"
    pixels = make_ferplus_folder(root)
    ds = load("ferplus-folder", root, "test", image_size=None, cache_dir=tmp_path / "c")
    expected = [label for _, label in FERPLUS_VOTES if label >= 0]
    assert ds.labels.tolist() == expected
    assert ds.classes == FERPLUS_CLASSES and (ds.name, ds.split) == ("ferplus-folder", "test")
    assert ds.images.shape == (len(expected), 48, 48, 3)
    kept = [f"fer{200 + i:07d}.png" for i, (_, label) in enumerate(FERPLUS_VOTES) if label >= 0]
    for img, name in zip(ds.images, kept):
        assert np.array_equal(img[..., 0], pixels[name])  # lossless, grey copied to R, G and B
        assert np.array_equal(img[..., 0], img[..., 2])
    assert np.allclose(ds.soft_labels.sum(1), 1)
    assert ds.soft_labels[1].argmax() == 1

    big = load("ferplus-folder", root, "valid", image_size=64, cache_dir=tmp_path / "c")
    assert big.images.shape == (len(expected), 64, 64, 3) and big.split == "valid"


def test_ferplus_folder_rejects_malformed_label_csv(tmp_path):
    root = tmp_path / "FERPlus"
    make_ferplus_folder(root)
    with open(root / "FER2013Train" / "label.csv", "a") as f:
        f.write("fer9999999.png,box,1,2,three\n")
    with pytest.raises(DatasetError, match="line 9"):
        load("ferplus-folder", root, "train", cache_dir=False)
    with pytest.raises(DatasetError, match="label.csv not found"):
        load("ferplus-folder", tmp_path, "train", cache_dir=False)


# ---------------------------------------------------------------- RAF-DB

def test_rafdb_splits_and_labels(tmp_path):
    labels = make_rafdb(tmp_path / "raf")
    train = load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    test = load("rafdb", tmp_path / "raf", "test", image_size=32, cache_dir=tmp_path / "c")
    assert train.labels.tolist() == labels["train"] == [0, 1, 2, 3, 4, 5, 6]
    assert test.labels.tolist() == labels["test"]
    assert train.classes == RAFDB_CLASSES and train.soft_labels is None
    assert train.images.shape == (7, 32, 32, 3) and train.images.dtype == np.uint8
    # the first training image resized by hand: the same picture (JPEG draft decoding aside)
    first = np.asarray(Image.open(tmp_path / "raf/Image/aligned/train_00001_aligned.jpg")
                       .convert("RGB").resize((32, 32), Image.BOX), dtype=np.float32)
    assert np.abs(train.images[0] - first).mean() < 4 < np.abs(train.images[1] - first).mean()
    valid = load("rafdb", tmp_path / "raf", "val", image_size=32, cache_dir=tmp_path / "c")
    assert valid.split == "valid" and np.array_equal(valid.images, test.images)


# ---------------------------------------------------------------- AffectNet

def test_affectnet_csv_crops_face_box_and_keeps_classes(tmp_path):
    root = tmp_path / "AffectNet"
    root.mkdir()
    make_affectnet(root)
    eight = load("affectnet8", root, "train", image_size=32, cache_dir=tmp_path / "c")
    assert eight.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 1]  # 8, 9, 10 dropped
    assert eight.classes == AFFECTNET8_CLASSES
    # the crop is the white face box: a wrong box (or a draft-scale slip) would show black
    assert eight.images.min() > 200
    seven = load("affectnet7", root, "valid", image_size=32, cache_dir=tmp_path / "c")
    assert seven.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 1] and seven.classes == AFFECTNET7_CLASSES
    test = load("affectnet7", root, "test", image_size=32, cache_dir=tmp_path / "c")
    assert test.split == "test" and np.array_equal(test.images, seven.images)


def test_affectnet_class_folder_copy(tmp_path):
    root = tmp_path / "affectnet-kaggle"
    folders = {"Neutral": 0, "happy": 1, "Sadness": 2, "3": 3, "fear": 4, "disgust": 5,
               "angry": 6, "contempt": 7}
    for i, folder in enumerate(folders):
        save(root / "train" / folder / f"{i}.png", face(i, 40))
    eight = load("affectnet8", root, "train", image_size=40, cache_dir=tmp_path / "c")
    assert sorted(eight.labels.tolist()) == list(range(8))
    for img, label in zip(eight.images, eight.labels):
        folder = next(f for f, code in folders.items() if code == label)
        assert np.array_equal(img, face(list(folders).index(folder), 40))
    seven = load("affectnet7", root, "train", image_size=40, cache_dir=tmp_path / "c")
    assert sorted(seven.labels.tolist()) == list(range(7))

    save(root / "train" / "cats" / "x.png", face(0, 40))
    with pytest.raises(DatasetError, match="cats"):
        load("affectnet8", root, "train", cache_dir=False)


# ---------------------------------------------------------------- image folders

def test_imagefolder_sorted_and_given_classes(tmp_path):
    root = tmp_path / "faces"
    for split in ("train", "val"):
        for k, cls in enumerate(("smile", "frown")):
            for i in range(k + 2):
                save(root / split / cls / f"{i}.{'png' if i % 2 else 'jpg'}", face(10 * k + i, 24))
    (root / "train" / "smile" / "notes.txt").write_text("not an image")
    ds = load("imagefolder", root, "train", image_size=None, cache_dir=tmp_path / "c")
    assert ds.classes == ("frown", "smile") and ds.per_class_counts().tolist() == [3, 2]
    assert ds.images.shape == (5, 24, 24, 3)
    given = load("imagefolder", root, "valid", image_size=24, classes=["smile", "frown"],
                 cache_dir=tmp_path / "c")
    assert given.classes == ("smile", "frown") and given.per_class_counts().tolist() == [2, 3]

    with pytest.raises(DatasetError, match="no folder for class"):
        load("imagefolder", root, "train", classes=["smile", "frown", "shock"], cache_dir=False)
    with pytest.raises(DatasetError, match="not classes"):
        load("imagefolder", root, "train", classes=["smile"], cache_dir=False)
    with pytest.raises(DatasetError, match="no folder for split 'test'.*train, val"):
        load("imagefolder", root, "test", cache_dir=False)


def test_native_size_needs_one_square_size(tmp_path):
    root = tmp_path / "faces"
    save(root / "train" / "a" / "0.png", face(0, 24))
    save(root / "train" / "a" / "1.png", face(1, 30))
    with pytest.raises(DatasetError, match="not all one square size.*pass image_size"):
        load("imagefolder", root, "train", image_size=None, cache_dir=False)
    assert load("imagefolder", root, "train", image_size=16, cache_dir=False).images.shape == (2, 16, 16, 3)


def test_argument_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'fer'.*ferplus"):
        load("fer", tmp_path, "train")
    with pytest.raises(DatasetError, match="only be given for 'imagefolder'"):
        load("rafdb", tmp_path, "train", classes=["a"])
    with pytest.raises(DatasetError, match="image_size"):
        load("rafdb", tmp_path, "train", image_size=0)
    with pytest.raises(DatasetError, match="does not exist"):
        load("imagefolder", tmp_path / "nowhere", "train")


# ---------------------------------------------------------------- unreadable files

def break_rafdb(root: Path) -> None:
    """First train image missing, third not an image, fifth cut in half."""
    aligned = root / "Image" / "aligned"
    (aligned / "train_00001_aligned.jpg").unlink()
    (aligned / "train_00003_aligned.jpg").write_bytes(b"this is no jpeg")
    fifth = aligned / "train_00005_aligned.jpg"
    fifth.write_bytes(fifth.read_bytes()[:300])


def test_bad_files_are_counted_and_named(tmp_path):
    make_rafdb(tmp_path / "raf")
    break_rafdb(tmp_path / "raf")
    with pytest.raises(DatasetError) as err:
        load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert msg.startswith("3 of 7 images could not be read in ")
    assert "first few: Image/aligned/train_00001_aligned.jpg (missing), " in msg
    assert "train_00003_aligned.jpg (cannot identify image file)" in msg
    assert "train_00005_aligned.jpg (" in msg and "skip_bad=True" in msg


def test_skip_bad_keeps_the_rest(tmp_path, caplog):
    labels = make_rafdb(tmp_path / "raf")
    break_rafdb(tmp_path / "raf")
    with caplog.at_level(logging.WARNING, logger="mpafer.data"):
        ds = load("rafdb", tmp_path / "raf", "train", image_size=32, skip_bad=True,
                  cache_dir=tmp_path / "c")
    assert ds.labels.tolist() == [labels["train"][i] for i in (1, 3, 5, 6)]
    assert "skipped 3 of 7 images" in caplog.text
    reference = load("rafdb", tmp_path / "raf", "test", image_size=32, cache_dir=False)
    assert len(reference) == 3  # the test split was never broken


# ---------------------------------------------------------------- cache

def test_second_load_comes_from_cache(tmp_path, decode_calls):
    make_rafdb(tmp_path / "raf")
    first = load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    assert len(decode_calls) == 7
    again = load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    assert len(decode_calls) == 7  # nothing decoded
    assert np.array_equal(again.images, first.images) and np.array_equal(again.labels, first.labels)
    assert (again.name, again.split, again.classes) == (first.name, first.split, first.classes)
    again.images[0, 0, 0] = 0  # a cached array is writable (copy-on-write) ...
    third = load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    assert np.array_equal(third.images, first.images)  # ... and the cache is not changed by it

    load("rafdb", tmp_path / "raf", "train", image_size=48, cache_dir=tmp_path / "c")
    assert len(decode_calls) == 14  # another size is another entry

    save(tmp_path / "raf/Image/aligned/train_00002_aligned.jpg", face(99, 90))
    changed = load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    assert len(decode_calls) == 21  # an edited image invalidates the entry
    assert not np.array_equal(changed.images[1], first.images[1])


def test_soft_labels_survive_the_cache(tmp_path, decode_calls):
    make_ferplus_folder(tmp_path / "F")
    first = load("ferplus-folder", tmp_path / "F", "train", image_size=None, cache_dir=tmp_path / "c")
    again = load("ferplus-folder", tmp_path / "F", "train", image_size=None, cache_dir=tmp_path / "c")
    assert len(decode_calls) == len(first)
    assert again.soft_labels.dtype == np.float32 and np.array_equal(again.soft_labels, first.soft_labels)


@pytest.mark.parametrize("damage", ["images-garbage", "images-truncated", "table-garbage"])
def test_damaged_cache_is_rebuilt(tmp_path, decode_calls, damage):
    make_rafdb(tmp_path / "raf")
    first = load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    images_file = next((tmp_path / "c").glob("rafdb-train-*.images.npy"))
    table_file = images_file.with_name(images_file.name.replace(".images.npy", ".npz"))
    if damage == "images-garbage":
        images_file.write_bytes(b"\x00garbage" * 10)
    elif damage == "images-truncated":
        images_file.write_bytes(images_file.read_bytes()[:1000])
    else:
        table_file.write_bytes(b"PK\x03\x04 not really a zip")
    rebuilt = load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    assert len(decode_calls) == 14 and np.array_equal(rebuilt.images, first.images)
    load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    assert len(decode_calls) == 14  # the rebuilt entry is used again
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_cached_bad_files_are_still_reported(tmp_path, decode_calls):
    make_rafdb(tmp_path / "raf")
    break_rafdb(tmp_path / "raf")
    load("rafdb", tmp_path / "raf", "train", image_size=32, skip_bad=True, cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match="3 of 7 images"):
        load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    assert len(decode_calls) == 7  # the error came from the cache


def test_default_cache_dir_and_cache_off(tmp_path, monkeypatch, decode_calls):
    make_rafdb(tmp_path / "raf")
    monkeypatch.setenv("MPAFER_CACHE", str(tmp_path / "env-cache"))
    load("rafdb", tmp_path / "raf", "test", image_size=32, cache_dir=False)
    assert not (tmp_path / "env-cache").exists()
    load("rafdb", tmp_path / "raf", "test", image_size=32)
    assert len(list((tmp_path / "env-cache" / "datasets").glob("rafdb-test-*.images.npy"))) == 1
    load("rafdb", tmp_path / "raf", "test", image_size=32)
    assert len(decode_calls) == 6


# ---------------------------------------------------------------- torch view

def test_torch_dataset_batches(tmp_path):
    make_rafdb(tmp_path / "raf")
    ds = load("rafdb", tmp_path / "raf", "train", image_size=32, cache_dir=tmp_path / "c")
    images, labels, soft = next(iter(torch.utils.data.DataLoader(TorchFaceDataset(ds), batch_size=4)))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    assert torch.equal(images[2], torch.from_numpy(ds.images[2]).permute(2, 0, 1))
    assert labels.dtype == torch.int64 and labels.tolist() == ds.labels[:4].tolist()
    assert soft.dtype == torch.float32 and torch.equal(soft.argmax(1), labels)  # one-hot stand-in
    assert torch.allclose(soft.sum(1), torch.ones(4))

    soft_ds = small_dataset(soft=True)
    soft_ds.soft_labels = np.full((10, 3), 1 / 3, np.float32)
    assert torch.allclose(TorchFaceDataset(soft_ds)[0][2], torch.full((3,), 1 / 3))


# ---------------------------------------------------------------- the real FERPlus pack

def ferplus_pack_dir() -> Path:
    root = Path(os.environ.get("MPAFER_FERPLUS", REPO.parent / "shared" / "data" / "ferplus"))
    if not (root / "test.npz").is_file():
        pytest.skip(f"FERPlus pack not found at {root} (set MPAFER_FERPLUS)")
    return root


def test_ferplus_pack_test_split(tmp_path):
    root = ferplus_pack_dir()
    ds = load("ferplus", root, "test", image_size=None, cache_dir=tmp_path)
    assert len(ds) == 3152 and ds.classes == FERPLUS_CLASSES
    assert ds.per_class_counts().tolist() == [1089, 893, 396, 384, 273, 18, 83, 16]
    assert ds.images.shape == (3152, 48, 48, 3) and ds.images.dtype == np.uint8
    assert np.array_equal(ds.images[..., 0], ds.images[..., 1])
    assert ds.soft_labels.dtype == np.float32 and np.allclose(ds.soft_labels.sum(1), 1, atol=1e-5)
    with np.load(root / "test.npz", allow_pickle=False) as z:
        votes, y, x = z["test_votes"], z["test_y"], z["test_x"]
    assert np.array_equal(majority_labels(votes), y)  # our rule reproduces the pack's labels
    assert np.array_equal(ds.images[:, :, :, 2], x[y >= 0])
    assert np.array_equal(ds.labels, y[y >= 0])
    again = load("ferplus", root, "test", image_size=None, cache_dir=tmp_path)
    assert np.array_equal(again.images, ds.images)


def test_ferplus_pack_missing_parts(tmp_path):
    root = ferplus_pack_dir()
    if not (root / "valid.npz").is_file():
        pytest.skip("valid.npz absent")
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "valid.npz").symlink_to(root / "valid.npz")
    with pytest.raises(DatasetError) as err:
        load("ferplus", pack, "train", cache_dir=False)
    msg = str(err.value)
    assert "missing train_1.npz, train_2.npz, train_3.npz" in msg and str(pack) in msg
    with pytest.raises(DatasetError, match="splits train, valid, test"):
        load("ferplus", pack, "holdout", cache_dir=False)
