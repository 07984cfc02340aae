"""The bundled synthetic dataset: deterministic bytes, realistic images, the cache, and difficulty that separates
model capacity after a short training run through the FFCV loader.

The capacity check uses two plain CNNs: the max and min subnets of ``ofa_mbv3_32`` (w0.5) train too slowly on 2 CPU
cores (~35 vs ~170 images/s) for a short test, and in short runs the min subnet learns as fast or faster (measured with
plain autograd: 12 epochs of 4k images through this loader with AdamW, max 70.5 % vs min 71.2 %; 5 epochs of 3k with
SGD or AdamW, the min subnet ahead by 6–9 points).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from deps_loaders import SyntheticSpec, default_cache_dir, render_images, synthetic_beton, train_loader, val_loader
from deps_loaders.synthetic import PATTERNS, SHAPES


def test_seed_gives_identical_bytes_and_slices_agree():
    a, la = render_images(40, num_classes=100, height=64, seed=5, split="val")
    b, lb = render_images(40, num_classes=100, height=64, seed=5, split="val")
    assert a.tobytes() == b.tobytes() and (la == lb).all()
    part, _ = render_images(10, num_classes=100, height=64, seed=5, split="val", start=30)
    assert part.tobytes() == a[30:].tobytes()  # image i depends on (seed, split, i) only
    assert a.tobytes() != render_images(40, num_classes=100, height=64, seed=6, split="val")[0].tobytes()
    assert a.tobytes() != render_images(40, num_classes=100, height=64, seed=5, split="train")[0].tobytes()


@pytest.mark.parametrize("num_classes, size", [(10, 32), (100, 64)])
def test_images_are_realistic_not_constants_or_white_noise(num_classes, size):
    images, labels = render_images(200, num_classes=num_classes, height=size, seed=0)
    assert images.shape == (200, size, size, 3) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=num_classes).min() == 200 // num_classes  # balanced
    x = images.astype(np.float64)
    assert x.std(axis=(1, 2, 3)).min() > 10  # no flat images
    # neighbouring pixels are strongly correlated (white noise: ~0), as in photographs
    right = np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1]
    assert right > 0.8
    assert len(np.unique(images.reshape(-1, 3), axis=0)) > 10_000  # many colours


def test_colour_is_nuisance():
    """The mean colour of a class varies no more between classes than between random groups of the same size."""
    images, labels = render_images(1000, height=32, seed=1)
    colour = images.astype(np.float64).mean(axis=(1, 2))

    def spread(groups: np.ndarray) -> float:
        return np.stack([colour[groups == c].mean(axis=0) for c in range(10)]).std(axis=0).max()

    shuffled = [spread(np.random.default_rng(k).permutation(labels)) for k in range(20)]
    assert spread(labels) < 1.5 * np.mean(shuffled)


def test_variants_and_validation():
    assert len(SHAPES) == len(PATTERNS) == 10
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticSpec(num_classes=20)
    with pytest.raises(ValueError, match="resolution"):
        SyntheticSpec(resolution=48)
    with pytest.raises(ValueError, match="train_size"):
        SyntheticSpec(train_size=0)
    with pytest.raises(ValueError, match="split"):
        render_images(1, split="test")


def test_cache_is_built_once_verified_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    spec = SyntheticSpec(train_size=120, val_size=40)
    monkeypatch.setenv("DEPS_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env" / "synthetic"
    path = synthetic_beton("val", spec, num_workers=1)
    assert path.parent == tmp_path / "env" / "synthetic"
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["images"] == 40 and manifest["num_classes"] == 10 and len(manifest["sha256"]) == 64
    stamp = path.stat().st_mtime_ns
    assert synthetic_beton("val", spec) == path and path.stat().st_mtime_ns == stamp  # reused, not rewritten
    # the same bytes in another cache directory (2 rendering processes instead of 1)
    other = synthetic_beton("val", spec, cache_dir=tmp_path / "other", num_workers=2)
    assert other.read_bytes() == path.read_bytes()
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert synthetic_beton("val", spec).read_bytes() == other.read_bytes()  # damage detected, file regenerated
    loader = val_loader(path, 40, resolution=32, crop_ratio=1.0, num_workers=1, num_classes=10)
    assert [len(y) for _, y in loader] == [40]
    os.remove(path.with_suffix(".json"))
    assert synthetic_beton("val", spec).exists()  # a missing manifest also rebuilds


# --- difficulty separates capacity ------------------------------------------------------------------------------------


def _cnn(width: int, depth: int = 6) -> nn.Module:
    """``depth`` 3×3 conv-BN-ReLU layers (widths w, w, 2w, 2w, 4w, 4w; max-pool after every second), GAP, linear."""
    layers, cin = [], 3
    for i in range(depth):
        cout = width * 2 ** (i // 2)
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if i % 2 else []
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))


def _train_and_evaluate(net, forward, train_path, val_path, epochs, lr):
    loader = train_loader(train_path, 64, resolution=32, scale=(0.6, 1.0), num_workers=1, seed=0)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(loader), pct_start=0.15)
    net.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(forward(net, x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in val_loader(val_path, 250, resolution=32, crop_ratio=1.0, num_workers=1):
            correct += (forward(net, x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def test_a_cache_directory_that_cannot_be_created_is_named(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DEPS_CACHE", str(tmp_path / "file"))
    with pytest.raises(
        ValueError, match=r"synthetic dataset's cache \(\$DEPS_CACHE .*\): cannot create .*file/synthetic"
    ):
        synthetic_beton("val", SyntheticSpec(train_size=120, val_size=40))
    with pytest.raises(ValueError, match=r"^cache_dir: cannot create .*file/sub"):
        synthetic_beton("val", SyntheticSpec(train_size=120, val_size=40), cache_dir=tmp_path / "file" / "sub")


@pytest.fixture(scope="module")
def capacity_data(tmp_path_factory):
    spec = SyntheticSpec(train_size=4000, val_size=1000)
    cache = tmp_path_factory.mktemp("synthetic")
    return synthetic_beton("train", spec, cache_dir=cache), synthetic_beton("val", spec, cache_dir=cache)


def test_a_larger_network_wins_after_a_short_run(capacity_data, one_torch_thread):
    """Same data, order, steps and seed: 2 conv layers of 8 channels stay near chance (local colour and texture say
    nothing about the class) while 6 layers of 16–64 channels reach ~24 % after 3 epochs of 4k images (~20 s)."""
    train, val = capacity_data
    accuracy = {}
    for width, depth in ((8, 2), (16, 6)):
        with torch.random.fork_rng():  # the layers initialize from the global generator: seed it, then restore it
            torch.manual_seed(0)
            net = _cnn(width, depth).to(memory_format=torch.channels_last)
        accuracy[depth] = _train_and_evaluate(net, lambda n, x: n(x), train, val, epochs=3, lr=3e-3)
    assert accuracy[6] > 0.18, accuracy  # well above chance (0.10)...
    assert accuracy[6] > accuracy[2] + 0.08, accuracy  # ...and capacity shows by several points
