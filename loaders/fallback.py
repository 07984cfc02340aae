"""The torchvision fallback: the FFCV loaders' interface and semantics over an ImageFolder, without FFCV.

The classic pipeline (torchvision ``ImageFolder`` + ``DataLoader`` worker processes; PIL decode, ``resized_crop`` with
antialiasing, ``horizontal_flip``, ``pil_to_tensor``), with the same crop boxes, flips, order, sharding and
on-device transform as :mod:`deps_loaders.ffcv_loaders` — both take them from :mod:`deps_loaders.crops`,
:mod:`deps_loaders.orders` and :class:`deps_loaders.augment.BatchTransform` — so for the same images and seed the two
loaders yield the same labels in the same order and the same crops up to the resize filter (PIL's antialiased
bilinear here, OpenCV's INTER_AREA in FFCV) and JPEG decoder. It serves users without FFCV and the benchmark.

Each epoch's batches are handed to the ``DataLoader`` as keys ``(epoch, index, size)``: a worker computes the crop of
a sample from them alone, so nothing is shared with the workers and persistent workers need no per-epoch state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from deps_loaders.augment import IMAGENET_MEAN, IMAGENET_STD, Augment
from deps_loaders.base import EpochIterator, ImageLoader, LoaderOptions, default_num_workers, rank_and_world
from deps_loaders.orders import HoldOut
from deps_loaders.resolution import Resolution
from deps_loaders.writer import image_folder_samples
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["TorchvisionImageLoader", "torchvision_train_loader", "torchvision_val_loader"]


class _Folder(Dataset):
    """``dataset[(epoch, index, size)]`` → the cropped, resized, flipped uint8 image and its label."""

    def __init__(self, samples: list[tuple[str, int]], options: LoaderOptions):
        self.samples, self.options = samples, options

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        """``(H, W, 3)`` uint8: collated batches are then NHWC, a channels_last NCHW view without a copy."""
        import torchvision.transforms.v2.functional as TF  # on first use (see deps_loaders.augment)
        from PIL import Image

        epoch, index, size = key
        path, label = self.samples[index]
        with Image.open(path) as im:
            image = im.convert("RGB")
        boxes, flips = self.options.boxes(np.array([image.height]), np.array([image.width]), epoch, np.array([index]))
        top, left, height, width = (int(v) for v in boxes[0])
        image = TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
        if flips[0]:
            image = TF.horizontal_flip(image)
        return torch.from_numpy(np.asarray(image).copy()), label


class _EpochBatches(Sampler):
    """The batch sampler of the ``DataLoader``; the loader replaces ``batches`` before each epoch's ``iter``."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Epoch(EpochIterator):
    def __init__(self, it: Iterator, loader: TorchvisionImageLoader, epoch: int, start_step: int, length: int):
        self._it, self._loader, self._epoch, self._start, self._length = it, loader, epoch, start_step, length
        self._step = 0

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            raise StopIteration
        try:
            images, labels = next(self._it)
        except StopIteration:
            self.close()
            raise
        device = self._loader.options.device
        images = images.permute(0, 3, 1, 2).to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        out = self._loader._finish(images, labels, self._epoch, self._start + self._step)
        self._step += 1
        return out

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        # persistent workers stay for the next epoch; the DataLoader's iterator drops what is still in flight
        self._it = None


class TorchvisionImageLoader(ImageLoader):
    """An :class:`~deps_loaders.base.ImageLoader` over an ImageFolder tree with ``DataLoader`` worker processes."""

    def __init__(self, root: str | os.PathLike, options: LoaderOptions, *, classes: Sequence[str] | None = None):
        samples, self.classes = image_folder_samples(root, classes)
        if options.num_classes is not None and len(self.classes) > options.num_classes:
            raise ValueError(f"num_classes: {root} has {len(self.classes)} classes, more than {options.num_classes}")
        super().__init__(options, len(samples))
        self.root = root
        self._batches = _EpochBatches()
        workers = options.num_workers
        self._loader = DataLoader(
            _Folder(samples, options),
            batch_sampler=self._batches,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=options.device.type == "cuda",
            prefetch_factor=options.batches_ahead if workers > 0 else None,
        )

    def _run(self, epoch: int, batches: Sequence[np.ndarray], start_step: int) -> EpochIterator:
        size = self.options.resolution.decode_size(epoch)
        self._batches.batches = [[(epoch, int(i), size) for i in batch] for batch in batches]
        return _Epoch(iter(self._loader), self, epoch, start_step, len(batches))


def _options(train: bool, distributed: bool, rank: int | None, world_size: int | None, **kw: Any) -> LoaderOptions:
    r, w = rank_and_world(distributed, rank, world_size)
    return LoaderOptions(train=train, rank=r, world_size=w, **kw)


def torchvision_train_loader(
    root: str | os.PathLike,
    batch_size: int,
    *,
    resolution: int | Sequence[int] | Resolution = 224,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int | None = None,
    drop_last: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    augment: Augment | None = None,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
    batches_ahead: int = 2,
    holdout: HoldOut | None = None,
) -> TorchvisionImageLoader:
    """:func:`deps_loaders.train_loader` over an ImageFolder ``root`` (``num_workers`` processes; 0 decodes inline).

    ``classes``: the expected class folder names (refuses a split with other classes). ``batches_ahead`` is the
    DataLoader's ``prefetch_factor``.
    """
    options = _options(
        True,
        distributed,
        rank,
        world_size,
        batch_size=batch_size,
        resolution=resolution,
        device=device,
        seed=seed,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        order="random",
        drop_last=drop_last,
        scale=scale,
        ratio=ratio,
        flip=flip,
        augment=augment,
        num_classes=num_classes if num_classes is not None else (augment.num_classes if augment else None),
        mean=mean,
        std=std,
        channels_last=channels_last,
        dtype=dtype,
        batches_ahead=batches_ahead,
        holdout=holdout,
    )
    return TorchvisionImageLoader(root, options, classes=classes)


def torchvision_val_loader(
    root: str | os.PathLike,
    batch_size: int,
    *,
    resolution: int | Resolution = 224,
    crop_ratio: float = 224 / 256,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int | None = None,
    drop_last: bool = False,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
    batches_ahead: int = 2,
    holdout: HoldOut | None = None,
) -> TorchvisionImageLoader:
    """:func:`deps_loaders.val_loader` over an ImageFolder ``root``."""
    options = _options(
        False,
        distributed,
        rank,
        world_size,
        batch_size=batch_size,
        resolution=resolution,
        device=device,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        order="sequential",
        drop_last=drop_last,
        flip=False,
        crop_ratio=crop_ratio,
        num_classes=num_classes,
        mean=mean,
        std=std,
        channels_last=channels_last,
        dtype=dtype,
        batches_ahead=batches_ahead,
        holdout=holdout,
    )
    return TorchvisionImageLoader(root, options, classes=classes)
