"""Loader throughput on this machine: the FFCV train pipeline vs the torchvision fallback on the same JPEGs.

Two sets of 2,000 JPEGs (quality 90) rendered by the synthetic generator with sensor noise added (σ = 12 levels, so
the files carry about 3–4 bits per pixel like photographs, not the 1–2 of clean renders):

- ``small``: 160×120, random-resized crop to 128;
- ``large``: 400×300, random-resized crop to 224 (ImageNet-like: ffcv-imagenet stores ≤ 500 px).

Providers (one pytest-benchmark group per set, uint8 batches of 100 on the CPU, 2 workers, one epoch per round after a
warm-up epoch — JIT, worker start, page cache):

- ``ffcv``: :func:`deps_loaders.train_loader` on a .beton of the same images (``write_mode="jpg"``, quality 90), two
  numba decoding threads; also on ``raw`` and ``proportion`` (0.5) .beton files of the same images;
- ``torchvision``: :func:`deps_loaders.torchvision_train_loader` on the ImageFolder (PIL decode, antialiased
  ``resized_crop``), two ``DataLoader`` worker processes;
- ``test_interleaved_ratio``: FFCV and torchvision epochs alternated, so drift of this shared machine cancels in the
  per-round ratio (the figure the goals refer to);
- ``test_decode_ceiling``: one core decoding the same JPEG bytes and resizing the same crop boxes in a loop, with
  OpenCV's ``cv2.imdecode`` (libjpeg-turbo, bundled with opencv-python) and with libffcv's ``imdecode`` (the system
  libturbojpeg with TJFLAG_FASTDCT, FFCV's decoder); twice the faster is the 2-core ceiling.

The main thread runs with one torch thread: with uint8 output it only collects batches, and extra OpenMP threads on a
2-core machine would compete with the decoders. Run: ``make bench PYTEST_ARGS="-k loaders"`` or
``.venv/bin/python -m pytest bench/test_bench_loaders.py --benchmark-only``. Data is cached in
``$DEPS_CACHE/bench-loaders`` (~1.3 GB with the raw .beton files).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from deps_loaders import render_images, torchvision_train_loader, train_loader, write_beton
from deps_loaders.crops import random_resized_crop_boxes
from deps_loaders.synthetic import default_cache_dir
from deps_loaders.writer import image_folder_samples

SETS = {"small": (120, 160, 128), "large": (300, 400, 224)}  # height, width, crop
NUM_IMAGES = 2000
BATCH = 100
WORKERS = 2
NOISE = 12.0
ROUNDS = 5
VERSION = 1


def _bench_dir() -> Path:
    return default_cache_dir().parent / f"bench-loaders-v{VERSION}"


def _make_set(name: str) -> dict[str, Path]:
    height, width, _ = SETS[name]
    root = _bench_dir() / name
    done = root / "complete.json"
    paths = {"folder": root / "folder", **{mode: root / f"{mode}.beton" for mode in ("jpg", "raw", "proportion")}}
    if done.exists():
        return paths
    rng = np.random.default_rng(0)
    for start in range(0, NUM_IMAGES, 250):
        images, labels = render_images(250, height=height, width=width, seed=0, start=start)
        noisy = np.clip(images + rng.normal(0.0, NOISE, images.shape), 0, 255).astype(np.uint8)
        for k, (image, label) in enumerate(zip(noisy, labels)):
            target = paths["folder"] / f"class{label}" / f"{start + k:05d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    for mode in ("jpg", "raw", "proportion"):
        write_beton(paths["folder"], paths[mode], write_mode=mode, max_resolution=500, jpeg_quality=90, progress=False)
    done.write_text(json.dumps({"images": NUM_IMAGES, "noise": NOISE}) + "\n")
    return paths


@pytest.fixture(scope="module")
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=list(SETS))
def image_set(request, one_torch_thread):
    return request.param, _make_set(request.param)


def _epoch(loader) -> int:
    n = 0
    for _, labels in loader:
        n += len(labels)
    return n


def _loader(provider: str, paths: dict[str, Path], crop: int):
    if provider == "torchvision":
        return torchvision_train_loader(paths["folder"], BATCH, resolution=crop, num_workers=WORKERS, dtype=torch.uint8)
    mode = provider.split("-")[1] if "-" in provider else "jpg"
    return train_loader(paths[mode], BATCH, resolution=crop, num_workers=WORKERS, dtype=torch.uint8)


def _machine(benchmark) -> None:
    benchmark.extra_info.update(
        cpu=platform.processor() or platform.machine(),
        cores=len(os.sched_getaffinity(0)),
        torch=torch.__version__,
        opencv=cv2.__version__,
        date=time.strftime("%Y-%m-%d"),
    )


@pytest.mark.parametrize("provider", ["ffcv", "torchvision", "ffcv-raw", "ffcv-proportion"])
def test_train_pipeline(benchmark, image_set, provider):
    name, paths = image_set
    crop = SETS[name][2]
    benchmark.group = f"loaders-train-{name}"
    loader = _loader(provider, paths, crop)
    assert _epoch(loader) == NUM_IMAGES  # warm-up: JIT / worker start / page cache
    cpu: list[float] = []

    def timed_epoch() -> int:
        start = time.process_time()
        n = _epoch(loader)
        cpu.append(time.process_time() - start)
        return n

    count = benchmark.pedantic(timed_epoch, rounds=ROUNDS, iterations=1)
    assert count == NUM_IMAGES
    _machine(benchmark)
    # CPU time of this process (all FFCV threads; for torchvision the main process only, not its workers): a
    # contention-independent measure of the work per image, comparable with the single-core ceiling
    benchmark.extra_info.update(process_cpu_ms_per_1000=round(1e6 * statistics.median(cpu) / NUM_IMAGES, 1))
    source = (
        paths["folder"] if provider == "torchvision" else paths[provider.split("-")[1] if "-" in provider else "jpg"]
    )
    size = sum(f.stat().st_size for f in source.rglob("*.jpg")) if source.is_dir() else source.stat().st_size
    benchmark.extra_info.update(
        images_per_s=round(NUM_IMAGES / benchmark.stats.stats.median), storage_mb=round(size / 2**20, 1)
    )


def test_interleaved_ratio(benchmark, image_set):
    """FFCV / torchvision images per second, the median of per-round ratios of adjacent epochs."""
    name, paths = image_set
    crop = SETS[name][2]
    benchmark.group = f"loaders-interleaved-{name}"
    loaders = {p: _loader(p, paths, crop) for p in ("ffcv", "torchvision")}
    for loader in loaders.values():
        _epoch(loader)
    times: dict[str, list[float]] = {p: [] for p in loaders}

    def both() -> None:
        for provider, loader in loaders.items():
            start = time.perf_counter()
            assert _epoch(loader) == NUM_IMAGES
            times[provider].append(time.perf_counter() - start)

    benchmark.pedantic(both, rounds=ROUNDS + 1, iterations=1)
    ratios = [t / f for f, t in zip(times["ffcv"], times["torchvision"])]
    _machine(benchmark)
    benchmark.extra_info.update(
        ffcv_images_per_s=round(NUM_IMAGES / statistics.median(times["ffcv"])),
        torchvision_images_per_s=round(NUM_IMAGES / statistics.median(times["torchvision"])),
        ratio=round(statistics.median(ratios), 2),
        ratios=[round(r, 2) for r in ratios],
    )


@pytest.mark.parametrize("decoder", ["opencv", "libffcv"])
def test_decode_ceiling(benchmark, image_set, decoder):
    """One core: decode each JPEG, resize its random-resized-crop box to the output size (INTER_AREA)."""
    name, paths = image_set
    crop = SETS[name][2]
    benchmark.group = f"loaders-ceiling-{name}"
    samples, _ = image_folder_samples(paths["folder"])
    files = [np.fromfile(p, np.uint8) for p, _ in samples]
    height, width = SETS[name][:2]
    boxes = random_resized_crop_boxes(
        np.full(len(files), height), np.full(len(files), width), seed=0, epoch=0, indices=np.arange(len(files))
    )
    out = np.empty((crop, crop, 3), np.uint8)
    if decoder == "opencv":

        def decode(data: np.ndarray) -> np.ndarray:
            return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    else:
        from ffcv.libffcv import imdecode

        scratch = np.empty((height, width, 3), np.uint8)

        def decode(data: np.ndarray) -> np.ndarray:
            if imdecode(data, scratch, height, width, height, width, 0, 0, 1, 1, False, False) != 0:
                raise RuntimeError("libjpeg-turbo failed")
            return scratch

    cpu: list[float] = []

    def run() -> int:
        start = time.process_time()
        for data, (top, left, h, w) in zip(files, boxes):
            image = decode(data)
            cv2.resize(image[top : top + h, left : left + w], (crop, crop), dst=out, interpolation=cv2.INTER_AREA)
        cpu.append(time.process_time() - start)
        return len(files)

    n_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core, as a loader worker has
    try:
        run()
        assert benchmark.pedantic(run, rounds=ROUNDS, iterations=1) == NUM_IMAGES
    finally:
        cv2.setNumThreads(n_threads)
    _machine(benchmark)
    one_core = NUM_IMAGES / benchmark.stats.stats.median
    benchmark.extra_info.update(
        images_per_s_one_core=round(one_core),
        ceiling_2_cores=round(2 * one_core),
        mean_jpeg_bytes=round(np.mean([len(f) for f in files])),
        process_cpu_ms_per_1000=round(1e6 * statistics.median(cpu[1:]) / NUM_IMAGES, 1),
    )
