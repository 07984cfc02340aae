"""The elastic depthwise convolution in pure torch: the op's contract, its reference and its CPU path.

``elastic_dwconv(x, weight, kernel_size=K, stride=s)`` convolves the ``C' = x.shape[1]`` channels of ``x`` with the
first ``C'`` channels and the centre ``K×K`` taps of the stored depthwise kernel ``weight`` ``[C_max, 1, K_max, K_max]``
(OFA's elastic kernel and width, Cai et al. ICLR 2020, ``DynamicSeparableConv2d``), 'same' padding ``K // 2``. The
Triton op (``deps_kernels.elastic_dwconv``) computes the same thing reading the window in place; this module imports
no Triton, so the contract and the reference are available everywhere.

Accumulation is in float32 (float64 for float64 inputs): the reference upcasts both operands, convolves, and rounds the
output to ``x.dtype``, which is what the kernels do tap by tap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_elastic_dwconv_args", "elastic_dwconv_reference", "compute_dtype", "DTYPES", "STRIDES"]

DTYPES = (torch.float32, torch.bfloat16, torch.float64)  # fp16 is not used for training here (see DESIGN.md)
STRIDES = (1, 2)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for inputs of ``dtype``: float64 stays, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_elastic_dwconv_args(
    x: Tensor, weight: Tensor, kernel_size: int, stride: int, grad_out: Tensor | None = None
) -> None:
    """One ``ValueError`` naming what is wrong with the arguments of ``elastic_dwconv`` (nothing if they are valid).

    ``x`` ``[N, C', H, W]``; ``weight`` ``[C_max, 1, K_max, K_max]`` with ``C' <= C_max``; ``kernel_size`` odd,
    ``<= K_max``; ``stride`` 1 or 2; ``grad_out`` (if given) shaped like ``weight`` on its device, floating point,
    not requiring grad.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-d tensor [N, C, H, W]; got {_describe(x)}")
    depthwise = isinstance(weight, Tensor) and weight.dim() == 4 and weight.shape[1] == 1
    if not depthwise or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be a depthwise kernel [C_max, 1, K_max, K_max]; got {_describe(weight)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"x must have one of the dtypes {DTYPES}; got {x.dtype}")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"weight must be floating point; got {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"x and weight must be on one device; got {x.device} and {weight.device}")
    c, c_max, k_max = x.shape[1], weight.shape[0], weight.shape[-1]
    if c > c_max:
        raise ValueError(f"x has {c} channels but weight only {c_max} (C' must be <= C_max)")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int; got {kernel_size!r}")
    if kernel_size > k_max:
        raise ValueError(f"kernel_size {kernel_size} exceeds the stored kernel's {k_max} (K must be <= K_max)")
    if isinstance(stride, bool) or stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES}; got {stride!r}")
    if grad_out is not None:
        if not isinstance(grad_out, Tensor) or grad_out.shape != weight.shape:
            raise ValueError(f"grad_out must have the weight's shape {tuple(weight.shape)}; got {_describe(grad_out)}")
        if grad_out.device != weight.device or not grad_out.dtype.is_floating_point or grad_out.requires_grad:
            raise ValueError(
                f"grad_out must be a floating-point tensor on {weight.device} that does not require grad; got "
                f"{grad_out.dtype} on {grad_out.device}, requires_grad={grad_out.requires_grad}"
            )


def _describe(t: object) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__


def centre_window(k_max: int, k: int) -> slice:
    """The centre ``k`` of ``k_max`` taps (OFA ``sub_filter_start_end``)."""
    start = (k_max - k) // 2
    return slice(start, start + k)


def elastic_dwconv_reference(x: Tensor, weight: Tensor, *, kernel_size: int, stride: int) -> Tensor:
    """``[N, C', H_out, W_out]`` in ``x.dtype``: ``x`` convolved with ``weight[:C', :, window, window]`` (a view),
    accumulated in :func:`compute_dtype`. Differentiable by autograd (the weight's gradient is zero outside the
    window)."""
    check_elastic_dwconv_args(x, weight, kernel_size, stride)
    c, win = x.shape[1], centre_window(weight.shape[-1], kernel_size)
    acc = compute_dtype(x.dtype)
    w = weight[:c, :, win, win]
    return F.conv2d(x.to(acc), w.to(acc), None, stride, kernel_size // 2, 1, c).to(x.dtype)
