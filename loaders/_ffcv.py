"""Lazy, guarded access to FFCV 1.0.2.

FFCV is imported only when a .beton is written or read, so ``import deps_loaders`` (and the torchvision fallback) work
without it. Two side effects of FFCV are undone here: importing ``ffcv`` runs ``Compiler.set_num_threads(1)``, and
constructing an ``ffcv.loader.Loader`` runs ``Compiler.set_num_threads(num_workers)``; both also call
``torch.set_num_threads``, which would silently change the training process's intra-op parallelism.

One cost of importing FFCV is avoided: ``ffcv.fields.rgb_image`` keeps its two image modes (``'jpg'`` → 0,
``'raw'`` → 1) in a ``numba.typed.Dict``, and filling it at import compiles numba's dictionary code, which is never
cached: about 3.4 s of every process that reads or writes a .beton (2 CPU cores, 2026-12-08), longer than the rest of
``import ffcv``. The dictionary is read only from Python (each decoder copies the two integers before compiling its
closure), so here it is built as a plain ``dict`` holding the same entries; with FFCV 1.0.2 only, the version
setup.py pins and whose uses of the dictionary were read.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import sys
from collections.abc import Iterator
from types import ModuleType

import torch

__all__ = ["FFCVUnavailableError", "ffcv", "keep_torch_threads"]

_MISSING_HINT = (
    "FFCV 1.0.2 builds against the system libraries libturbojpeg and OpenCV (Debian: `apt-get install pkg-config "
    "libturbojpeg0-dev libopencv-dev`, then reinstall ffcv; scripts/bootstrap.sh does both). Without FFCV use "
    "deps_loaders.torchvision_train_loader / torchvision_val_loader."
)


class FFCVUnavailableError(ImportError):
    """FFCV (or one of the system libraries it links against) cannot be imported."""


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore ``torch.get_num_threads()`` after a block that calls FFCV's ``Compiler.set_num_threads``."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _plain_image_modes() -> Iterator[None]:
    """While FFCV is first imported, let ``numba.typed.Dict`` be ``dict`` (see the module's docstring). Only for
    FFCV 1.0.2, the version this package pins and whose use of the dictionary was read; any other imports as it is."""
    if "ffcv.fields.rgb_image" in sys.modules or _installed_version("ffcv") != "1.0.2":
        yield
        return
    import numba.typed

    typed = numba.typed.Dict
    numba.typed.Dict = dict
    try:
        yield
    finally:
        numba.typed.Dict = typed


def ffcv(submodule: str = "") -> ModuleType:
    """Import ``ffcv`` or ``ffcv.<submodule>``; raise :class:`FFCVUnavailableError` naming what is missing."""
    name = f"ffcv.{submodule}" if submodule else "ffcv"
    try:
        with keep_torch_threads(), _plain_image_modes():
            return importlib.import_module(name)
    except ImportError as e:  # includes OSError-wrapped failures of ctypes loading libffcv / cv2
        raise FFCVUnavailableError(f"cannot import {name} ({e}). {_MISSING_HINT}") from e
    except OSError as e:  # ctypes.CDLL of _libffcv when libturbojpeg/libopencv .so files are absent
        raise FFCVUnavailableError(f"cannot load {name} ({e}). {_MISSING_HINT}") from e
