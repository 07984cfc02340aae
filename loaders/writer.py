"""Writing .beton files (``image``: ``RGBImageField``, ``label``: ``IntField``) with FFCV's ``DatasetWriter``.

Defaults are ffcv-imagenet's ``write_imagenet.sh``: ``write_mode="proportion"`` (each image stored as JPEG with
probability ``compress_probability`` = 0.5, else as raw pixels), ``max_resolution=500`` (longest side, INTER_AREA
downscale), ``jpeg_quality=90``. Sources: an ImageFolder tree (torchvision's class and file order, so sample ``i`` of
the .beton is sample ``i`` of ``torchvision.datasets.ImageFolder``), a torchvision dataset read from local files
(CIFAR-10/100 with ``download=False`` are read from their arrays), any indexable dataset of ``(image, label)``, or
in-memory arrays.

What is handled here rather than lived with:

- a worker that raises makes FFCV's writer wait forever, so samples are read through a wrapper that never raises: an
  image folder is scanned first (a reduced-size decode of every file) and unreadable files are skipped and listed, or
  refused with ``strict``; for other datasets a failure is recorded and reported as an error after the write;
- the file is written under a temporary name and renamed when complete, so an interrupted write never leaves a
  ``.beton`` that looks valid;
- an empty class folder, a class list that differs from the expected one, labels outside ``[0, num_classes)`` or a
  length mismatch between images and labels are refused before anything is written.

``write_mode="proportion"`` draws from NumPy's global RNG inside FFCV's worker processes, so which images end up
compressed differs between runs; ``"raw"`` and ``"jpg"`` with one worker give byte-identical files.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from deps_loaders._ffcv import ffcv, keep_torch_threads
from deps_loaders.base import default_num_workers
from tqdm import tqdm

__all__ = ["BetonSummary", "WriteOptions", "image_folder_samples", "write_beton"]

WRITE_MODES = ("proportion", "jpg", "raw", "smart")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def _int_in(lo: int, hi: int | None):
    def check(_, attribute, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo or (hi and value > hi):
            span = f"[{lo}, {hi}]" if hi else f">= {lo}"
            raise ValueError(f"{attribute.name}: {value!r} must be an integer {span}")

    return check


@attrs.frozen
class WriteOptions:
    """How images are stored; defaults are ffcv-imagenet's."""

    write_mode: str = "proportion"
    max_resolution: int | None = attrs.field(default=500)
    jpeg_quality: int = attrs.field(default=90, validator=_int_in(1, 100))
    compress_probability: float = 0.5
    num_workers: int = attrs.field(factory=default_num_workers, validator=_int_in(1, None))
    strict: bool = False
    chunk_size: int = attrs.field(default=100, validator=_int_in(1, None))

    def __attrs_post_init__(self) -> None:
        if self.write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode: {self.write_mode!r} is not one of {WRITE_MODES}")
        if self.max_resolution is not None:
            _int_in(1, None)(None, attrs.fields(WriteOptions).max_resolution, self.max_resolution)
        if not 0.0 <= self.compress_probability <= 1.0:
            raise ValueError(f"compress_probability: {self.compress_probability!r} must be in [0, 1]")

    def fields(self) -> dict[str, Any]:
        f = ffcv("fields")
        image = f.RGBImageField(
            write_mode=self.write_mode,
            max_resolution=self.max_resolution,
            jpeg_quality=self.jpeg_quality,
            compress_probability=self.compress_probability,
        )
        return {"image": image, "label": f.IntField()}


@attrs.frozen
class BetonSummary:
    """What :func:`write_beton` wrote."""

    path: Path
    images: int
    classes: int
    bytes: int
    skipped: tuple[str, ...] = ()
    seconds: float = 0.0

    def __str__(self) -> str:
        text = (
            f"wrote {self.images:,} images of {self.classes:,} classes ({self.bytes / 2**20:,.1f} MiB) to {self.path} "
            f"in {self.seconds:.1f} s"
        )
        if self.skipped:
            shown = ", ".join(self.skipped[:10]) + (" …" if len(self.skipped) > 10 else "")
            text += f"; skipped {len(self.skipped)} unreadable image(s): {shown}"
        return text


# --- sources ----------------------------------------------------------------------------------------------------------


def image_folder_samples(root: str | os.PathLike, classes: Sequence[str] | None = None) -> tuple[list, list[str]]:
    """``([(path, label), ...], class_names)`` of an ImageFolder tree, in torchvision's order.

    Raises if ``root`` is missing, has no class folders, a class folder without images, or (with ``classes``) a
    different set of classes than expected (e.g. a validation split that does not match its training split).
    """
    from torchvision.datasets.folder import find_classes, make_dataset

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such directory")
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (expected an ImageFolder tree: root/<class>/<image>)")
    try:
        found, class_to_idx = find_classes(str(root))
    except FileNotFoundError:
        raise ValueError(f"{root}: no class folders (expected an ImageFolder tree: root/<class>/<image>)") from None
    if classes is not None and list(classes) != found:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise ValueError(
            f"{root}: class folders differ from the expected {len(classes)} classes (missing: {missing[:5]}, "
            f"unexpected: {extra[:5]})"
        )
    samples = make_dataset(str(root), class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    counts = np.bincount([label for _, label in samples], minlength=len(found))
    empty = [found[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"{root}: class folder(s) without images: {', '.join(map(str, empty[:10]))}")
    return samples, found


def _check_file(path: str) -> str | None:
    """None if ``path`` decodes (JPEG at 1/8 scale: every entropy-coded block is still read), else the error."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (1, 1))
            im.load()
        return None
    except Exception as e:  # PIL raises many types for broken files
        return f"{type(e).__name__}: {e}"


def _as_rgb_array(image: Any) -> np.ndarray:
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "numpy") and hasattr(image, "permute"):  # a CHW torch tensor
        image = image.permute(1, 2, 0).numpy() if image.ndim == 3 and image.shape[0] in (1, 3) else image.numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"images must be H×W×3 (or H×W, H×W×1, H×W×4), got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


class _Files:
    """Indexable ``(image, label)`` over files; never raises (FFCV's writer would hang), records failures."""

    def __init__(self, samples: list[tuple[str, int]], failed: Any):
        self.samples, self.failed = samples, failed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB")), int(label)
        except Exception:
            self.failed[i] = 1
            return np.zeros((1, 1, 3), np.uint8), int(label)


class _Arrays:
    def __init__(self, images: Any, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.ascontiguousarray(self.images[i]), int(self.labels[i])


class _Dataset:
    def __init__(self, dataset: Any, failed: Any):
        self.dataset, self.failed = dataset, failed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        try:
            image, label = self.dataset[i][:2]
            return _as_rgb_array(image), int(label)
        except Exception:
            self.failed[i] = 1
            return np.zeros((1, 1, 3), np.uint8), 0


def _check_arrays(images: Any, labels: Any, num_classes: int | None) -> tuple[Any, np.ndarray, int]:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ValueError(f"labels: expected a 1-d integer array, got shape {labels.shape} and dtype {labels.dtype}")
    if len(images) != len(labels):
        raise ValueError(f"labels: {len(labels)} labels for {len(images)} images")
    if len(labels) == 0:
        raise ValueError("images: no images to write")
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"images: expected uint8 N×H×W×3, got {images.dtype} of shape {images.shape}")
    else:  # checked here: a bad element inside FFCV's worker would hang the writer
        for i, image in enumerate(images):
            a = np.asarray(image)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or 0 in a.shape:
                raise ValueError(f"images: image {i} is {a.dtype} of shape {a.shape}, expected uint8 H×W×3")
    n_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"labels: label {int(labels[i])} of sample {i} is outside [0, {n_classes})")
    return images, labels.astype(np.int64), len(np.unique(labels))


# --- writing ----------------------------------------------------------------------------------------------------------


def write_beton(
    source: Any,
    path: str | os.PathLike,
    *,
    write_mode: str = "proportion",
    max_resolution: int | None = 500,
    jpeg_quality: int = 90,
    compress_probability: float = 0.5,
    num_workers: int | None = None,
    strict: bool = False,
    classes: Sequence[str] | None = None,
    num_classes: int | None = None,
    progress: bool = True,
    chunk_size: int = 100,
) -> BetonSummary:
    """Write ``source`` to the .beton file ``path`` and return a summary (also printed when ``progress``).

    ``source`` is one of: a directory (an ImageFolder tree), ``(images, labels)`` arrays (``images`` uint8
    ``N×H×W×3`` or a sequence of ``H×W×3``), a torchvision dataset (CIFAR's ``.data``/``.targets`` are used directly)
    or any indexable of ``(PIL image | uint8 array | CHW uint8 tensor, int label)``.

    ``classes`` (folder sources): the expected class names, e.g. a training split's, to refuse a mismatched split.
    ``num_classes``: labels must lie in ``[0, num_classes)``. ``strict``: an unreadable image is an error instead of
    being skipped.
    """
    options = WriteOptions(
        write_mode=write_mode,
        max_resolution=max_resolution,
        jpeg_quality=jpeg_quality,
        compress_probability=compress_probability,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        strict=strict,
        chunk_size=chunk_size,
    )
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; give the .beton file to write")
    if not path.parent.exists():
        raise FileNotFoundError(f"{path.parent}: no such directory for {path.name}")
    start = time.perf_counter()
    skipped: tuple[str, ...] = ()
    failed = None
    if isinstance(source, str | os.PathLike):
        samples, names = image_folder_samples(source, classes)
        samples, skipped = _scan(samples, options, progress)
        n_classes = len(names)
        if num_classes is not None and n_classes > num_classes:
            raise ValueError(f"num_classes: {source} has {n_classes} classes, more than {num_classes}")
        failed = multiprocessing.RawArray("b", len(samples))
        dataset: Any = _Files(samples, failed)
    elif _is_array_pair(source):
        images, labels, n_classes = _check_arrays(source[0], source[1], num_classes)
        dataset = _Arrays(images, labels)
    elif _is_cifar(source):
        images, labels, n_classes = _check_arrays(source.data, source.targets, num_classes)
        dataset = _Arrays(images, labels)
    elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        if len(source) == 0:
            raise ValueError("source: the dataset is empty")
        failed = multiprocessing.RawArray("b", len(source))
        dataset = _Dataset(source, failed)
        n_classes = -1  # known after writing
    else:
        raise ValueError(
            f"source: {type(source).__name__} is not a directory, an (images, labels) pair or an indexable dataset"
        )

    partial = path.with_name(f".{path.name}.{os.getpid()}.partial.beton")
    try:
        writer_mod = ffcv("writer")
        # FFCV's writer always draws a tqdm bar on stderr; silence it (for this call only) when progress is off
        quiet = contextlib.redirect_stderr(io.StringIO()) if not progress else contextlib.nullcontext()
        with keep_torch_threads(), quiet:
            writer = writer_mod.DatasetWriter(str(partial), options.fields(), num_workers=options.num_workers)
            writer.from_indexed_dataset(dataset, chunksize=options.chunk_size)
        if failed is not None and any(failed):
            bad = [i for i in range(len(dataset)) if failed[i]]
            raise ValueError(_failure_message(source, dataset, bad))
        if n_classes < 0:
            from deps_loaders.beton import inspect_beton

            info = inspect_beton(partial)
            if num_classes is not None:
                info.check_labels(num_classes)
            if (info.labels < 0).any():
                raise ValueError(f"labels: negative label {int(info.labels.min())} in the dataset")
            n_classes = len(np.unique(info.labels))
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    summary = BetonSummary(
        path=path,
        images=len(dataset),
        classes=n_classes,
        bytes=path.stat().st_size,
        skipped=skipped,
        seconds=time.perf_counter() - start,
    )
    if progress:
        print(summary)
    return summary


def _is_array_pair(source: Any) -> bool:
    """``(images, labels)`` with a 1-d integer label array/list (a list of samples has tuples as elements)."""
    if not isinstance(source, tuple | list) or len(source) != 2:
        return False
    labels = source[1]
    if isinstance(labels, np.ndarray) or hasattr(labels, "numpy"):
        return labels.ndim == 1
    return isinstance(labels, list | tuple) and all(isinstance(x, int | np.integer) for x in labels)


def _is_cifar(source: Any) -> bool:
    data = getattr(source, "data", None)
    return (
        isinstance(data, np.ndarray)
        and data.ndim == 4
        and hasattr(source, "targets")
        and getattr(source, "transform", None) is None
    )


def _scan(samples: list, options: WriteOptions, progress: bool) -> tuple[list, tuple[str, ...]]:
    paths = [p for p, _ in samples]
    with multiprocessing.get_context("fork").Pool(options.num_workers) as pool:
        results = list(
            tqdm(
                pool.imap(_check_file, paths, chunksize=64),
                total=len(paths),
                desc="checking images",
                disable=not progress,
            )
        )
    bad = [(p, err) for p, err in zip(paths, results) if err is not None]
    if bad and options.strict:
        p, err = bad[0]
        raise ValueError(f"{p}: unreadable image ({err}); {len(bad)} unreadable in total (strict)")
    if len(bad) == len(samples):
        raise ValueError(f"no readable images ({len(bad)} unreadable, e.g. {bad[0][0]})")
    keep = [s for s, err in zip(samples, results) if err is None]
    return keep, tuple(p for p, _ in bad)


def _failure_message(source: Any, dataset: Any, bad: list[int]) -> str:
    if isinstance(dataset, _Files):
        return f"{dataset.samples[bad[0]][0]}: became unreadable while writing ({len(bad)} file(s) failed)"
    try:
        dataset.dataset[bad[0]]
        reason = "unknown error"
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
    return f"source: sample {bad[0]} could not be read ({reason}); {len(bad)} sample(s) failed"
