"""Data shared by the loader tests: small real files written once per session (JPEG folders, .beton files).

Everything is generated here (the synthetic renderer), never downloaded. Loaders decode with one or two numba threads
and every test that builds one pays the JIT (about a second), so the files are shared at session scope.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from deps_loaders import render_images, write_beton

NUM_CLASSES = 4


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    """An ImageFolder of 64 JPEGs (quality 95) of varied sizes and aspect ratios, 4 classes of 16."""
    root = tmp_path_factory.mktemp("jpeg_folder")
    sizes = [(48, 64), (64, 48), (72, 72), (40, 96), (96, 56), (60, 80), (80, 60), (56, 56)]
    index = 0
    for label in range(NUM_CLASSES):
        (root / f"class{label}").mkdir()
        for k in range(16):
            h, w = sizes[(label * 16 + k) % len(sizes)]
            image = render_images(1, height=h, width=w, seed=7, start=index)[0][0]
            path = root / f"class{label}" / f"img{k:03d}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            index += 1
    return root


@pytest.fixture(scope="session")
def folder_beton(jpeg_folder, tmp_path_factory) -> Path:
    """``jpeg_folder`` as a .beton of JPEGs (no downscaling), in ImageFolder order."""
    path = tmp_path_factory.mktemp("folder_beton") / "folder.beton"
    write_beton(
        jpeg_folder, path, write_mode="jpg", max_resolution=None, jpeg_quality=95, num_workers=2, progress=False
    )
    return path


@pytest.fixture(scope="session")
def square_arrays() -> tuple[np.ndarray, np.ndarray]:
    """200 synthetic 32×32 images and labels (10 classes)."""
    return render_images(200, height=32, seed=3)


@pytest.fixture(scope="session")
def raw_beton(square_arrays, tmp_path_factory) -> Path:
    """``square_arrays`` stored raw: decoding is exact."""
    path = tmp_path_factory.mktemp("raw_beton") / "raw.beton"
    write_beton(square_arrays, path, write_mode="raw", max_resolution=None, num_workers=1, progress=False)
    return path


@pytest.fixture
def epoch_threads():
    """A function listing the live FFCV epoch threads of the deps loaders."""
    return lambda: [t for t in threading.enumerate() if t.name == "deps-ffcv-epoch"]


@pytest.fixture
def one_torch_thread():
    """Run a test with one intra-op thread: the loader's decoding threads share the 2 cores (oversubscribed OpenMP
    threads wait for each other for whole scheduler slices)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
