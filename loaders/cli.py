"""``deps data``: write a .beton from an ImageFolder tree or CIFAR, or build the synthetic dataset's cache.

The ``deps`` command (``deps_core.cli``) adds these arguments to its ``data`` subcommand with
:func:`add_data_arguments` and runs :func:`run_data`. Bad values are one-line errors with exit status 2.

Examples::

    deps data /data/imagenet/train /data/imagenet_train.beton
    deps data /data/imagenet/val /data/imagenet_val.beton --classes-from /data/imagenet/train
    deps data cifar10:/data/cifar /data/cifar10_train.beton --split train --write-mode raw
    deps data synthetic --num-classes 100 --resolution 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_data_arguments", "run_data"]

_WRITE_MODES = ("proportion", "jpg", "raw", "smart")  # deps_loaders.writer.WRITE_MODES, without importing FFCV


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _max_resolution(text: str) -> int | None:
    return None if text.lower() == "none" else _positive_int(text)


def _quality(text: str) -> int:
    value = _positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"expected a JPEG quality in [1, 100], got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {value}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``deps data`` arguments to ``parser``."""
    parser.add_argument(
        "source",
        help="an ImageFolder directory (root/<class>/<image>), cifar10:ROOT or cifar100:ROOT (torchvision's files, "
        "not downloaded), or 'synthetic' (build the bundled dataset's cache)",
    )
    parser.add_argument(
        "output", nargs="?", help="the .beton file to write (for 'synthetic': the cache directory, optional)"
    )
    parser.add_argument("--split", choices=("train", "val"), default="train", help="CIFAR split (val = test set)")
    parser.add_argument("--write-mode", choices=_WRITE_MODES, default="proportion", help="image storage (ffcv)")
    parser.add_argument(
        "--max-resolution", type=_max_resolution, default=500, help="longest side in pixels, or 'none' (500)"
    )
    parser.add_argument("--jpeg-quality", type=_quality, default=90, help="JPEG quality (90)")
    parser.add_argument(
        "--compress-probability", type=_probability, default=0.5, help="JPEG share with --write-mode proportion"
    )
    parser.add_argument("--num-workers", type=_positive_int, default=None, help="writer processes (all cores)")
    parser.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    parser.add_argument("--classes-from", metavar="DIR", help="require the class folders of DIR (the train split)")
    parser.add_argument("--num-classes", type=_positive_int, help="labels must lie in [0, N) (synthetic: 10 or 100)")
    parser.add_argument("--resolution", type=_positive_int, default=32, help="synthetic image side: 32 or 64")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")


def _error(message: str) -> int:
    print(f"deps data: error: {message}", file=sys.stderr)
    return 2


def run_data(args: argparse.Namespace) -> int:
    """Run ``deps data``; returns the exit status (2 with a one-line error on bad input)."""
    from deps_loaders._ffcv import FFCVUnavailableError

    try:
        return _run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, FFCVUnavailableError) as e:
        return _error(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _run(args: argparse.Namespace) -> int:
    from deps_loaders.synthetic import SyntheticSpec, synthetic_beton
    from deps_loaders.writer import image_folder_samples, write_beton

    progress = not args.quiet
    if args.source == "synthetic":
        spec = SyntheticSpec(num_classes=args.num_classes or 10, resolution=args.resolution)
        for split in ("train", "val"):
            path = synthetic_beton(split, spec, cache_dir=args.output, num_workers=args.num_workers, progress=progress)
            print(path)
        return 0
    if args.output is None:
        raise ValueError("output: the .beton file to write is required")
    if Path(args.output).exists() and not args.overwrite:  # a .beton of ImageNet takes hours to write
        raise ValueError(f"output: {args.output} exists; pass --overwrite to replace it")
    options = dict(
        write_mode=args.write_mode,
        max_resolution=args.max_resolution,
        jpeg_quality=args.jpeg_quality,
        compress_probability=args.compress_probability,
        num_workers=args.num_workers,
        strict=args.strict,
        num_classes=args.num_classes,
        progress=progress,
    )
    kind, _, root = args.source.partition(":")
    if kind in ("cifar10", "cifar100") and root:
        dataset = _cifar(kind, root, args.split)
        write_beton(dataset, args.output, **options)
    else:
        classes = image_folder_samples(args.classes_from)[1] if args.classes_from else None
        write_beton(Path(args.source), args.output, classes=classes, **options)
    return 0


def _cifar(kind: str, root: str, split: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    try:
        return cls(root=root, train=split == "train", download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise ValueError(f"{root}: no {kind} {split} files there ({e})") from None
