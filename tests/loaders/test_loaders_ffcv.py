"""The FFCV loaders on real .beton files (semantics, reproducibility, resolution, sharding, lifetime); the fallback."""

from __future__ import annotations

import gc
import io

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from deps_loaders import (
    Augment,
    ElasticResolution,
    HoldOut,
    ProgressiveResolution,
    torchvision_train_loader,
    torchvision_val_loader,
    train_loader,
    val_loader,
)
from deps_loaders.crops import resize_size
from deps_loaders.writer import image_folder_samples
from PIL import Image

UNNORMALIZED = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)  # outputs in [0, 255]


def _collect(iterable):
    return [(x.clone(), y.clone()) for x, y in iterable]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)


def _stored_images(beton):
    """The images of a .beton as PIL images, decoded from the JPEG bytes FFCV stored."""
    from ffcv.reader import Reader

    reader = Reader(str(beton))
    ptrs, sizes = reader.alloc_table["ptr"], reader.alloc_table["size"]
    data = np.memmap(beton, np.uint8, mode="r")
    images = []
    for ptr in reader.metadata["f0"]["data_ptr"]:
        size = int(sizes[np.flatnonzero(ptrs == ptr)[0]])
        images.append(Image.open(io.BytesIO(bytes(data[ptr : ptr + size]))).convert("RGB"))
    return images


# FFCV's decoders wrap libffcv's ctypes functions in a numba dispatcher per loader; numba 0.68's finalizer of such
# duplicates raises KeyError when one is collected (our decoder calls the ctypes functions directly; FFCV's does not)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_val_output_is_torchvisions_center_crop_of_the_decoded_image(jpeg_folder, folder_beton):
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor, ToTorchImage

    size = 40
    ours = torch.cat([x for x, _ in val_loader(folder_beton, 16, resolution=size, num_workers=1, **UNNORMALIZED)])
    assert ours.shape == (64, 3, size, size) and ours.dtype == torch.float32
    reference = T.Compose([T.Resize(resize_size(size, 224 / 256), antialias=True), T.CenterCrop(size)])
    decoded = torch.stack([T.functional.pil_to_tensor(reference(im)) for im in _stored_images(folder_beton)]).float()
    samples, _ = image_folder_samples(jpeg_folder)
    original = torch.stack([T.functional.pil_to_tensor(reference(Image.open(p).convert("RGB"))) for p, _ in samples])
    # OpenCV's INTER_AREA (FFCV's resize) vs PIL's antialiased bilinear on small, textured images: ~2.5 levels
    error = (ours - decoded).abs().mean()
    assert error < 3.5, error
    assert (ours - original.float()).abs().mean() < 4.0  # plus the writer's JPEG re-encoding (q95)
    # FFCV's own centre crop truncates the crop side and floors the offsets: further from torchvision's semantics
    ffcv_pipeline = {
        "image": [CenterCropRGBImageDecoder((size, size), 224 / 256), ToTensor(), ToTorchImage()],
        "label": [IntDecoder(), ToTensor()],
    }
    ffcv_loader = Loader(str(folder_beton), 16, num_workers=1, order=OrderOption.SEQUENTIAL, pipelines=ffcv_pipeline)
    theirs = torch.cat([x for x, _ in ffcv_loader]).float()
    assert error < (theirs - decoded).abs().mean()
    del ffcv_loader, ffcv_pipeline
    gc.collect()  # the finalizer noise above belongs to this test


def test_train_batches_are_reproducible_and_resumable(raw_beton):
    kw = dict(resolution=24, seed=11, **UNNORMALIZED)
    a = train_loader(raw_beton, 32, num_workers=1, **kw)
    b = train_loader(raw_beton, 32, num_workers=2, **kw)  # thread count and scheduling do not matter
    epochs_a = [_collect(a) for _ in range(2)]
    epochs_b = [_collect(b) for _ in range(2)]
    for ea, eb in zip(epochs_a, epochs_b):
        _assert_same_batches(ea, eb)
    assert not torch.equal(epochs_a[0][0][1], epochs_a[1][0][1])  # a new order each epoch
    other_seed = next(iter(train_loader(raw_beton, 32, num_workers=1, **kw | {"seed": 12})))
    assert not torch.equal(epochs_a[0][0][0], other_seed[0])
    # a resumed run replays exactly: epoch 1 from step 2, and set_epoch
    _assert_same_batches(_collect(a.epoch(1, start_step=2)), epochs_a[1][2:])
    b.set_epoch(1)
    _assert_same_batches(_collect(b), epochs_a[1])


def test_train_images_are_crops_and_flips_of_the_stored_images(raw_beton, square_arrays):
    images, labels = square_arrays
    loader = train_loader(raw_beton, 50, resolution=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), num_workers=1,
                          **UNNORMALIZED)  # fmt: skip
    order = loader.indices(0)
    x = torch.cat([x for x, _ in loader]).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    stored = images[order.astype(np.int64)]
    flipped = (x == stored[:, :, ::-1]).all(axis=(1, 2, 3))
    unflipped = (x == stored).all(axis=(1, 2, 3))
    assert (flipped | unflipped).all() and 0.3 < flipped.mean() < 0.7


def test_uint8_output_is_unnormalized_pixels(raw_beton, square_arrays):
    images, _ = square_arrays
    loader = train_loader(raw_beton, 20, resolution=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False,
                          dtype=torch.uint8, num_workers=1)  # fmt: skip
    x = torch.cat([x for x, _ in loader])  # 10 batches held at once: more than the loader's 5 buffer slots
    assert x.dtype == torch.uint8 and x.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), images[loader.indices(0).astype(np.int64)])
    with pytest.raises(ValueError, match="dtype"):
        train_loader(raw_beton, 50, dtype=torch.uint8, augment=Augment(random_erasing=0.2))
    with pytest.raises(ValueError, match="dtype"):
        train_loader(raw_beton, 50, dtype=torch.int32)


def test_len_counts_batches_and_labels_follow_the_order(raw_beton, square_arrays):
    _, labels = square_arrays
    train = train_loader(raw_beton, 64, resolution=32, num_workers=1)
    batches = _collect(train)
    assert len(train) == len(batches) == 3 and all(len(y) == 64 for _, y in batches)  # drop_last
    np.testing.assert_array_equal(torch.cat([y for _, y in batches]).numpy(), labels[train.indices(0).astype(int)])
    val = val_loader(raw_beton, 64, resolution=32, num_workers=1)
    sizes = [len(y) for _, y in val]
    assert len(val) == len(sizes) == 4 and sizes == [64, 64, 64, 8]
    one = val_loader(raw_beton, 199, resolution=32, num_workers=1)
    assert [tuple(y.shape) for _, y in one] == [(199,), (1,)]  # a last batch of one sample keeps its batch dim


def test_elastic_resolution_gives_the_requested_sizes_identical_across_ranks(raw_beton):
    res = ElasticResolution([16, 24, 32])
    shapes = []
    for rank in (0, 1):
        loader = train_loader(raw_beton, 16, resolution=res, seed=3, distributed=True, rank=rank, world_size=2,
                              num_workers=1)  # fmt: skip
        shapes.append([tuple(x.shape[-2:]) for x, _ in loader])
    expected = [(res.at(3, 0, step),) * 2 for step in range(len(shapes[0]))]
    assert shapes[0] == shapes[1] == expected and {s[0] for s in expected} == {16, 24, 32}


def test_progressive_resolution_sets_the_decoder_size_per_epoch(raw_beton):
    res = ProgressiveResolution(min_res=16, max_res=32, start_ramp=0, end_ramp=2, step=8)
    loader = train_loader(raw_beton, 100, resolution=res, num_workers=1)
    assert [next(iter(loader))[0].shape[-1] for _ in range(3)] == [16, 24, 32]


def test_distributed_shards_do_not_overlap(raw_beton, square_arrays):
    _, labels = square_arrays
    seen = []
    for rank in range(3):
        loader = train_loader(raw_beton, 8, resolution=32, distributed=True, rank=rank, world_size=3, num_workers=1)
        ys = torch.cat([y for _, y in loader]).numpy()
        mine = loader.indices(0).astype(int)
        np.testing.assert_array_equal(ys, labels[mine])
        assert len(loader) == 8  # 200 // 3 = 66 samples per rank → 8 full batches
        seen.append(set(mine.tolist()))
    assert all(not (seen[i] & seen[j]) for i in range(3) for j in range(i + 1, 3))
    parts = [
        val_loader(raw_beton, 16, resolution=32, distributed=True, rank=r, world_size=3).indices(0) for r in range(3)
    ]
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))  # evaluation sees every sample exactly once
    with pytest.raises(ValueError, match="rank"):
        train_loader(raw_beton, 8, distributed=True, rank=3, world_size=3)
    with pytest.raises(ValueError, match="process group"):
        train_loader(raw_beton, 8, distributed=True)
    with pytest.raises(ValueError, match="quasi_random"):
        train_loader(raw_beton, 8, distributed=True, rank=0, world_size=2, order="quasi_random")


def test_quasi_random_order_without_os_cache(raw_beton):
    loader = train_loader(raw_beton, 20, resolution=32, order="quasi_random", os_cache=False, num_workers=1, seed=2)
    ys = [y for _, y in loader]
    assert len(ys) == 10 and sorted(loader.indices(0).tolist()) == list(range(200))


def test_holdout_split_is_a_seeded_partition():
    n = 200
    held = HoldOut(30, seed=5, part="held").indices(n)
    rest = HoldOut(30, seed=5).indices(n)
    assert len(held) == 30 and len(rest) == 170 and not set(held.tolist()) & set(rest.tolist())
    assert sorted(held.tolist() + rest.tolist()) == list(range(n))
    np.testing.assert_array_equal(held, HoldOut(30, seed=5, part="held").indices(n))  # a pure function
    assert not np.array_equal(held, HoldOut(30, seed=6, part="held").indices(n))
    assert held.tolist() != list(range(30))  # drawn, not the first samples of the file (they may be one class)
    with pytest.raises(ValueError, match="200 samples held out of a dataset of 200 leaves none to train on"):
        HoldOut(200).indices(n)
    for bad, match in (
        (dict(count=0), "count"),
        (dict(count=3, part="test"), "part"),
        (dict(count=3, seed=-1), "seed"),
    ):
        with pytest.raises(ValueError, match=match):
            HoldOut(**bad)
    with pytest.raises(ValueError, match="holdout"):
        train_loader("unused.beton", 8, holdout=30)


def test_loaders_visit_only_their_part_of_a_holdout(raw_beton, square_arrays):
    images, labels = square_arrays
    rest, held = HoldOut(30, seed=5), HoldOut(30, seed=5, part="held")
    kw = dict(resolution=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, dtype=torch.uint8, num_workers=1)
    train = train_loader(raw_beton, 16, holdout=rest, **kw)
    assert train.dataset_size == 200 and train.num_samples == 170 and len(train) == 170 // 16
    for epoch in range(2):  # each epoch a new order of the same 170 samples; the pixels are those samples'
        x, y = map(torch.cat, zip(*_collect(train.epoch(epoch))))
        order = train.indices(epoch).astype(np.int64)
        assert len(order) == 160 and set(order.tolist()) <= set(rest.indices(200).tolist())
        np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), images[order])
        np.testing.assert_array_equal(y.numpy(), labels[order])
    assert not np.array_equal(train.indices(0), train.indices(1))
    search = train_loader(raw_beton, 16, holdout=held, drop_last=False, **kw)
    x = torch.cat([x for x, _ in search])
    assert len(search) == 2 and sorted(search.indices(0).tolist()) == held.indices(200).tolist()
    np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), images[search.indices(0).astype(np.int64)])
    val = val_loader(raw_beton, 16, resolution=32, holdout=held, num_workers=1)
    assert val.indices(0).tolist() == held.indices(200).tolist()  # file order
    # ranks split the training part without overlap; FFCV's quasi-random order is filtered to it
    parts = [train_loader(raw_beton, 8, holdout=rest, distributed=True, rank=r, world_size=2, **kw) for r in (0, 1)]
    a, b = (set(p.indices(0).tolist()) for p in parts)
    assert not a & b and len(a) == len(b) == 80 and a | b <= set(rest.indices(200).tolist())
    quasi = train_loader(raw_beton, 10, holdout=rest, order="quasi_random", os_cache=False, num_workers=1)
    assert sorted(quasi.indices(0).tolist()) == rest.indices(200).tolist()
    with pytest.raises(ValueError, match="leaves none to train on"):
        train_loader(raw_beton, 8, holdout=HoldOut(250), num_workers=1)


def test_breaking_out_early_leaves_no_thread(raw_beton, epoch_threads):
    loader = train_loader(raw_beton, 8, resolution=32, num_workers=1, batches_ahead=2)
    for i, _ in enumerate(loader):
        if i == 1:
            break
    gc.collect()
    assert epoch_threads() == []
    it = iter(loader)
    next(it)
    assert len(epoch_threads()) == 1
    next(iter(loader))  # starting the next epoch closes the unfinished one
    del it
    gc.collect()
    assert epoch_threads() == []
    with loader.epoch(0) as epoch:
        next(epoch)
    assert epoch_threads() == []


def test_loaders_do_not_change_torch_threads_and_accept_a_device_string(raw_beton):
    before = torch.get_num_threads()
    loader = train_loader(raw_beton, 8, resolution=32, num_workers=2, device="cpu")
    next(iter(loader))
    assert torch.get_num_threads() == before
    for bad in (10_000, 0, -1):  # why: 0 was taken for the default (all cores) instead of being refused
        with pytest.raises(ValueError, match="num_workers"):
            train_loader(raw_beton, 8, num_workers=bad)
        with pytest.raises(ValueError, match="num_workers"):
            val_loader(raw_beton, 8, num_workers=bad)
    with pytest.raises(ValueError, match="device"):
        train_loader(raw_beton, 8, device="nonsense")


def test_on_device_augmentations_are_seeded_in_the_loader(raw_beton):
    aug = Augment.recipe(num_classes=10, mixup_alpha=0.2, cutmix_alpha=1.0)
    a = _collect(train_loader(raw_beton, 32, resolution=[24, 32], augment=aug, seed=4, num_workers=1))
    b = _collect(train_loader(raw_beton, 32, resolution=[24, 32], augment=aug, seed=4, num_workers=2))
    _assert_same_batches(a, b)
    x, y = a[0]
    assert y.shape == (32, 10) and torch.allclose(y.sum(1), torch.ones(32)) and x.dtype == torch.float32


# --- the torchvision fallback -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_fallback_and_ffcv_agree(jpeg_folder, folder_beton, train):
    size = 32
    if train:
        kw = dict(resolution=size, seed=9)
        ffcv = train_loader(folder_beton, 16, num_workers=1, **kw)
        tv = torchvision_train_loader(jpeg_folder, 16, num_workers=2, **kw)
    else:
        ffcv = val_loader(folder_beton, 16, resolution=size, num_workers=1)
        tv = torchvision_val_loader(jpeg_folder, 16, resolution=size, num_workers=0)
    a, b = _collect(ffcv), _collect(tv)
    assert len(a) == len(b) == len(ffcv) == len(tv) == 4
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == xb.shape == (16, 3, size, size) and xa.dtype == xb.dtype == torch.float32
        assert xa.is_contiguous(memory_format=torch.channels_last) and xb.is_contiguous(
            memory_format=torch.channels_last
        )
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)  # same label order
        # the same crop boxes and flips, up to JPEG re-encoding and the resize filter (normalized units: σ ≈ 0.23)
        assert (xa - xb).abs().mean() < 0.08
    means = [torch.cat([x for x, _ in batches]).mean(dim=(0, 2, 3)) for batches in (a, b)]
    torch.testing.assert_close(means[0], means[1], atol=0.03, rtol=0)


def test_fallback_is_reproducible_and_shards(jpeg_folder):
    kw = dict(resolution=24, seed=1, num_workers=0)
    _assert_same_batches(_collect(torchvision_train_loader(jpeg_folder, 8, **kw)),
                         _collect(torchvision_train_loader(jpeg_folder, 8, **kw)))  # fmt: skip
    parts = [torchvision_train_loader(jpeg_folder, 8, distributed=True, rank=r, world_size=2, **kw) for r in (0, 1)]
    assert not set(parts[0].indices(0).tolist()) & set(parts[1].indices(0).tolist())
    loader = torchvision_train_loader(jpeg_folder, 8, **kw)
    for i, _ in enumerate(loader):
        if i == 1:
            break
    assert len(list(loader)) == len(loader) == 8  # the next epoch runs in full after an early break
    rest = HoldOut(10, seed=2)
    held = torchvision_val_loader(
        jpeg_folder, 8, resolution=24, num_workers=0, holdout=HoldOut(10, seed=2, part="held")
    )
    train = torchvision_train_loader(jpeg_folder, 8, holdout=rest, **kw)
    assert len(train) == 54 // 8 and set(train.indices(0).tolist()) <= set(rest.indices(64).tolist())
    assert sum(len(y) for _, y in held) == 10 and held.indices(0).tolist() == rest.held(64).tolist()


@pytest.mark.gpu
def test_cuda_loader_matches_the_cpu_loader(raw_beton):
    """The CUDA path (FFCV's ToDevice on per-slot streams, our events) yields what the CPU path yields."""
    kw = dict(resolution=32, seed=2, num_workers=2, batches_ahead=2)
    cpu = _collect(train_loader(raw_beton, 16, device="cpu", **kw))
    gpu = [(x.cpu(), y.cpu()) for x, y in train_loader(raw_beton, 16, device="cuda", **kw)]
    assert len(cpu) == len(gpu) == 12
    for (a, ya), (b, yb) in zip(cpu, gpu):
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    aug = dict(kw, resolution=[24, 32], augment=Augment.recipe(num_classes=10))
    first = [(x.cpu(), y.cpu()) for x, y in train_loader(raw_beton, 16, device="cuda", **aug)]
    second = [(x.cpu(), y.cpu()) for x, y in train_loader(raw_beton, 16, device="cuda", **aug)]
    _assert_same_batches(first, second)
    assert first[0][0].shape[-1] == ElasticResolution([24, 32]).at(2, 0, 0)
