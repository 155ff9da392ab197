"""Regenerate the 20 face-free pictures in this folder (tests/test_faces.py asserts the face
detector finds nothing in any of them).

    python tests/data/no_faces/generate.py

Drawn with numpy and PIL from a fixed seed (textures, gradients, noise, landscapes, shapes,
text, a city at night), plus two crops of the public-domain astronaut example that leave her
face out (suit, flag, the shuttle model). 480x360 each, JPEG or PNG, about 0.4 MB in all.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
W, H = 480, 360


def _rng(n: int) -> np.random.Generator:
    return np.random.default_rng(1000 + n)


def _img(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _smooth_noise(rng: np.random.Generator, scale: int, channels: int = 1) -> np.ndarray:
    small = rng.random((max(2, H // scale), max(2, W // scale), channels)).astype(np.float32)
    big = Image.fromarray((small * 255).astype(np.uint8).squeeze()).resize((W, H), Image.Resampling.BICUBIC)
    out = np.asarray(big, dtype=np.float32) / 255
    return out if channels > 1 else out[..., None]


def _fractal(rng: np.random.Generator, octaves: int = 5) -> np.ndarray:
    total = np.zeros((H, W, 1), np.float32)
    for k in range(octaves):
        total += _smooth_noise(rng, max(2, 96 >> k)) / 2**k
    total -= total.min()
    return total / total.max()


def uniform_noise(rng):
    return _img(rng.integers(0, 256, (H, W, 3)))


def blob_noise(rng):
    return _img(_smooth_noise(rng, 12, 3) * 255)


def linear_gradient(rng):
    x = np.linspace(0, 1, W)[None, :, None]
    y = np.linspace(0, 1, H)[:, None, None]
    return _img(np.concatenate([255 * x + 0 * y, 255 * y + 0 * x, 255 * (1 - x) * (1 - y)], axis=2))


def radial_gradient(rng):
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(xx - W * 0.6, yy - H * 0.4) / math.hypot(W, H)
    return _img(np.stack([255 * (1 - r), 180 * r + 40, 120 + 100 * np.cos(6 * r)], axis=2))


def checkerboard(rng):
    yy, xx = np.mgrid[0:H, 0:W]
    board = ((xx // 40 + yy // 40) % 2).astype(np.float32)
    return _img(np.stack([board * 230 + 10, board * 200 + 30, 60 + board * 50], axis=2))


def sine_waves(rng):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    v = np.sin(xx / 9 + 2 * np.sin(yy / 23)) * np.cos(yy / 17)
    return _img(np.stack([128 + 120 * v, 128 - 90 * v, 128 + 60 * np.sin(xx / 31)], axis=2))


def wood(rng):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    grain = np.sin((np.hypot(xx - 60, yy + 300) + 25 * _fractal(rng)[..., 0]) / 4)
    base = np.array([150, 95, 50], np.float32)
    return _img(base * (0.75 + 0.25 * grain[..., None]))


def marble(rng):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    veins = np.abs(np.sin(xx / 25 + 8 * _fractal(rng)[..., 0]))
    stone = np.stack([200 + 50 * veins, 195 + 50 * veins, 190 + 55 * veins], axis=2)
    return _img(stone - 60 * (veins < 0.15)[..., None])


def clouds(rng):
    f = _fractal(rng)
    sky = np.array([70, 130, 220], np.float32)
    return _img(sky * (1 - f) + 255 * f)


def colour_wheel(rng):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    hue = (np.arctan2(yy - H / 2, xx - W / 2) / (2 * np.pi) + 0.5) * 255
    sat = np.clip(np.hypot(xx - W / 2, yy - H / 2) / (H / 2), 0, 1) * 255
    hsv = np.stack([hue, sat, np.full_like(hue, 230)], axis=2).astype(np.uint8)
    return Image.fromarray(hsv, "HSV").convert("RGB")


def mountains(rng):
    image = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(image)
    for y in range(H):  # evening sky
        t = y / H
        draw.line([(0, y), (W, y)], fill=(int(250 - 120 * t), int(150 + 40 * t), int(90 + 140 * t)))
    draw.ellipse((330, 60, 390, 120), fill=(255, 230, 150))
    for layer, colour in enumerate([(90, 90, 130), (60, 80, 90), (30, 60, 40)]):
        points, x = [(0, H)], 0
        level = 150 + 60 * layer
        while x <= W:
            points.append((x, level - rng.integers(0, 90 - 20 * layer)))
            x += rng.integers(30, 80)
        points += [(W, level), (W, H)]
        draw.polygon(points, fill=colour)
    return image.filter(ImageFilter.GaussianBlur(1))


def beach(rng):
    image = Image.new("RGB", (W, H), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 150, W, 250), fill=(30, 100, 160))
    draw.rectangle((0, 250, W, H), fill=(220, 200, 150))
    for _ in range(6):  # clouds
        x, y = rng.integers(0, W), rng.integers(10, 110)
        draw.ellipse((x - 60, y - 15, x + 60, y + 15), fill=(245, 245, 250))
    for _ in range(40):  # waves
        x, y = rng.integers(0, W), rng.integers(155, 245)
        draw.line([(x, y), (x + 25, y)], fill=(200, 225, 240), width=2)
    return image.filter(ImageFilter.GaussianBlur(0.8))


def forest(rng):
    image = Image.new("RGB", (W, H), (180, 210, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 260, W, H), fill=(70, 110, 50))
    for _ in range(45):
        x, h = int(rng.integers(-20, W + 20)), int(rng.integers(80, 220))
        base = int(rng.integers(250, 330))
        green = tuple(int(v) for v in rng.integers((20, 70, 20), (60, 130, 60)))
        draw.rectangle((x - 4, base - 20, x + 4, base), fill=(90, 60, 30))
        draw.polygon([(x, base - h), (x - h // 4, base - 15), (x + h // 4, base - 15)], fill=green)
    return image


def rectangles(rng):
    image = Image.new("RGB", (W, H), (240, 240, 235))
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x0, y0 = rng.integers(-40, W), rng.integers(-40, H)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.rectangle((x0, y0, x0 + rng.integers(20, 160), y0 + rng.integers(20, 120)), fill=colour)
    return image


def polygons(rng):
    image = Image.new("RGB", (W, H), (30, 30, 40))
    draw = ImageDraw.Draw(image)
    for _ in range(25):
        cx, cy, r = rng.integers(0, W), rng.integers(0, H), rng.integers(15, 80)
        k = int(rng.integers(3, 7))
        angle = rng.random() * 6.3
        points = [(cx + r * math.cos(angle + 2 * math.pi * i / k), cy + r * math.sin(angle + 2 * math.pi * i / k))
                  for i in range(k)]
        draw.polygon(points, fill=tuple(int(v) for v in rng.integers(40, 256, 3)))
    return image


def text_page(rng):
    image = Image.new("RGB", (W, H), (250, 248, 240))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    words = ("expression recognition model region brows eyes mouth cheeks prompt alignment "
             "global local feature learning class photo teaching research detector").split()
    for row in range(16):
        line = " ".join(words[int(i)] for i in rng.integers(0, len(words), 9))
        draw.text((12, 10 + row * 21), line, fill=(20, 20, 30), font=font)
    return image


def bricks(rng):
    image = Image.new("RGB", (W, H), (190, 185, 175))
    draw = ImageDraw.Draw(image)
    for row in range(H // 24 + 1):
        offset = 30 if row % 2 else 0
        for col in range(-1, W // 60 + 1):
            shade = int(rng.integers(-25, 25))
            x0, y0 = col * 60 + offset, row * 24
            draw.rectangle((x0 + 2, y0 + 2, x0 + 58, y0 + 22), fill=(150 + shade, 70 + shade // 2, 50))
    return image


def city_night(rng):
    image = Image.new("RGB", (W, H), (15, 20, 45))
    draw = ImageDraw.Draw(image)
    x = 0
    while x < W:
        w, h = int(rng.integers(30, 70)), int(rng.integers(80, 300))
        draw.rectangle((x, H - h, x + w, H), fill=(35, 35, 45))
        for wy in range(H - h + 8, H - 8, 14):
            for wx in range(x + 5, x + w - 8, 11):
                if rng.random() < 0.45:
                    draw.rectangle((wx, wy, wx + 5, wy + 7), fill=(250, 220, 130))
        x += w + int(rng.integers(2, 10))
    return image


def astronaut_suit(rng):
    photo = Image.open(ROOT / "assets" / "examples" / "astronaut.jpg").convert("RGB")
    return photo.crop((0, 260, 512, 512)).resize((W, H), Image.Resampling.LANCZOS)  # below her chin


def astronaut_side(rng):
    photo = Image.open(ROOT / "assets" / "examples" / "astronaut.jpg").convert("RGB")
    return photo.crop((330, 0, 512, 512)).resize((W, H), Image.Resampling.LANCZOS)  # flag, shuttle model


PICTURES = [
    uniform_noise, blob_noise, linear_gradient, radial_gradient, checkerboard, sine_waves, wood,
    marble, clouds, colour_wheel, mountains, beach, forest, rectangles, polygons, text_page,
    bricks, city_night, astronaut_suit, astronaut_side,
]


def main() -> None:
    for old in HERE.glob("*.jpg"):
        old.unlink()
    for old in HERE.glob("*.png"):
        old.unlink()
    for n, make in enumerate(PICTURES, 1):
        image = make(_rng(n))
        assert image.size == (W, H) and image.mode == "RGB", make.__name__
        name = HERE / f"{n:02d}_{make.__name__}"
        if make in (uniform_noise,):
            image.save(name.with_suffix(".jpg"), quality=70)
        elif make in (checkerboard, rectangles, polygons, text_page, bricks, city_night, colour_wheel,
                      linear_gradient):
            image.save(name.with_suffix(".png"), optimize=True)
        else:
            image.save(name.with_suffix(".jpg"), quality=85)
    total = sum(p.stat().st_size for p in HERE.iterdir() if p.suffix in (".jpg", ".png"))
    print(f"{len(PICTURES)} pictures, {total / 1e6:.2f} MB in {HERE}")


if __name__ == "__main__":
    main()
