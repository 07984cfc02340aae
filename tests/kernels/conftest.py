"""Kernel tests: on CUDA where there is a GPU (``gpu`` marker), otherwise on the CPU through the Triton interpreter.

``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates a kernel, i.e. when ``deps_kernels.elastic_dwconv`` is
first imported. pytest imports this file before the test modules of this folder, and nothing else in ``tests/`` (nor
``deps_core``, which imports the kernels lazily) imports that module earlier, so setting it here at import time is in
time for the whole session. It is set only without CUDA: with a GPU the kernels are compiled and the CPU cases skip
(run them there with ``TRITON_INTERPRET=1`` in the environment).
"""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    if "deps_kernels.elastic_dwconv" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("deps_kernels.elastic_dwconv was imported before tests/kernels could enable the interpreter")
    os.environ.setdefault("TRITON_INTERPRET", "1")
