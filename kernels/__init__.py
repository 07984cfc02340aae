"""Triton kernels for deps (``deps_kernels``).

- :mod:`deps_kernels.elastic_dwconv`: the elastic depthwise convolution (window of the stored kernel read in place,
  weight gradient fused into a gradient buffer). Importing it imports Triton; under ``TRITON_INTERPRET=1`` (set
  before that import) its kernels run on CPU tensors through the Triton interpreter.
- :mod:`deps_kernels.dwconv_bn_act`: depthwise conv + batch norm + activation, the BN statistics from the conv's
  epilogue and normalisation + activation in one pass (forward and backward), built on the kernels above.
- :mod:`deps_kernels.reference`: both ops in pure torch (their contracts and CPU paths); no Triton needed.

This package imports nothing at import time, so ``import deps_kernels`` never pulls in Triton.
"""

from __future__ import annotations

import importlib.util

__all__ = ["TRITON_AVAILABLE", "triton_available"]

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None  # a constant: torch.compile reads it freely


def triton_available() -> bool:
    """Whether Triton is installed (the kernels can be imported; nothing is imported to find out)."""
    return TRITON_AVAILABLE
