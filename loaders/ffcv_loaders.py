"""Drop-in FFCV loaders over a .beton file, as in ffcv-imagenet's ``train_imagenet.py``.

The pipelines are ffcv-imagenet's — ``image``: decode with a (random-resized | centre) crop, horizontal flip,
``ToTensor``, ``ToDevice``, ``ToTorchImage`` (channels_last); ``label``: ``IntDecoder``, ``ToTensor``, ``Squeeze``,
``ToDevice`` — with the decoder replaced by :class:`deps_loaders._ffcv_ops.CropResizeDecoder`, whose crop boxes and
flips are pure functions of (seed, epoch, sample index), and normalization (plus the optional augmentations and the
elastic resize) done on the device with torch ops by :class:`deps_loaders.augment.BatchTransform`.

FFCV 1.0.2 papercuts handled here: ``ToDevice`` is given a ``torch.device`` (a string fails inside FFCV's ``State``);
custom traversal orders are rejected by ``Loader`` (``isinstance`` of a class) so the order and the distributed
sharding are computed here (:mod:`deps_loaders.orders`) and FFCV only runs the pipeline; ``Squeeze()`` without a
dimension turns a last batch of one sample into a 0-d label tensor, so dimension 1 is named; ``Loader`` changes
``torch.set_num_threads``, which is restored; the epoch thread is ours (:mod:`deps_loaders._epoch`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import torch
from deps_loaders._ffcv import ffcv, keep_torch_threads
from deps_loaders.augment import IMAGENET_MEAN, IMAGENET_STD, Augment
from deps_loaders.base import EpochIterator, ImageLoader, LoaderOptions, default_num_workers, rank_and_world
from deps_loaders.beton import BetonError, BetonInfo, inspect_beton
from deps_loaders.crops import PARAM_COLUMNS, STATUS
from deps_loaders.orders import HoldOut
from deps_loaders.resolution import Resolution

__all__ = ["FFCVImageLoader", "train_loader", "val_loader"]


class FFCVImageLoader(ImageLoader):
    """An :class:`~deps_loaders.base.ImageLoader` over a .beton file (build it with :func:`train_loader` /
    :func:`val_loader`)."""

    def __init__(self, path: str | os.PathLike, options: LoaderOptions, *, os_cache: bool = True):
        threads = _max_threads()
        if not 1 <= options.num_workers <= threads:
            raise ValueError(f"num_workers: {options.num_workers!r} must be in [1, {threads}] (numba's thread limit)")
        info = inspect_beton(path)
        if options.num_classes is not None:
            info.check_labels(options.num_classes)
        super().__init__(options, info.num_samples)
        self.info: BetonInfo = info
        self.path = info.path
        ops = _ops()
        loader_mod, fields, transforms = ffcv("loader"), ffcv("fields.decoders"), ffcv("transforms")
        device = options.device
        to_device = [transforms.ToDevice(device, non_blocking=True)] if device.type == "cuda" else []
        self._decoder = ops.CropResizeDecoder(options.resolution.decode_size(0))
        pipelines = {
            "image": [self._decoder, transforms.ToTensor(), *to_device, transforms.ToTorchImage(channels_last=True)],
            "label": [fields.IntDecoder(), transforms.ToTensor(), transforms.Squeeze(1), *to_device],
        }
        order = loader_mod.OrderOption.QUASI_RANDOM if options.order == "quasi_random" else None
        with keep_torch_threads():
            self._ffcv = loader_mod.Loader(
                str(info.path),
                batch_size=options.batch_size,
                num_workers=options.num_workers,
                os_cache=os_cache,
                order=order or loader_mod.OrderOption.SEQUENTIAL,
                distributed=False,
                seed=options.seed,
                pipelines=pipelines,
                drop_last=options.drop_last,
                batches_ahead=options.batches_ahead,
            )
        self._decoder_nodes = [node.id for node in self._ffcv.graph.operation_to_node[self._decoder]]

    def _order(self, epoch: int) -> np.ndarray:
        if self.options.order == "quasi_random":
            # FFCV's page-aware shuffle (seeded by seed and epoch) for datasets read from disk without the OS cache
            order = np.asarray(self._ffcv.traversal_order.sample_order(epoch), dtype=np.uint64)
            return order if self._subset is None else order[np.isin(order, self._subset)]
        return super()._order(epoch)

    def _run(self, epoch: int, batches: Sequence[np.ndarray], start_step: int) -> EpochIterator:
        self._decoder.output_size = self.options.resolution.decode_size(epoch)  # between epochs only
        params, offsets = self._epoch_params(epoch, batches)
        return _runner_cls()(
            self._ffcv,
            [np.asarray(b, dtype=np.uint64) for b in batches],
            prepare=functools.partial(self._prepare, params, offsets),
            check=self._check,
            finish=functools.partial(self._finish_batch, epoch, start_step),
            num_threads=self.options.num_workers,
            batches_ahead=self.options.batches_ahead,
        )

    def _params(self, buffers: dict, slot: int, count: int) -> list[np.ndarray]:
        """The decoder's per-sample parameter rows of a slot (one array per pipeline using the decoder)."""
        return [buffers[node][2][slot][:count] for node in self._decoder_nodes]

    def _epoch_params(self, epoch: int, batches: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Crop boxes and flips of every sample of the epoch, ``(n, 6)``, and each batch's first row.

        Computed here, on the consumer's thread before the epoch starts (about 2 µs per sample, in chunks to bound
        the temporaries), so the loader thread only copies rows: computed per batch, they kept one of the decoding
        threads idle for ~0.5 ms per batch.
        """
        offsets = np.cumsum([0] + [len(b) for b in batches])
        indices = np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, np.int64)
        params = np.zeros((len(indices), PARAM_COLUMNS), np.int64)
        for start in range(0, len(indices), 1 << 16):
            ix = indices[start : start + (1 << 16)]
            boxes, flip = self.options.boxes(self.info.heights[ix], self.info.widths[ix], epoch, ix)
            params[start : start + len(ix), :4] = boxes
            params[start : start + len(ix), 4] = flip
        return params, offsets

    def _prepare(self, params: np.ndarray, offsets: np.ndarray, slot: int, b: int, indices: np.ndarray, buffers: dict):
        # runs on the loader thread: only a copy of precomputed rows
        rows = params[offsets[b] : offsets[b + 1]]
        for buffer in self._params(buffers, slot, len(indices)):
            buffer[:] = rows

    def _check(self, slot: int, indices: np.ndarray, buffers: dict) -> None:
        for params in self._params(buffers, slot, len(indices)):
            bad = params[:, STATUS] != 0
            if bad.any():
                raise BetonError(
                    f"{self.path}: libjpeg-turbo could not decode sample(s) {indices[bad][:8].tolist()} (corrupt file?)"
                )

    def _finish_batch(self, epoch: int, start_step: int, result: tuple, b: int):
        images, labels = result
        return self._finish(images, labels, epoch, start_step + b)


@functools.cache
def _ops():
    ffcv()  # a clear error if FFCV cannot be imported
    with keep_torch_threads():
        from deps_loaders import _ffcv_ops

    return _ffcv_ops


def _max_threads() -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS


@functools.cache
def _runner_cls():
    from deps_loaders._epoch import EpochRunner

    EpochIterator.register(EpochRunner)
    return EpochRunner


def train_loader(
    path: str | os.PathLike,
    batch_size: int,
    *,
    resolution: int | Sequence[int] | Resolution = 224,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int | None = None,
    order: str = "random",
    os_cache: bool = True,
    drop_last: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    augment: Augment | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
    batches_ahead: int = 3,
    holdout: HoldOut | None = None,
) -> FFCVImageLoader:
    """FFCV training loader over the ``image``/``label`` .beton at ``path`` (ffcv-imagenet's train pipeline).

    Yields ``(images, labels)`` on ``device``: images ``(B, 3, R, R)`` ``dtype``, normalized with ``mean``/``std``
    (on [0, 1]), channels_last; labels ``(B,)`` int64, or ``(B, num_classes)`` soft targets when ``augment`` mixes.

    - ``resolution``: an int, a list of sizes (elastic: one per batch, a pure function of (seed, epoch, step), decoded
      at the largest and resized on the device), or a :class:`~deps_loaders.resolution.Resolution` such as
      :class:`~deps_loaders.resolution.ProgressiveResolution` (decoder size set per epoch).
    - ``seed``: crops and flips are pure functions of (seed, epoch, sample index), the order of (seed, epoch), the
      augmentations and elastic sizes of (seed, epoch, step): two runs, and a resumed run, yield identical batches.
    - ``distributed``: shard each epoch's order over ``world_size`` ranks (default: the process group's) without
      overlap; all ranks use the same ``seed``.
    - ``order``: ``"random"`` or ``"quasi_random"`` (FFCV's page-aware order for ``os_cache=False``; not distributed).
    - ``os_cache``: read through the OS page cache (memory-mapped, shared by the processes of a node) instead of
      FFCV's per-process page cache.
    - ``num_workers``: decoding threads, at least 1 (default: the cores available to this process; FFCV has no inline
      mode like the torchvision fallback's 0).
    - ``num_classes``: if given, every label must lie in [0, num_classes) (checked when the loader is built).
    - ``holdout``: a :class:`~deps_loaders.HoldOut` — visit all samples but its held-out ones (``part="rest"``, for
      training) or only those (``part="held"``, e.g. to search on images the supernet never trained on).
    """
    r, w = rank_and_world(distributed, rank, world_size)
    options = LoaderOptions(
        batch_size=batch_size,
        train=True,
        resolution=resolution,
        device=device,
        seed=seed,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        order=order,
        drop_last=drop_last,
        rank=r,
        world_size=w,
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
    return FFCVImageLoader(path, options, os_cache=os_cache)


def val_loader(
    path: str | os.PathLike,
    batch_size: int,
    *,
    resolution: int | Resolution = 224,
    crop_ratio: float = 224 / 256,
    device: str | torch.device = "cpu",
    distributed: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int | None = None,
    os_cache: bool = True,
    drop_last: bool = False,
    num_classes: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
    batches_ahead: int = 3,
    holdout: HoldOut | None = None,
) -> FFCVImageLoader:
    """FFCV evaluation loader: torchvision's ``Resize(R / crop_ratio)`` + ``CenterCrop(R)`` in one decode, file order.

    Yields ``(images, labels)`` as :func:`train_loader` without augmentation. With ``distributed`` each rank gets
    every ``world_size``-th sample (no padding, no overlap; shard sizes differ by at most one). ``holdout``: as for
    :func:`train_loader` (e.g. centre crops of the held-out part of a training file).
    """
    r, w = rank_and_world(distributed, rank, world_size)
    options = LoaderOptions(
        batch_size=batch_size,
        train=False,
        resolution=resolution,
        device=device,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        order="sequential",
        drop_last=drop_last,
        rank=r,
        world_size=w,
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
    return FFCVImageLoader(path, options, os_cache=os_cache)
