"""The bundled synthetic dataset: deterministic, realistic small RGB images, cached as .beton files.

Each image shows one object on a cluttered background. The class is the object's shape (10 classes: circle,
triangle, square, pentagon, hexagon, star, cross, ring, crescent, arrow) or, for 100 classes, its shape and the
pattern of its surface (solid, stripes, checker, dots, rings, diagonal stripes, two-tone, speckle, grid, wedges).
Everything else is nuisance drawn per image: object colours, pattern phase and period, position, scale, rotation,
shading and outline; a background of two-colour gradients, low-frequency colour noise and faint textures; clutter
(lines and small shapes of every class, sometimes over the object); brightness/contrast jitter and sensor noise.
Shapes are rendered at 4× (2× above 64 px) with OpenCV and downsampled with INTER_AREA, so edges are antialiased.

Telling a hexagon from a circle at 32×32 under clutter and noise needs capacity: after the same short training, a
larger network is clearly more accurate than a small one (tests/test_loaders_synthetic.py checks it).

Determinism: image ``i`` of a split is a pure function of (seed, split, i) through
``numpy.random.default_rng([seed, split, i])``, so any slice renders the same bytes, and the .beton is written in
``raw`` mode by one worker, so the file is byte-identical too. Labels are ``i % num_classes`` (balanced).

Cache: ``$DEPS_CACHE/synthetic`` if the environment variable is set, else ``~/.cache/deps/synthetic``, or the
``cache_dir`` argument. A file is written under a temporary name and renamed; a JSON manifest beside it records the
parameters and the SHA-256 of the file, checked on every use (a mismatch regenerates the file).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import attrs
import cv2
import numpy as np

__all__ = [
    "PATTERNS",
    "SHAPES",
    "SyntheticSpec",
    "default_cache_dir",
    "render_images",
    "synthetic_arrays",
    "synthetic_beton",
    "synthetic_image_folder",
]

GENERATOR_VERSION = 1  # bump when the rendering changes: it is part of the cache key
SHAPES = ("circle", "triangle", "square", "pentagon", "hexagon", "star", "cross", "ring", "crescent", "arrow")
PATTERNS = ("solid", "stripes", "checker", "dots", "rings", "diagonal", "two-tone", "speckle", "grid", "wedges")
_SPLITS = {"train": 0, "val": 1}


# --- geometry ---------------------------------------------------------------------------------------------------------


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], axis=1) * radius


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular(points)
    inner_pts = _regular(points, inner, -math.pi / 2 + math.pi / points)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _cross(arm: float = 0.34) -> np.ndarray:
    a, b = arm, 1.0
    return np.array(
        [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]
    )


def _arrow() -> np.ndarray:
    return np.array([[-1.0, -0.25], [0.15, -0.25], [0.15, -0.65], [1.0, 0.0], [0.15, 0.65], [0.15, 0.25], [-1.0, 0.25]])


# Each shape: (filled polygons, holes cut out after filling), in unit coordinates.
_SHAPE_POLYGONS: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
    "circle": ([_regular(48)], []),
    "triangle": ([_regular(3, 1.1)], []),
    "square": ([_regular(4, 1.0, math.pi / 4)], []),
    "pentagon": ([_regular(5)], []),
    "hexagon": ([_regular(6)], []),
    "star": ([_star()], []),
    "cross": ([_cross()], []),
    "ring": ([_regular(48)], [_regular(48, 0.55)]),
    "crescent": ([_regular(48)], [_regular(48, 0.85) + np.array([0.45, -0.1])]),
    "arrow": ([_arrow()], []),
}


def _place(points: np.ndarray, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = points @ np.array([[c, s], [-s, c]])
    return np.round((rot * radius + [cx, cy]) * 16).astype(np.int32)  # 4 fractional bits for cv2's shift=4


def _shape_mask(size: tuple[int, int], shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    mask = np.zeros(size, np.float32)
    polys, holes = _SHAPE_POLYGONS[shape]
    cv2.fillPoly(mask, [_place(p, cx, cy, radius, angle) for p in polys], 1.0, cv2.LINE_AA, shift=4)
    if holes:
        cv2.fillPoly(mask, [_place(p, cx, cy, radius, angle) for p in holes], 0.0, cv2.LINE_AA, shift=4)
    return mask


def _window(h: int, w: int, cx: float, cy: float, radius: float) -> tuple[slice, slice, float, float]:
    """The canvas window around a shape (all drawing is local) and the shape's centre inside it."""
    r = radius * 1.15 + 2
    y0, y1 = max(int(cy - r), 0), min(int(math.ceil(cy + r)) + 1, h)
    x0, x1 = max(int(cx - r), 0), min(int(math.ceil(cx + r)) + 1, w)
    return slice(y0, max(y1, y0 + 1)), slice(x0, max(x1, x0 + 1)), cx - x0, cy - y0


def _paste(canvas: np.ndarray, shape: str, cx: float, cy: float, radius: float, angle: float, fill) -> None:
    """Composite ``fill`` (a colour, or a function of object-local coordinates) through the shape, in place."""
    h, w = canvas.shape[:2]
    ys, xs, lx, ly = _window(h, w, cx, cy, radius)
    region = canvas[ys, xs]
    mask = _shape_mask(region.shape[:2], shape, lx, ly, radius, angle)[..., None]
    if callable(fill):
        gy, gx = np.mgrid[0 : region.shape[0], 0 : region.shape[1]].astype(np.float32)
        c, s = math.cos(angle), math.sin(angle)
        u = ((gx - lx) * c + (gy - ly) * s) / radius
        v = (-(gx - lx) * s + (gy - ly) * c) / radius
        fill = fill(u, v)
    region *= 1 - mask
    region += mask * fill


# --- appearance -------------------------------------------------------------------------------------------------------


def _color(rng: np.random.Generator, saturation=(0.25, 1.0), value=(0.2, 1.0)) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value)), np.float32)


def _pattern(name: str, u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """A {0, 1} field over object-local coordinates (u, v in units of the object radius)."""
    phase = rng.random()
    if name == "solid":
        return np.zeros_like(u)
    if name == "stripes":
        return ((u / period + phase) % 1.0 < 0.5).astype(np.float32)
    if name == "checker":
        return (((np.floor(u / period + phase) + np.floor(v / period + phase)) % 2) == 0).astype(np.float32)
    if name == "dots":
        du = (u / period + phase) % 1.0 - 0.5
        dv = (v / period + phase) % 1.0 - 0.5
        return (du * du + dv * dv < 0.09).astype(np.float32)
    if name == "rings":
        return ((np.sqrt(u * u + v * v) / period + phase) % 1.0 < 0.5).astype(np.float32)
    if name == "diagonal":
        return (((u + v) / (period * 1.4) + phase) % 1.0 < 0.5).astype(np.float32)
    if name == "two-tone":
        return (u > (phase - 0.5) * 0.6).astype(np.float32)
    if name == "speckle":
        cells = rng.random((9, 9)) < 0.5
        iu = np.clip(((u + 1.2) / 2.4 * 9).astype(np.int64), 0, 8)
        iv = np.clip(((v + 1.2) / 2.4 * 9).astype(np.int64), 0, 8)
        return cells[iv, iu].astype(np.float32)
    if name == "grid":
        gu = (u / period + phase) % 1.0
        gv = (v / period + phase) % 1.0
        return ((gu < 0.25) | (gv < 0.25)).astype(np.float32)
    if name == "wedges":
        sectors = 6
        return ((np.floor((np.arctan2(v, u) / (2 * math.pi) + phase) * sectors) % 2) == 0).astype(np.float32)
    raise ValueError(f"unknown pattern {name!r}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # a two-colour gradient and low-frequency colour noise, rendered small and upsampled in one step
    c1, c2 = _color(rng, (0.0, 0.8)), _color(rng, (0.0, 0.8))
    phi = rng.uniform(0, 2 * math.pi)
    gy, gx = np.mgrid[-1.5:1.5:6j, -1.5:1.5:6j].astype(np.float32)
    t = np.clip((gx * math.cos(phi) + gy * math.sin(phi)) / 2 + 0.5, 0, 1)[..., None]
    small = c1 * (1 - t) + c2 * t + rng.normal(0.0, rng.uniform(0.03, 0.1), (6, 6, 3)).astype(np.float32)
    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.3:  # a faint texture: stripes, checker or dots at an angle
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) / h
        a = rng.uniform(0, math.pi)
        u, v = xs * math.cos(a) + ys * math.sin(a), -xs * math.sin(a) + ys * math.cos(a)
        texture = _pattern(("stripes", "checker", "dots")[rng.integers(3)], u, v, rng.uniform(0.06, 0.2), rng)
        image += (texture[..., None] - 0.5) * rng.uniform(0.04, 0.12)
    return image


def _clutter(rng: np.random.Generator, canvas: np.ndarray, ss: int, count: int) -> None:
    h, w = canvas.shape[:2]
    for _ in range(count):
        color = _color(rng)
        if rng.random() < 0.5:
            p1 = (int(rng.uniform(0, w) * 16), int(rng.uniform(0, h) * 16))
            p2 = (int(rng.uniform(0, w) * 16), int(rng.uniform(0, h) * 16))
            thickness = max(1, int(ss * rng.uniform(0.6, 1.6)))
            cv2.line(canvas, p1, p2, tuple(float(c) for c in color), thickness, cv2.LINE_AA, shift=4)
        else:
            radius = min(h, w) * rng.uniform(0.04, 0.1)
            shape = SHAPES[rng.integers(len(SHAPES))]
            cx, cy, angle = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * math.pi)
            _paste(canvas, shape, cx, cy, radius, angle, color)


def _render_one(rng: np.random.Generator, shape: str, pattern: str, height: int, width: int) -> np.ndarray:
    # polygons are antialiased by OpenCV (LINE_AA); supersampling only smooths the patterns of small objects
    ss = 2 if max(height, width) <= 64 else 1
    h, w = height * ss, width * ss
    canvas = _background(rng, h, w)
    _clutter(rng, canvas, ss, int(rng.integers(0, 3)))

    radius = min(h, w) / 2 * rng.uniform(0.6, 0.95)
    cx = w / 2 + rng.uniform(-1, 1) * (w / 2 - radius * 0.9)
    cy = h / 2 + rng.uniform(-1, 1) * (h / 2 - radius * 0.9)
    angle = rng.uniform(0, 2 * math.pi)
    bg_mean = canvas.reshape(-1, 3).mean(axis=0)
    for _ in range(6):  # objects mostly stand out from their background, as in photos
        fill_a = _color(rng)
        if np.abs(fill_a - bg_mean).sum() > 0.6:
            break
    fill_b = _color(rng)
    period = rng.uniform(0.35, 0.55)
    light = rng.uniform(-0.25, 0.25)

    def surface(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        field = _pattern(pattern, u, v, period, rng)[..., None]
        shading = 1.0 + light * np.clip(u, -1, 1)[..., None]
        return (fill_a * (1 - field) + fill_b * field) * shading

    _paste(canvas, shape, cx, cy, radius, angle, surface)
    if rng.random() < 0.3:
        polys, _ = _SHAPE_POLYGONS[shape]
        outline = tuple(float(x) for x in fill_a * 0.4)
        cv2.polylines(canvas, [_place(p, cx, cy, radius, angle) for p in polys], True, outline, ss, cv2.LINE_AA, 4)
    if rng.random() < 0.15:  # an occluder over the object
        _clutter(rng, canvas, ss, 1)

    image = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA) if ss > 1 else canvas
    image = (image - 0.5) * rng.uniform(0.7, 1.2) + 0.5 + rng.uniform(-0.12, 0.12)
    image += rng.normal(0.0, rng.uniform(0.005, 0.03), image.shape).astype(np.float32)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _classes(label: int, num_classes: int, rng: np.random.Generator) -> tuple[str, str]:
    if num_classes == 10:  # half the objects plain, half with a random pattern
        return SHAPES[label], PATTERNS[0] if rng.random() < 0.5 else PATTERNS[rng.integers(len(PATTERNS))]
    return SHAPES[label // 10], PATTERNS[label % 10]


def render_images(
    count: int,
    *,
    num_classes: int = 10,
    height: int = 32,
    width: int | None = None,
    seed: int = 0,
    split: str = "train",
    start: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start … start+count-1`` of a split: uint8 ``(count, height, width, 3)`` and int64 labels ``(count,)``.

    Any size works (the benchmarks render ImageNet-like 400×300 images); the dataset variants are 32² and 64².
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes: {num_classes!r} is not one of (10, 100)")
    if split not in _SPLITS:
        raise ValueError(f"split: {split!r} is not one of {tuple(_SPLITS)}")
    width = height if width is None else width
    if height < 8 or width < 8:
        raise ValueError(f"height/width: {height}×{width} is too small (>= 8)")
    images = np.empty((count, height, width, 3), np.uint8)
    labels = (np.arange(start, start + count) % num_classes).astype(np.int64)
    for k in range(count):
        rng = np.random.default_rng([seed, _SPLITS[split], start + k])
        shape, pattern = _classes(int(labels[k]), num_classes, rng)
        images[k] = _render_one(rng, shape, pattern, height, width)
    return images, labels


# --- the dataset and its cache ----------------------------------------------------------------------------------------


@attrs.frozen
class SyntheticSpec:
    """One variant of the synthetic dataset. The default (10 classes, 32×32, 10k/2k) serves a ~5-minute CPU demo."""

    num_classes: int = attrs.field(default=10)
    resolution: int = attrs.field(default=32)
    train_size: int = 10_000
    val_size: int = 2_000
    seed: int = 0

    @num_classes.validator
    def _check_classes(self, attribute, value) -> None:
        if value not in (10, 100):
            raise ValueError(f"num_classes: {value!r} is not one of (10, 100)")

    @resolution.validator
    def _check_resolution(self, attribute, value) -> None:
        if value not in (32, 64):
            raise ValueError(f"resolution: {value!r} is not one of (32, 64)")

    def __attrs_post_init__(self) -> None:
        for name in ("train_size", "val_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} must be a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: {self.seed!r} must be a non-negative integer")

    def size(self, split: str) -> int:
        if split not in _SPLITS:
            raise ValueError(f"split: {split!r} is not one of {tuple(_SPLITS)}")
        return self.train_size if split == "train" else self.val_size

    def name(self, split: str) -> str:
        return (
            f"synthetic-v{GENERATOR_VERSION}-c{self.num_classes}-r{self.resolution}-n{self.size(split)}-s{self.seed}"
            f"-{split}"
        )


def synthetic_arrays(split: str = "train", spec: SyntheticSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of a split, rendered in memory."""
    spec = spec or SyntheticSpec()
    return render_images(
        spec.size(split),
        num_classes=spec.num_classes,
        height=spec.resolution,
        seed=spec.seed,
        split=split,
    )


def default_cache_dir() -> Path:
    """``$DEPS_CACHE/synthetic`` or ``~/.cache/deps/synthetic``."""
    root = os.environ.get("DEPS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "deps") / "synthetic"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _render_chunk(args: tuple[SyntheticSpec, str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    spec, split, start, count = args
    return render_images(
        count, num_classes=spec.num_classes, height=spec.resolution, seed=spec.seed, split=split, start=start
    )


def _chunks(
    spec: SyntheticSpec, split: str, num_workers: int = 1, chunk: int = 1024
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The split in order, rendered in chunks (by ``num_workers`` processes; images do not depend on the split)."""
    n = spec.size(split)
    jobs = [(spec, split, start, min(chunk, n - start)) for start in range(0, n, chunk)]
    if num_workers <= 1 or len(jobs) == 1:
        yield from map(_render_chunk, jobs)
        return
    with multiprocessing.get_context("fork").Pool(min(num_workers, len(jobs))) as pool:
        yield from pool.imap(_render_chunk, jobs)


def synthetic_beton(
    split: str = "train",
    spec: SyntheticSpec | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress: bool = False,
) -> Path:
    """The .beton of a split, generated into the cache on first use and verified (SHA-256) on every later use.

    ``num_workers`` processes render the images (default: the available cores); the bytes do not depend on it.
    """
    spec = spec or SyntheticSpec()
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = "cache_dir" if cache_dir is not None else "the synthetic dataset's cache ($DEPS_CACHE or ~/.cache/deps)"
        raise ValueError(f"{where}: cannot create {directory} ({err.strerror or err})") from None
    path = directory / f"{spec.name(split)}.beton"
    manifest = path.with_suffix(".json")
    if path.exists() and manifest.exists():
        try:
            recorded = json.loads(manifest.read_text())
            if recorded.get("sha256") == _sha256(path) and recorded.get("bytes") == path.stat().st_size:
                return path
        except (OSError, ValueError):
            pass  # unreadable manifest: regenerate
    from deps_loaders.base import default_num_workers
    from deps_loaders.writer import write_beton

    parts = list(_chunks(spec, split, num_workers or default_num_workers()))
    images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    summary = write_beton(
        (images, labels),
        path,
        write_mode="raw",
        max_resolution=None,
        num_workers=1,  # one writer process: deterministic page layout, so the file's bytes are reproducible
        num_classes=spec.num_classes,
        progress=progress,
    )
    record = attrs.asdict(spec) | {
        "split": split,
        "generator_version": GENERATOR_VERSION,
        "images": summary.images,
        "bytes": summary.bytes,
        "sha256": _sha256(path),
    }
    partial = manifest.with_name(f".{manifest.name}.{os.getpid()}")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, manifest)
    return path


def synthetic_image_folder(
    root: str | os.PathLike,
    split: str = "train",
    spec: SyntheticSpec | None = None,
    *,
    image_format: str = "png",
    jpeg_quality: int = 90,
) -> Path:
    """Write a split as an ImageFolder tree ``root/<class>/<index>.<png|jpg>`` (for the torchvision fallback)."""
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format: {image_format!r} is not one of ('png', 'jpg')")
    spec = spec or SyntheticSpec()
    root = Path(root)
    names = _class_names(spec.num_classes)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if image_format == "jpg" else []
    index = 0
    for images, labels in _chunks(spec, split):
        for image, label in zip(images, labels):
            target = root / names[label] / f"{index:07d}.{image_format}"
            if not cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
                raise OSError(f"{target}: could not write the image")
            index += 1
    return root


def _class_names(num_classes: int) -> list[str]:
    if num_classes == 10:
        return [f"{i:02d}-{s}" for i, s in enumerate(SHAPES)]
    return [f"{i:03d}-{SHAPES[i // 10]}-{PATTERNS[i % 10]}" for i in range(num_classes)]
