"""The options every deps loader takes, validated once, and what the FFCV and torchvision loaders share.

Defaults follow ffcv-imagenet's ``train_imagenet.py`` (RandomResizedCrop decode with torchvision's scale (0.08, 1)
and ratio (3/4, 4/3), horizontal flip, channels_last, ImageNet normalization; centre crop at ratio 224/256 and
sequential order for validation; ``drop_last`` for training only).
"""

from __future__ import annotations

import abc
import os
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from deps_loaders.augment import IMAGENET_MEAN, IMAGENET_STD, Augment, BatchTransform
from deps_loaders.crops import center_crop_boxes, flips, random_resized_crop_boxes
from deps_loaders.orders import ORDERS, HoldOut, batches_of, epoch_order, num_batches, shard
from deps_loaders.resolution import Resolution, as_resolution

__all__ = ["EpochIterator", "ImageLoader", "LoaderOptions", "default_num_workers", "rank_and_world"]


def default_num_workers() -> int:
    """One decoding thread per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _positive(_, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name}: {value!r} must be a positive integer")


def _non_negative(_, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name}: {value!r} must be a non-negative integer")


def _interval(_, attribute, value) -> None:
    ok = isinstance(value, tuple) and len(value) == 2 and 0 < value[0] <= value[1]
    if not ok or (attribute.name == "scale" and value[1] > 1):
        bound = "0 < lo <= hi <= 1" if attribute.name == "scale" else "0 < lo <= hi"
        raise ValueError(f"{attribute.name}: {value!r} must be a pair (lo, hi) with {bound}")


def _three(_, attribute, value) -> None:
    if len(value) != 3 or (attribute.name == "std" and min(value) <= 0):
        raise ValueError(f"{attribute.name}: {value!r} must be 3 per-channel values (std > 0)")


def _device(value: str | torch.device) -> torch.device:
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: invalid device {value!r} ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {value!r} requested but CUDA is not available")
    return device


@attrs.frozen
class LoaderOptions:
    """Validated options of one loader; see :func:`deps_loaders.train_loader` for their meaning."""

    batch_size: int = attrs.field(validator=_positive)
    train: bool
    resolution: Resolution = attrs.field(converter=as_resolution)
    device: torch.device = attrs.field(converter=_device)
    seed: int = 0
    num_workers: int = attrs.field(factory=default_num_workers, validator=_non_negative)
    order: str = "random"
    drop_last: bool = True
    rank: int = 0
    world_size: int = 1
    scale: tuple[float, float] = attrs.field(default=(0.08, 1.0), converter=tuple, validator=_interval)
    ratio: tuple[float, float] = attrs.field(default=(3 / 4, 4 / 3), converter=tuple, validator=_interval)
    flip: bool = True
    crop_ratio: float = 224 / 256
    augment: Augment | None = None
    mean: tuple[float, ...] = attrs.field(default=IMAGENET_MEAN, converter=tuple, validator=_three)
    std: tuple[float, ...] = attrs.field(default=IMAGENET_STD, converter=tuple, validator=_three)
    num_classes: int | None = None
    channels_last: bool = True
    dtype: torch.dtype = torch.float32
    batches_ahead: int = attrs.field(default=3, validator=_positive)
    holdout: HoldOut | None = None

    def __attrs_post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed: {self.seed!r} must be an integer in [0, 2**63)")
        if self.order not in ORDERS:
            raise ValueError(f"order: {self.order!r} is not one of {ORDERS}")
        if self.order == "quasi_random" and self.world_size > 1:
            raise ValueError("order: 'quasi_random' is not available with distributed loading (FFCV); use 'random'")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: {self.rank!r} must be in [0, world_size={self.world_size})")
        if self.holdout is not None and not isinstance(self.holdout, HoldOut):
            raise ValueError(f"holdout: {self.holdout!r} must be a deps_loaders.HoldOut or None")
        if not 0 < self.crop_ratio <= 1:
            raise ValueError(f"crop_ratio: {self.crop_ratio!r} must be in (0, 1]")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or self.num_classes < 1):
            raise ValueError(f"num_classes: {self.num_classes!r} must be a positive integer")
        if not (self.dtype.is_floating_point or self.dtype == torch.uint8):
            raise ValueError(f"dtype: {self.dtype} is neither a floating-point dtype nor torch.uint8 (unnormalized)")
        aug = self.augment
        if self.dtype == torch.uint8 and aug is not None and (aug.color or aug.random_erasing or aug.mixes):
            raise ValueError(
                "dtype: torch.uint8 output allows only AutoAugment (colour, erasing and mixing need floats)"
            )

    def transform(self) -> BatchTransform:
        return BatchTransform(
            resolution=self.resolution,
            seed=self.seed,
            augment=self.augment if self.train else None,
            mean=self.mean,
            std=self.std,
            dtype=self.dtype,
            channels_last=self.channels_last,
        )

    def boxes(
        self, heights: np.ndarray, widths: np.ndarray, epoch: int, indices: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crop boxes ``(n, 4)`` and flips ``(n,)`` of the given samples in ``epoch``."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.train:
            boxes = random_resized_crop_boxes(
                heights, widths, seed=self.seed, epoch=epoch, indices=indices, scale=self.scale, ratio=self.ratio
            )
            flip = flips(self.seed, epoch, indices) if self.flip else np.zeros(len(indices), dtype=bool)
            return boxes, flip
        size = self.resolution.decode_size(epoch)
        return center_crop_boxes(heights, widths, size=size, ratio=self.crop_ratio), np.zeros(len(indices), bool)


def rank_and_world(distributed: bool, rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: explicit values, else the default process group's when ``distributed``."""
    if not distributed:
        if (rank not in (None, 0)) or (world_size not in (None, 1)):
            raise ValueError(f"rank/world_size: {rank}/{world_size} given but distributed=False")
        return 0, 1
    if rank is None or world_size is None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ValueError(
                "distributed: True needs an initialised torch.distributed process group or explicit rank= and "
                "world_size="
            )
        rank = torch.distributed.get_rank() if rank is None else rank
        world_size = torch.distributed.get_world_size() if world_size is None else world_size
    for name, v in (("rank", rank), ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name}: {v!r} must be an integer")
    if world_size < 1:
        raise ValueError(f"world_size: {world_size!r} must be >= 1")
    return rank, world_size


class EpochIterator(abc.ABC):
    """What iterating a loader returns: ``(images, labels)`` batches of one epoch; ``close()`` ends it early."""

    @abc.abstractmethod
    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __iter__(self) -> EpochIterator:
        return self

    def __enter__(self) -> EpochIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageLoader(abc.ABC):
    """A drop-in loader: ``for images, labels in loader`` runs the next epoch, ``len(loader)`` counts its batches.

    Iterating runs epoch 0, 1, 2, …; ``set_epoch(e)`` (e.g. after resuming) chooses the next one, and
    ``epoch(e, start_step=s)`` runs epoch ``e`` from batch ``s`` on, yielding exactly the batches an uninterrupted
    run would have yielded there. One epoch runs at a time: starting one closes the previous unfinished one.
    ``dataset_size`` counts the samples in the file, ``num_samples`` those this loader visits (fewer with a
    :class:`~deps_loaders.orders.HoldOut`).
    """

    def __init__(self, options: LoaderOptions, num_samples: int):
        self.options = options
        self.dataset_size = num_samples
        # the samples this loader visits: all, or one part of a hold-out split
        self._subset = options.holdout.indices(num_samples) if options.holdout is not None else None
        self.num_samples = num_samples if self._subset is None else len(self._subset)
        self._next_epoch = 0
        self._active: weakref.ref | None = None
        self._transform = options.transform()

    def __len__(self) -> int:
        o = self.options
        return num_batches(self.num_samples, o.batch_size, o.rank, o.world_size, o.drop_last)

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next ``iter(loader)`` runs."""
        if epoch < 0:
            raise ValueError(f"epoch: {epoch!r} must be >= 0")
        self._next_epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._next_epoch
        self._next_epoch += 1
        return self.epoch(epoch)

    def indices(self, epoch: int) -> np.ndarray:
        """The sample indices this rank visits in ``epoch``, in order (complete batches only with ``drop_last``)."""
        o = self.options
        mine = shard(self._order(epoch), o.rank, o.world_size, o.drop_last)
        return np.concatenate(batches_of(mine, o.batch_size, o.drop_last) or [mine[:0]])

    def epoch(self, epoch: int, start_step: int = 0) -> EpochIterator:
        """The batches of ``epoch`` from ``start_step`` on."""
        if epoch < 0 or start_step < 0:
            raise ValueError(f"epoch/start_step: {epoch}/{start_step} must be >= 0")
        previous = self._active() if self._active is not None else None
        if previous is not None:
            previous.close()
        o = self.options
        mine = shard(self._order(epoch), o.rank, o.world_size, o.drop_last)
        batches = batches_of(mine, o.batch_size, o.drop_last)[start_step:]
        it = self._run(epoch, batches, start_step)
        self._active = weakref.ref(it)
        return it

    def _order(self, epoch: int) -> np.ndarray:
        order = epoch_order(self.num_samples, self.options.order, self.options.seed, epoch)
        return order if self._subset is None else self._subset[order.astype(np.int64)]

    @abc.abstractmethod
    def _run(self, epoch: int, batches: Sequence[np.ndarray], start_step: int) -> EpochIterator: ...

    def _finish(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int) -> Any:
        return self._transform(images, labels, epoch, step)
