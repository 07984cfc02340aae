"""Package boundaries: FFCV is imported lazily, nothing from deps_core, and FFCV's global side effects are undone."""

from __future__ import annotations

import subprocess
import sys

import pytest
from deps_loaders import FFCVUnavailableError
from deps_loaders._ffcv import ffcv


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_ffcv_and_torchvision_are_imported_lazily_and_torchs_thread_count_is_kept():
    # `import ffcv` runs Compiler.set_num_threads(1), which calls torch.set_num_threads(1) for the whole process;
    # torchvision (~1.7 s to import) only where AutoAugment, the elastic resize or the fallback loader need it
    code = (
        "import sys, torch, deps_loaders; torch.set_num_threads(2); "
        "print('ffcv' in sys.modules, 'deps_core' in sys.modules); "
        "deps_loaders._ffcv.ffcv('loader'); print(torch.get_num_threads(), 'torchvision' in sys.modules)"
    )
    assert _python(code).split() == ["False", "False", "2", "False"]


def test_a_missing_ffcv_part_is_a_clear_error():
    with pytest.raises(FFCVUnavailableError, match="libturbojpeg and OpenCV.*torchvision_train_loader"):
        ffcv("no_such_module")


def test_ffcvs_image_modes_are_a_plain_dict_and_numbas_typed_dict_is_left_as_it_was():
    # filling FFCV's numba.typed.Dict of image modes compiles numba's dictionary code at every start (~3.4 s)
    code = (
        "import numba.typed, deps_loaders; typed = numba.typed.Dict; "
        "m = deps_loaders._ffcv.ffcv('fields.rgb_image'); "
        "print(type(m.IMAGE_MODES).__name__, sorted(m.IMAGE_MODES.items()), numba.typed.Dict is typed)"
    )
    assert _python(code) == "dict [('jpg', 0), ('raw', 1)] True"
    # another FFCV version imports as it is (its use of the dictionary was not read): numba's own, filled the same
    code = (
        "import importlib.metadata, deps_loaders; real = importlib.metadata.version; "
        "importlib.metadata.version = lambda d: '1.1.0' if d == 'ffcv' else real(d); "
        "m = deps_loaders._ffcv.ffcv('fields.rgb_image'); "
        "print(type(m.IMAGE_MODES).__module__, sorted(m.IMAGE_MODES.items()))"
    )
    assert _python(code) == "numba.typed.typeddict [('jpg', 0), ('raw', 1)]"
