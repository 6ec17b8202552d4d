#!/usr/bin/env python3
"""Draws the built-in site's photographs: site/static/img/*.

    pip install pillow==13.0.0
    python3 tools/site/make_images.py

The pictures are procedural landscapes (sky gradients, fractal ridges, a reflecting
lake, trees, dunes, a city at night) with film grain on top, so that they compress
like photographs do: JPEG and WebP keep tens to hundreds of KiB of them, as they would
of a real page's images. Everything comes from seeded random.Random generators and
Pillow's own operations, so a rerun with the same Pillow (its bundled libjpeg-turbo,
libwebp and zlib decide the exact bytes) writes the same files; another Pillow may
write slightly different bytes of the same pictures.

The images are not fingerprinted (their names are in crates/app/src/page.rs and
site/about.html as they are); after changing them, `cargo test -p hastack-app` checks
that every /static/ path the pages name still exists.
"""

import math
import os
import random
import sys

from PIL import Image, ImageChops, ImageDraw, ImageFilter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "site", "static", "img")


# ---- small helpers -------------------------------------------------------------------

def lerp(a, b, t):
    return a + (b - a) * t


def mix(c1, c2, t):
    """The colour t of the way from c1 to c2 (RGB tuples)."""
    return tuple(int(round(lerp(x, y, t))) for x, y in zip(c1, c2))


def vertical_gradient(size, stops):
    """An RGB image whose rows go through `stops`: [(position 0..1, (r, g, b)), ...]."""
    w, h = size
    column = Image.new("RGB", (1, h))
    px = column.load()
    for y in range(h):
        t = y / max(1, h - 1)
        for (p0, c0), (p1, c1) in zip(stops, stops[1:]):
            if p0 <= t <= p1:
                px[0, y] = mix(c0, c1, (t - p0) / max(1e-9, p1 - p0))
                break
        else:
            px[0, y] = stops[-1][1] if t > stops[-1][0] else stops[0][1]
    return column.resize((w, h), Image.NEAREST)


def value_noise(rng, size, cell):
    """Smooth noise (L mode): random values on a coarse grid, upscaled bicubically."""
    w, h = size
    gw, gh = max(2, w // cell + 2), max(2, h // cell + 2)
    grid = Image.frombytes("L", (gw, gh), rng.randbytes(gw * gh))
    return grid.resize((gw * cell, gh * cell), Image.BICUBIC).crop((0, 0, w, h))


def fbm(rng, size, cells=(160, 80, 40, 20, 10), gain=0.55):
    """Fractal noise: octaves of value_noise, each finer and fainter than the last."""
    acc = Image.new("L", size, 128)
    weights = [gain ** i for i in range(len(cells))]
    for cell, weight in zip(cells, weights):
        acc = Image.blend(acc, value_noise(rng, size, cell), weight / sum(weights))
    # Stretch the result back to the full range.
    lo, hi = acc.getextrema()
    span = max(1, hi - lo)
    return acc.point(lambda v: int((v - lo) * 255 / span))


def ridge(rng, width, base, rough, octaves=9):
    """A mountain ridge: y for every x, by midpoint displacement."""
    n = 1 << octaves
    pts = [0.0] * (n + 1)
    pts[0], pts[n] = rng.uniform(-1, 1), rng.uniform(-1, 1)
    step, amp = n, 1.0
    while step > 1:
        half = step // 2
        for i in range(half, n, step):
            pts[i] = (pts[i - half] + pts[i + half]) / 2 + rng.uniform(-amp, amp)
        step, amp = half, amp * 0.55
    ys = []
    for x in range(width):
        f = x * n / (width - 1)
        i = min(int(f), n - 1)
        ys.append(base + rough * lerp(pts[i], pts[i + 1], f - i))
    return ys


def fill_below(img, ys, color, texture=None, strength=0.0):
    """Paints everything under the line ys (one y per column) in `color`, modulated by
    the L image `texture` (darker where it is dark) by `strength`."""
    w, h = img.size
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(0, h)] + [(x, y) for x, y in enumerate(ys)] + [(w - 1, h)], fill=255)
    layer = Image.new("RGB", (w, h), color)
    if texture is not None and strength > 0:
        shade = texture.point(lambda v: int(255 - strength * (255 - v)))
        layer = ImageChops.multiply(layer, Image.merge("RGB", (shade, shade, shade)))
    img.paste(layer, (0, 0), mask)
    return mask


def grain(img, rng, amount):
    """Film grain: adds and takes away up to `amount` per channel, per pixel."""
    w, h = img.size
    channels = []
    for band in img.split():
        noise = Image.frombytes("L", (w, h), rng.randbytes(w * h))
        up = noise.point(lambda v: max(0, v - 128) * amount // 127)
        down = noise.point(lambda v: max(0, 127 - v) * amount // 127)
        channels.append(ImageChops.subtract(ImageChops.add(band, up), down))
    return Image.merge("RGB", channels)


def sun(img, center, radius, color, glow):
    """A sun disc with a soft glow around it."""
    w, h = img.size
    halo = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(halo)
    cx, cy = center
    for i in range(24, 0, -1):
        r = radius + glow * i / 24
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(150 * (1 - i / 24) ** 2))
    halo = halo.filter(ImageFilter.GaussianBlur(glow / 6))
    img.paste(Image.new("RGB", (w, h), color), (0, 0), halo)
    disc = Image.new("L", (w, h), 0)
    ImageDraw.Draw(disc).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    img.paste(Image.new("RGB", (w, h), (255, 244, 214)), (0, 0), disc.filter(ImageFilter.GaussianBlur(2)))


def clouds(img, rng, top, bottom, tint, opacity):
    """Wispy clouds between rows top and bottom, stretched sideways like cirrus."""
    w, h = img.size
    n = fbm(rng, (w // 4, h // 2), cells=(64, 32, 16, 8, 4)).resize((w, h), Image.BICUBIC)
    band = vertical_gradient((w, h), [(0, (0, 0, 0)), (top / h, (0, 0, 0)),
                                       ((top + bottom) / 2 / h, (255, 255, 255)),
                                       (bottom / h, (0, 0, 0)), (1, (0, 0, 0))]).convert("L")
    mask = ImageChops.multiply(n.point(lambda v: max(0, v - 120) * 2), band)
    mask = mask.point(lambda v: int(v * opacity))
    img.paste(Image.new("RGB", (w, h), tint), (0, 0), mask)


def pine(draw, x, base, height, color):
    """A fir tree: a trunk and stacked triangles."""
    width = height * 0.38
    draw.rectangle((x - height * 0.02, base - height * 0.15, x + height * 0.02, base), fill=color)
    tiers = 4
    for i in range(tiers):
        top = base - height + i * height * 0.17
        bot = base - height * 0.12 - (tiers - 1 - i) * height * 0.16
        half = width * (0.45 + 0.55 * (i + 1) / tiers) / 2
        draw.polygon([(x, top), (x - half, bot), (x + half, bot)], fill=color)


# ---- the pictures --------------------------------------------------------------------

def lake_at_dusk(size, seed):
    """The hero: mountains over a lake at sunset, pines in front."""
    rng = random.Random(seed)
    w, h = size
    horizon = int(h * 0.62)
    img = vertical_gradient(size, [
        (0.0, (24, 38, 86)), (0.28, (63, 81, 150)), (0.48, (196, 120, 128)),
        (0.58, (250, 176, 102)), (0.62, (255, 206, 140)), (1.0, (255, 206, 140))])
    sun(img, (int(w * 0.64), int(h * 0.2)), h * 0.04, (255, 196, 120), h * 0.3)
    clouds(img, rng, int(h * 0.05), int(h * 0.42), (255, 170, 150), 0.55)
    rock = fbm(rng, size, cells=(96, 48, 24, 12, 6, 3))
    layers = [
        (horizon - h * 0.26, h * 0.20, (118, 100, 142), 0.25),
        (horizon - h * 0.16, h * 0.14, (82, 70, 108), 0.35),
        (horizon - h * 0.07, h * 0.08, (44, 44, 70), 0.45),
    ]
    for base, rough, color, strength in layers:
        ys = [min(horizon, y) for y in ridge(rng, w, base, rough)]
        fill_below(img, ys, color, rock, strength)
    # The lake mirrors the sky and the mountains, darker, with ripples.
    above = img.crop((0, horizon - (h - horizon), w, horizon)).transpose(Image.FLIP_TOP_BOTTOM)
    rippled = Image.new("RGB", above.size)
    for y in range(above.size[1]):
        shift = int(math.sin(y * 0.9 + rng.random()) * (1 + y * 0.04))
        row = above.crop((0, y, w, y + 1))
        rippled.paste(row, (shift, y))
        if shift > 0:
            rippled.paste(row.crop((0, 0, shift, 1)), (0, y))
    water = ImageChops.multiply(rippled, Image.new("RGB", above.size, (150, 160, 190)))
    img.paste(water.filter(ImageFilter.GaussianBlur(1.2)), (0, horizon))
    d = ImageDraw.Draw(img)
    for _ in range(140):  # glints on the water
        y = rng.uniform(horizon + 4, h)
        x = rng.gauss(w * 0.64, w * 0.05 + (y - horizon) * 0.3)
        length = rng.uniform(4, 30)
        d.line((x - length, y, x + length, y), fill=(255, 214, 160), width=1)
    # A dark shore and pines in front.
    shore = ridge(rng, w, h * 0.93, h * 0.03, octaves=8)
    fill_below(img, shore, (18, 22, 30), rock, 0.5)
    for _ in range(46):
        x = rng.uniform(-20, w + 20)
        if w * 0.45 < x < w * 0.8 and rng.random() < 0.8:
            continue  # leave the sun's reflection open
        base = shore[int(min(w - 1, max(0, x)))] + 6
        pine(d, x, base, rng.uniform(h * 0.12, h * 0.34), (14, 18, 24))
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    return grain(img, rng, 16)


def green_valley(size, seed):
    """Rolling hills on a summer day, with fields."""
    rng = random.Random(seed)
    w, h = size
    img = vertical_gradient(size, [(0.0, (70, 130, 210)), (0.45, (160, 200, 236)), (1.0, (200, 224, 240))])
    clouds(img, rng, int(h * 0.02), int(h * 0.45), (255, 255, 255), 0.9)
    texture = fbm(rng, size, cells=(64, 32, 16, 8, 4, 2))
    hills = [
        (h * 0.50, h * 0.10, (120, 150, 170), 0.2),
        (h * 0.60, h * 0.09, (88, 140, 96), 0.35),
        (h * 0.72, h * 0.08, (74, 128, 58), 0.45),
        (h * 0.86, h * 0.07, (96, 146, 50), 0.55),
    ]
    for base, rough, color, strength in hills:
        fill_below(img, ridge(rng, w, base, rough, octaves=6), color, texture, strength)
    d = ImageDraw.Draw(img)
    for _ in range(400):  # hedgerows and bushes
        x, y = rng.uniform(0, w), rng.uniform(h * 0.62, h)
        r = rng.uniform(1.5, 5) * (0.5 + (y / h))
        d.ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), fill=(38, 70, 30))
    for _ in range(12):  # trees
        x = rng.uniform(0, w)
        base = rng.uniform(h * 0.7, h * 0.98)
        pine(d, x, base, rng.uniform(h * 0.08, h * 0.2), (30, 58, 30))
    return grain(img.filter(ImageFilter.GaussianBlur(0.5)), rng, 16)


def dunes(size, seed):
    """Sand dunes under a hazy sky, lit from the left."""
    rng = random.Random(seed)
    w, h = size
    img = vertical_gradient(size, [(0.0, (120, 170, 220)), (0.4, (230, 210, 190)), (1.0, (230, 210, 190))])
    sand = fbm(rng, size, cells=(32, 16, 8, 4, 2))
    for i in range(6):
        base = h * (0.42 + i * 0.11)
        phase, period = rng.uniform(0, 6.28), rng.uniform(w * 0.5, w * 1.2)
        ys = [base - h * 0.06 * math.sin(x / period * 6.28 + phase) - h * 0.02 * math.sin(x / 37 + i)
              for x in range(w)]
        light = mix((214, 160, 100), (240, 196, 140), i / 5)
        mask = fill_below(img, ys, light, sand, 0.18)
        # The shaded face of each dune: a band under its crest.
        shade = Image.new("L", size, 0)
        ImageDraw.Draw(shade).polygon(
            [(x, ys[x]) for x in range(0, w, 4)] + [(x, ys[x] + h * 0.05) for x in range(w - 1, -1, -4)],
            fill=90)
        shade = ImageChops.multiply(shade.filter(ImageFilter.GaussianBlur(6)), mask)
        img.paste(Image.new("RGB", size, (150, 96, 60)), (0, 0), shade)
    return grain(img, rng, 14)


def city_at_night(size, seed):
    """A skyline at night with lit windows; kept as a 128-colour PNG, dithered."""
    rng = random.Random(seed)
    w, h = size
    img = vertical_gradient(size, [(0.0, (8, 10, 30)), (0.7, (40, 36, 80)), (1.0, (90, 60, 90))])
    d = ImageDraw.Draw(img)
    for _ in range(160):  # stars
        x, y = rng.uniform(0, w), rng.uniform(0, h * 0.5)
        b = rng.randint(120, 255)
        d.point((x, y), fill=(b, b, b))
    x = 0
    while x < w:
        bw = rng.randint(18, 60)
        top = rng.uniform(h * 0.25, h * 0.8)
        tone = rng.randint(14, 34)
        d.rectangle((x, top, x + bw, h), fill=(tone, tone, tone + 12))
        for wy in range(int(top) + 4, h - 4, 7):
            for wx in range(x + 3, x + bw - 3, 6):
                if rng.random() < 0.35:
                    c = mix((255, 200, 110), (200, 220, 255), rng.random())
                    d.rectangle((wx, wy, wx + 2, wy + 3), fill=c)
        x += bw + rng.randint(0, 4)
    img = grain(img.filter(ImageFilter.GaussianBlur(0.4)), rng, 4)
    return img.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)


IMAGES = [
    # (file, picture, size, seed, save options)
    ("lake-at-dusk.jpg", lake_at_dusk, (1600, 900), 1, dict(quality=80, optimize=True, progressive=True)),
    ("green-valley.jpg", green_valley, (800, 500), 2, dict(quality=78, optimize=True, progressive=True)),
    ("dunes.webp", dunes, (800, 500), 3, dict(quality=78, method=6)),
    ("city-at-night.png", city_at_night, (400, 250), 4, dict(optimize=True)),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, draw, size, seed, options in IMAGES:
        path = os.path.join(OUT, name)
        draw(size, seed).save(path, **options)
        print(f"{os.path.relpath(path, ROOT)}: {size[0]}x{size[1]}, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    sys.exit(main())
