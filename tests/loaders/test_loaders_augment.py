"""Resolution schedules and the batched on-device augmentations (CPU tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deps_loaders.augment import (
    Augment,
    BatchTransform,
    ColorDistortion,
    auto_augment,
    color_distortion,
    mix_batch,
    random_erasing,
)
from deps_loaders.resolution import ElasticResolution, FixedResolution, ProgressiveResolution, as_resolution


def _images(n: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


# --- resolution -------------------------------------------------------------------------------------------------------


def test_elastic_resolution_is_a_pure_function_of_seed_epoch_step():
    res = ElasticResolution.ofa()
    assert res.sizes == tuple(range(128, 225, 4)) and res.decode_size(3) == 224
    picks = [res.at(7, 2, step) for step in range(2000)]
    assert set(picks) == set(res.sizes)  # every size is used
    # two ranks (separate objects, same seed) agree at every step without communicating
    other = ElasticResolution(list(range(128, 225, 4)))
    assert picks == [other.at(7, 2, step) for step in range(2000)]
    assert picks != [res.at(7, 3, step) for step in range(2000)]


def test_progressive_resolution_matches_ffcv_imagenet():
    # ffcv-imagenet rn50 configs: 160 → 192 between epochs 11 and 13 of 16, multiples of 32
    res = ProgressiveResolution(min_res=160, max_res=192, start_ramp=11, end_ramp=13)
    assert [res.decode_size(e) for e in (0, 11, 12, 13, 15)] == [160, 160, 192, 192, 192]
    res = ProgressiveResolution(min_res=128, max_res=256, start_ramp=2, end_ramp=6, step=32)
    assert [res.decode_size(e) for e in range(8)] == [128, 128, 128, 160, 192, 224, 256, 256]
    assert res.at(0, 4, 99) == 192


@pytest.mark.parametrize(
    "value, match",
    [
        ([], "non-empty"),
        ([128, -4], "-4"),
        ([128, 0], "0"),
        ([128, 160.5], "160.5"),
        ("224", "'224'"),
        (0, "0"),
        (True, "True"),
    ],
)
def test_invalid_resolutions_name_the_value(value, match):
    with pytest.raises(ValueError, match=match):
        as_resolution(value)


def test_invalid_progressive_schedule():
    with pytest.raises(ValueError, match="min_res"):
        ProgressiveResolution(min_res=256, max_res=128, start_ramp=0, end_ramp=1)
    with pytest.raises(ValueError, match="start_ramp"):
        ProgressiveResolution(min_res=128, max_res=256, start_ramp=5, end_ramp=1)
    assert isinstance(as_resolution(64), FixedResolution) and isinstance(as_resolution((32, 64)), ElasticResolution)


# --- augmentations ----------------------------------------------------------------------------------------------------


def test_auto_augment_draws_per_image_and_is_seeded():
    x = _images(64)
    a = auto_augment(x, np.random.default_rng(1))
    b = auto_augment(x, np.random.default_rng(1))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    changed = (a != x).flatten(1).any(1)
    assert 0 < changed.sum() < len(x)  # some images drew no-ops or skipped both coin flips, others changed
    assert not torch.equal(a, auto_augment(x, np.random.default_rng(2)))


def test_random_erasing_erases_one_rectangle_per_chosen_image():
    x = torch.randn(32, 3, 40, 40) + 5.0  # never 0 before erasing
    out = random_erasing(x, 1.0, np.random.default_rng(0))
    erased = out == 0
    frac = erased.float().mean(dim=(1, 2, 3))
    assert (frac > 0.015).all() and (frac < 0.34).all()
    assert (erased.all(dim=1) == erased.any(dim=1)).all()  # the same pixels in every channel
    torch.testing.assert_close(random_erasing(x, 0.0, np.random.default_rng(0)), x)


def test_color_distortion_stays_in_range_and_p0_is_identity():
    x = _images(8).float() / 255
    out = color_distortion(x, ColorDistortion(0.4, 0.4, 0.4), np.random.default_rng(0))
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    torch.testing.assert_close(color_distortion(x, ColorDistortion(p=0.0), np.random.default_rng(0)), x)


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mix_batch_gives_soft_labels_consistent_with_the_images(mixup, cutmix):
    aug = Augment(mixup_alpha=mixup, cutmix_alpha=cutmix, num_classes=5)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    labels = torch.tensor([0, 1, 2, 3])
    out, soft = mix_batch(x, labels, aug, np.random.default_rng(3))
    assert soft.shape == (4, 5)
    torch.testing.assert_close(soft.sum(1), torch.ones(4))
    # image i mixes itself (value i) with image i-1: its mean is the label-weighted mean of the two values
    lam = soft[1, 1]
    torch.testing.assert_close(out[1].mean(), lam * 1 + (1 - lam) * 0)


def test_augment_validates_its_fields():
    with pytest.raises(ValueError, match="auto_augment"):
        Augment(auto_augment="cifar10")
    with pytest.raises(ValueError, match="random_erasing"):
        Augment(random_erasing=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        Augment(mixup_alpha=0.2)
    with pytest.raises(ValueError, match="brightness"):
        ColorDistortion(brightness=-1)
    recipe = Augment.recipe(num_classes=10)
    assert recipe.auto_augment == "imagenet" and recipe.random_erasing == 0.2 and not recipe.mixes


def test_batch_transform_normalizes_and_is_pure():
    x = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    t = BatchTransform(resolution=FixedResolution(8), seed=0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    out, labels = t(x, torch.tensor([1, 2]), epoch=0, step=0)
    expected = torch.tensor([(128 / 255 - 0.5) / s for s in (0.25, 0.5, 1.0)])
    torch.testing.assert_close(out[0, :, 0, 0], expected)
    assert out.is_contiguous(memory_format=torch.channels_last) and labels.tolist() == [1, 2]

    aug = BatchTransform(
        resolution=ElasticResolution([16, 24]), seed=5, augment=Augment.recipe(num_classes=4, mixup_alpha=0.2)
    )
    x = _images(8)
    y = torch.arange(8) % 4
    a = aug(x, y, epoch=1, step=3)
    b = aug(x, y, epoch=1, step=3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a[0].shape[-1] == ElasticResolution([16, 24]).at(5, 1, 3) and a[1].shape == (8, 4)
    c = aug(x, y, epoch=1, step=4)
    assert c[0].shape != a[0].shape or not torch.equal(c[0], a[0])
