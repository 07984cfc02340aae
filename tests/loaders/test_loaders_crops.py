"""Counter-based randomness, crop boxes and sample orders: pure NumPy, no files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from deps_loaders.crops import center_crop_boxes, flips, random_resized_crop_boxes, resize_size
from deps_loaders.orders import batches_of, epoch_order, num_batches, shard
from deps_loaders.seeding import batch_seed, sample_uniforms


def test_uniforms_are_a_function_of_seed_epoch_index_stream():
    idx = np.arange(1000)
    u = sample_uniforms(1, 2, idx, 3, 4)
    assert u.shape == (1000, 4) and (u >= 0).all() and (u < 1).all()
    np.testing.assert_array_equal(u, sample_uniforms(1, 2, idx, 3, 4))
    # a sample's draws do not depend on which other samples share its batch, nor on their order
    np.testing.assert_array_equal(u[[7, 500, 3]], sample_uniforms(1, 2, np.array([7, 500, 3]), 3, 4))
    for other in [(2, 2, 3), (1, 3, 3), (1, 2, 4)]:
        v = sample_uniforms(other[0], other[1], idx, other[2], 4)
        assert not np.isclose(u, v).any(axis=1).all()
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.std() - math.sqrt(1 / 12)) < 0.01
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.1


def test_batch_seed_is_pure_and_distinct():
    seeds = {batch_seed(0, e, s, 1) for e in range(10) for s in range(100)}
    assert len(seeds) == 1000
    assert batch_seed(5, 1, 2, 3) == batch_seed(5, 1, 2, 3) and 0 <= batch_seed(5, 1, 2, 3) < 2**63


@pytest.mark.parametrize(
    "height, width",
    [
        (375, 500),  # ImageNet-like landscape
        (500, 333),  # portrait
        (32, 32),  # CIFAR-sized
        (10, 400),  # extreme panorama: most tries fail, torchvision's centre fallback
    ],
)
def test_random_resized_crop_boxes_follow_torchvision(height, width):
    n = 4000
    h, w = np.full(n, height), np.full(n, width)
    boxes = random_resized_crop_boxes(h, w, seed=0, epoch=0, indices=np.arange(n))
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (bh >= 1).all() and (bw >= 1).all()
    assert (top + bh <= height).all() and (left + bw <= width).all()
    area = bh * bw / (height * width)
    aspect = bw / bh
    # tries accept a scale in [0.08, 1] and an aspect in [3/4, 4/3], up to rounding of the sides
    tried = (area >= 0.08 * 0.9) & (aspect >= 0.75 * 0.85) & (aspect <= 4 / 3 / 0.85)
    if height > 10:
        assert tried.mean() > 0.95
    # torchvision's fallback: a central crop of the whole image clamped to the ratio range
    in_ratio = width / height
    fh = round(width / 0.75) if in_ratio < 0.75 else height
    fw = round(height * 4 / 3) if in_ratio > 4 / 3 else (width if in_ratio >= 0.75 else width)
    fallback = (bh == fh) & (bw == fw) & (top == (height - fh) // 2) & (left == (width - fw) // 2)
    assert (tried | fallback).all()
    if height == 10:  # no try fits a 10-pixel-high image
        assert fallback.all()


def test_random_resized_crop_positions_cover_the_image():
    n = 2000
    boxes = random_resized_crop_boxes(np.full(n, 100), np.full(n, 100), seed=1, epoch=0, indices=np.arange(n))
    centre_y = boxes[:, 0] + boxes[:, 2] / 2
    assert centre_y.min() < 20 and centre_y.max() > 80  # uniform offsets, not always central


@pytest.mark.parametrize(
    "height, width, size, expected",
    [
        # Resize(256) is the identity for a 256-high image; CenterCrop(224) takes rows 16..240, cols 48..272
        (256, 320, 224, (16, 48, 224, 224)),
        # a 512×512 image is halved: the 224 crop at (16, 16) is (32, 32, 448, 448) in the stored image
        (512, 512, 224, (32, 32, 448, 448)),
    ],
)
def test_center_crop_boxes_match_resize_then_center_crop(height, width, size, expected):
    box = center_crop_boxes(np.array([height]), np.array([width]), size=size, ratio=224 / 256)[0]
    assert tuple(box) == expected


def test_center_crop_boxes_stay_inside_and_centred():
    rng = np.random.default_rng(0)
    h, w = rng.integers(20, 600, 500), rng.integers(20, 600, 500)
    top, left, bh, bw = center_crop_boxes(h, w, size=64, ratio=0.875).T
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    # crops of size / resize_size of the shorter side (64 / 73 here), centred; along the longer side torchvision
    # truncates the resized length, which widens the crop there by up to a pixel per 73
    side = np.minimum(h, w) * 64 / resize_size(64, 0.875)
    tolerance = np.maximum(1.5, side / 73 + 1)
    assert (np.abs(bh - side) <= tolerance).all() and (np.abs(bw - side) <= tolerance).all()
    # torchvision rounds the offset in resized pixels: up to half a resized pixel off-centre, plus rounding
    assert (np.abs(top + bh / 2 - h / 2) <= tolerance).all() and (np.abs(left + bw / 2 - w / 2) <= tolerance).all()
    assert resize_size(224, 224 / 256) == 256 and resize_size(160, 0.875) == 182


def test_flips_are_fair_and_seeded():
    f = flips(0, 0, np.arange(10000))
    assert 0.48 < f.mean() < 0.52
    np.testing.assert_array_equal(f, flips(0, 0, np.arange(10000)))
    assert (f != flips(0, 1, np.arange(10000))).any()


def test_orders_shards_and_batches():
    order = epoch_order(103, "random", seed=4, epoch=2)
    assert sorted(order.tolist()) == list(range(103))
    np.testing.assert_array_equal(order, epoch_order(103, "random", 4, 2))
    assert (order != epoch_order(103, "random", 4, 3)).any()
    assert (epoch_order(103, "random", 1, 0) != epoch_order(103, "random", 0, 1)).any()  # FFCV's seed+epoch clash
    for drop_last in (True, False):
        parts = [shard(order, r, 4, drop_last) for r in range(4)]
        flat = np.concatenate(parts)
        assert len(set(flat.tolist())) == len(flat)  # disjoint
        assert len(flat) == (100 if drop_last else 103)
        if drop_last:
            assert {len(p) for p in parts} == {25}
    batches = batches_of(np.arange(10), 4, drop_last=False)
    assert [len(b) for b in batches] == [4, 4, 2] and [len(b) for b in batches_of(np.arange(10), 4, True)] == [4, 4]
    assert num_batches(103, 8, 3, 4, True) == 3 and num_batches(103, 8, 2, 4, False) == 4
