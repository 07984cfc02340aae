"""Kernel tests: on CUDA where there is a GPU (``gpu`` marker), otherwise on the CPU through the Triton interpreter.

``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates a kernel, i.e. when ``deps_kernels.elastic_dwconv`` is
first imported. pytest imports this file before the test modules of this folder, and nothing else in ``tests/`` (nor
``deps_core``, which imports the kernels lazily) imports that module earlier, so setting it here at import time is in
time for the whole session. It is set only without CUDA: with a GPU the kernels are compiled and the CPU cases skip
(run them there with ``TRITON_INTERPRET=1`` in the environment).

Before any test, a one-line kernel checks that this Triton's interpreter runs with this NumPy: the interpreters of
Triton 3.2, 3.5 and 3.6 (checked; 3.3 and 3.4 carry the same code) take ``int()`` of one-element arrays, which NumPy 2.4
refuses, and every kernel test would fail with the same opaque ``TypeError``; 3.7.1's works. The session then stops at
once with one error that names both versions and the fix.
"""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    if "deps_kernels.elastic_dwconv" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("deps_kernels.elastic_dwconv was imported before tests/kernels could enable the interpreter")
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _check_the_interpreter() -> None:
    import numpy as np
    import triton
    import triton.language as tl

    @triton.jit
    def _count(out_ptr, n):
        acc = 0
        for _ in range(0, n):  # a loop bound from a kernel argument: what the interpreter turns into int(array)
            acc += 1
        tl.store(out_ptr, acc)

    out = torch.zeros(1, dtype=torch.int32)
    try:
        _count[(1,)](out, 3)
    except Exception as err:
        raise RuntimeError(
            f"Triton {triton.__version__}'s interpreter cannot run with NumPy {np.__version__} ({err!s:.200}): the "
            "kernel tests need 'numpy<2.4' with this Triton, or Triton >= 3.7"
        ) from None
    if out.item() != 3:
        raise RuntimeError(f"Triton {triton.__version__}'s interpreter counted {out.item()} trips of a 3-trip loop")


if os.environ.get("TRITON_INTERPRET") == "1":
    _check_the_interpreter()
