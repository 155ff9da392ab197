"""load_image: every input shape and mode users send, and every way an input can be bad."""

import io
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mpafer.images import ImageError, load_image

REPO = Path(__file__).resolve().parent.parent


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- modes -----------------------------------------------------------------------------


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[0, 0, 3] = 0  # fully transparent -> white
    rgba[1, 1, 3] = 255  # opaque -> red
    rgba[2, 2, 3] = 128  # half -> pink
    for source in (rgba, Image.fromarray(rgba, "RGBA"), encode(Image.fromarray(rgba, "RGBA"))):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (4, 4)
        assert out.getpixel((0, 0)) == (255, 255, 255)
        assert out.getpixel((1, 1)) == (255, 0, 0)
        r, g, b = out.getpixel((2, 2))
        assert r == 255 and 120 <= g <= 135 and g == b


def test_grayscale_becomes_three_equal_channels():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = load_image(encode(Image.fromarray(gray, "L")))
    assert out.mode == "RGB"
    pixels = np.asarray(out)
    assert (pixels[..., 0] == gray).all() and (pixels[..., 1] == gray).all()


def test_palette_with_transparency_uses_white_background():
    palette_image = Image.new("P", (6, 6), 1)
    palette_image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, 1 blue
    palette_image.putpixel((0, 0), 0)
    data = encode(palette_image, transparency=0)  # index 0 is transparent
    out = load_image(data)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((3, 3)) == (0, 0, 255)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    wide = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    out = np.asarray(load_image(encode(Image.fromarray(wide))))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    # uint16 arrays are scaled the same way
    assert np.asarray(load_image(wide))[0, :, 0].tolist() == [0, 1, 128, 255]


def test_cmyk_jpeg_becomes_rgb():
    out = load_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    assert out.mode == "RGB"
    r, g, b = out.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60  # red


def test_exif_orientation_is_applied():
    # 40x20, red left half, blue right half; orientation 6 = rotate 90 degrees clockwise.
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(encode(image, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # red now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_pil_image_with_exif_is_rotated_too():
    image = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 8
    reopened = Image.open(io.BytesIO(encode(image, "JPEG", exif=exif)))
    assert load_image(reopened).size == (20, 40)


# --- sources ---------------------------------------------------------------------------


def test_path_bytes_filelike_and_unseekable_stream(tmp_path):
    pixels = noise(30, 40)
    data = encode(Image.fromarray(pixels))
    path = tmp_path / "x.png"
    path.write_bytes(data)

    class Unseekable(io.RawIOBase):
        def __init__(self, payload):
            self._inner = io.BytesIO(payload)

        def readable(self):
            return True

        def seekable(self):
            return False

        def readinto(self, buffer):
            chunk = self._inner.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    sources = [str(path), path, data, bytearray(data), memoryview(data), io.BytesIO(data)]
    sources.append(io.BufferedReader(Unseekable(data)))
    for source in sources:
        out = load_image(source)
        assert out.size == (40, 30)
        assert (np.asarray(out) == pixels).all(), type(source)
    assert list(tmp_path.iterdir()) == [path]  # nothing left behind


@pytest.mark.parametrize(
    "array",
    [
        np.full((5, 7), 200, np.uint8),
        np.full((5, 7, 1), 200, np.uint8),
        np.full((5, 7, 3), 200 / 255, np.float32),
        np.full((5, 7, 3), 200.0, np.float64),  # 0..255 floats
        np.dstack([np.full((5, 7, 3), 200, np.uint8), np.full((5, 7), 255, np.uint8)]),
    ],
)
def test_numpy_arrays(array):
    out = load_image(array)
    assert out.mode == "RGB" and out.size == (7, 5)
    assert out.getpixel((3, 2)) == (200, 200, 200)


def test_unsupported_source_type():
    with pytest.raises(TypeError):
        load_image(12345)


def test_max_side_keeps_aspect_and_none_keeps_size():
    wide = np.zeros((1000, 3000, 3), np.uint8)
    assert load_image(wide).size == (2048, 683)
    assert load_image(wide, max_side=300).size == (300, 100)
    assert load_image(wide, max_side=None).size == (3000, 1000)


# --- bad inputs ------------------------------------------------------------------------


def test_truncated_jpeg():
    data = encode(Image.fromarray(noise(256, 256)), "JPEG", quality=90)
    with pytest.raises(ImageError, match="truncated|corrupt"):
        load_image(data[: len(data) // 2])


def test_random_bytes_are_not_an_image():
    junk = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(junk)


def test_empty_inputs(tmp_path):
    empty_file = tmp_path / "empty.jpg"
    empty_file.write_bytes(b"")
    for source in (b"", io.BytesIO(b""), empty_file):
        with pytest.raises(ImageError, match="empty"):
            load_image(source)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path)


def test_zero_size_images():
    with pytest.raises(ImageError, match="zero size"):
        load_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 0)))


def test_bad_array_shape():
    with pytest.raises(ImageError, match="HxW"):
        load_image(np.zeros((4, 4, 2), np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; its pixel data is absent."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height", [(13000, 12000), (40000, 40000)])
def test_too_large_is_refused_from_the_header(width, height):
    # 156 MP hits our limit; 1600 MP hits Pillow's bomb check first. Both are ImageError.
    with pytest.raises(ImageError, match="too large"):
        load_image(png_header_only(width, height))


def test_max_pixels_is_configurable():
    data = encode(Image.new("RGB", (20, 20)))
    with pytest.raises(ImageError, match="too large"):
        load_image(data, max_pixels=399)
    assert load_image(data, max_pixels=400).size == (20, 20)


# --- huge JPEG -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    image = Image.linear_gradient("L").resize((10000, 10000), Image.Resampling.NEAREST)
    image.convert("RGB").save(path, quality=50)
    return path


def test_huge_jpeg_is_drafted_not_fully_decoded(huge_jpeg):
    # Measure peak memory in a fresh process: a full decode needs 300 MB for the RGB
    # pixels alone; a draft at 1/4 scale needs under 30 MB.
    script = textwrap.dedent(
        f"""
        import resource, sys, time
        from mpafer.images import load_image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        image = load_image({str(huge_jpeg)!r})
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(image.size[0], image.size[1], (peak - before) // 1024, seconds)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    width, height, extra_mb, seconds = result.stdout.split()
    assert (int(width), int(height)) == (2048, 2048)
    assert int(extra_mb) < 120, f"peak memory grew by {extra_mb} MB"
    assert float(seconds) < 5.0


def test_metadata_such_as_exif_gps_is_dropped(tmp_path):
    from PIL import Image as PILImage

    from mpafer.images import load_image

    exif = PILImage.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0112] = 6  # orientation: rotate
    path = tmp_path / "camera.jpg"
    PILImage.new("RGB", (40, 20), (10, 200, 30)).save(path, exif=exif.tobytes())
    image = load_image(path)
    assert image.size == (20, 40)
    assert "exif" not in image.info and not image.getexif()
