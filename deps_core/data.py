"""Loaders for a run, built from its :class:`~deps_core.config.DataConfig` with ``deps_loaders``.

- training: FFCV (``beton``, ``synthetic``) or torchvision (``imagefolder``), sharded across ranks, seeded crops;
  without the ``data.holdout`` images when set (kept for search, :func:`search_splits`);
- validation: centre crops, sharded across ranks (metrics are reduced);
- calibration (BN recalibration before evaluation): the first ``run.calib_images`` images of a seeded random order of
  the training images (held-out ones excluded) with training crops and no other augmentation, the same on every
  rank (OFA: 2,000 random training images in batches of 200).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from deps_core.config import ExperimentConfig
from deps_core.distributed import DistContext

__all__ = ["RunData", "build_data", "resolve_num_classes", "search_splits", "train_holdout"]


@attrs.frozen
class RunData:
    train: Any
    val: Any
    calib: Any
    num_classes: int
    train_path: str
    val_path: str


def _synthetic_paths(config: ExperimentConfig, ctx: DistContext) -> tuple[Path, Path]:
    from deps_loaders import SyntheticSpec, synthetic_beton

    d = config.data
    spec = SyntheticSpec(
        num_classes=d.synthetic_classes,
        resolution=d.synthetic_resolution,
        train_size=d.synthetic_train_size,
        val_size=d.synthetic_val_size,
    )
    paths = None
    if ctx.is_main:  # one process writes the cache; the others wait and then read it
        paths = (synthetic_beton("train", spec, progress=config.run.progress), synthetic_beton("val", spec))
    ctx.barrier()
    if paths is None:
        paths = (synthetic_beton("train", spec), synthetic_beton("val", spec))
    return paths


def resolve_num_classes(config: ExperimentConfig, train_path: str | Path) -> int:
    d = config.data
    if d.source == "synthetic":
        if d.num_classes not in (None, d.synthetic_classes):
            raise ValueError(f"data.num_classes={d.num_classes} but the synthetic dataset has {d.synthetic_classes}")
        return d.synthetic_classes
    if d.num_classes is not None:
        return d.num_classes
    if d.source == "beton":
        from deps_loaders import inspect_beton

        return inspect_beton(train_path).num_classes
    return len([p for p in Path(train_path).iterdir() if p.is_dir()])


def train_holdout(config: ExperimentConfig, part: str = "rest"):
    """``data.holdout`` as a :class:`deps_loaders.HoldOut` (``None`` when 0): ``"rest"`` trains, ``"held"`` searches."""
    import deps_loaders as L

    d = config.data
    return L.HoldOut(d.holdout, seed=d.holdout_seed, part=part) if d.holdout else None


def build_data(config: ExperimentConfig, ctx: DistContext) -> RunData:
    """Train, validation and calibration loaders for ``config`` on this rank."""
    import deps_loaders as L

    d, run = config.data, config.run
    if d.batch_size % (ctx.world_size * run.grad_accum):
        parts = f" × run.grad_accum={run.grad_accum} micro-batches" if run.grad_accum > 1 else ""
        raise ValueError(f"data.batch_size={d.batch_size} is not divisible by the {ctx.world_size} processes{parts}")
    if d.source == "synthetic":
        train_path, val_path = _synthetic_paths(config, ctx)
    else:
        train_path, val_path = Path(d.train), Path(d.val)
        for split, path in (("data.train", train_path), ("data.val", val_path)):
            if not path.exists():
                raise ValueError(f"{split}: {path} does not exist")
    num_classes = resolve_num_classes(config, train_path)
    mixes = d.mixup_alpha > 0 or d.cutmix_alpha > 0
    augment = None
    if d.auto_augment or d.color_distortion or d.random_erasing > 0 or mixes:
        augment = L.Augment(
            auto_augment=d.auto_augment,
            color=L.ColorDistortion() if d.color_distortion else None,
            random_erasing=d.random_erasing,
            mixup_alpha=d.mixup_alpha,
            cutmix_alpha=d.cutmix_alpha,
            num_classes=num_classes,
        )
    resolution = d.resolution[0] if len(d.resolution) == 1 else list(d.resolution)
    val_res = d.val_resolution or max(d.resolution)
    crop_ratio = 1.0 if d.source == "synthetic" else 224 / 256  # the synthetic images are already centred crops
    # on the CPU one decoding thread leaves the cores to the model (deps_core.runtime.cpu_threads)
    workers = d.num_workers or (1 if ctx.device.type == "cpu" else None)
    common = dict(device=ctx.device, num_workers=workers, num_classes=num_classes)
    dist = dict(distributed=ctx.distributed, rank=ctx.rank, world_size=ctx.world_size)
    per_rank = d.batch_size // ctx.world_size
    common["holdout"] = train_holdout(config)  # training and calibration never see the held-out images
    if d.source == "imagefolder":
        train = L.torchvision_train_loader(
            train_path, per_rank, resolution=resolution, seed=run.seed, scale=d.scale, augment=augment, **dist, **common
        )
        val = L.torchvision_val_loader(
            val_path, d.val_batch_size, resolution=val_res, **dist, **(common | {"holdout": None})
        )
        calib = L.torchvision_train_loader(
            train_path, run.calib_batch, resolution=val_res, seed=run.seed + 1, scale=d.scale, **common
        )
    else:
        train = L.train_loader(
            train_path, per_rank, resolution=resolution, seed=run.seed, scale=d.scale, augment=augment, **dist, **common
        )
        val = L.val_loader(
            val_path,
            d.val_batch_size,
            resolution=val_res,
            crop_ratio=crop_ratio,
            **dist,
            **(common | {"holdout": None}),
        )
        calib = L.train_loader(
            train_path, run.calib_batch, resolution=val_res, seed=run.seed + 1, scale=d.scale, drop_last=False, **common
        )
    return RunData(train, val, calib, num_classes, str(train_path), str(val_path))


def search_splits(config: ExperimentConfig, device, *, heldout_images: int):
    """``(calibration, held-out, num_classes)``: :class:`~deps_core.evaluate.CachedBatches` from the training set.

    Calibration: the first ``run.calib_images`` of the calibration loader's seeded order (training crops, as for
    every evaluation). Held-out: ``heldout_images`` images evaluated on the full centre square of each image, no flip
    (OFA likewise searches on a split of the training set and keeps the validation set for the final report):

    - with ``data.holdout`` > 0, images the run kept out of training (the ``"held"`` part of its
      :class:`deps_loaders.HoldOut`; at most ``data.holdout`` of them);
    - with ``data.holdout`` = 0, the next images of the calibration order (disjoint from the calibration images, but
      the supernet trained on them: the accuracies are optimistic; ``heldout_trained`` in the summary says so).
    """
    import deps_loaders as L

    from deps_core.evaluate import CachedBatches

    d, run = config.data, config.run
    if heldout_images < 1:
        raise ValueError(f"the held-out split needs at least one image; got {heldout_images}")
    if d.holdout and heldout_images > d.holdout:
        raise ValueError(
            f"{heldout_images} held-out images asked for, but the run held out data.holdout={d.holdout} training "
            f"images; ask for at most {d.holdout}"
        )
    ctx = DistContext(device=device)
    data = build_data(config, ctx)
    calib = CachedBatches.from_loader(data.calib.epoch(0), max_images=run.calib_images, batch_size=run.calib_batch)
    res = d.val_resolution or max(d.resolution)
    common = dict(
        resolution=res,
        device=device,
        seed=run.seed + 1,  # the calibration loader's order
        num_workers=d.num_workers or 1,
        num_classes=data.num_classes,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip=False,
        drop_last=False,
    )
    held = train_holdout(config, "held")
    if d.source == "imagefolder":
        loader = L.torchvision_train_loader(data.train_path, run.calib_batch, holdout=held, **common)
    else:
        loader = L.train_loader(data.train_path, run.calib_batch, holdout=held, **common)
    skip = -(-run.calib_images // run.calib_batch)  # whole batches, so no calibration image is evaluated
    if held is not None:
        skip = 0
    elif skip >= len(loader):
        raise ValueError(
            f"the training set ({loader.dataset_size} images) has none left for a held-out split after the "
            f"{run.calib_images} calibration images; lower run.calib_images"
        )
    heldout = CachedBatches.from_loader(
        loader.epoch(0, start_step=skip), max_images=heldout_images, batch_size=d.val_batch_size
    )
    return calib, heldout, data.num_classes
