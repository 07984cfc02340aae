"""Elastic functional ops: each takes the active slices of the shared weights (views) and plain tensors.

Nothing here owns state. The BN running statistics passed in are updated in place by ``F.batch_norm`` (the tensors
may be views of the supernet's full buffers, so the first C' channels of the shared statistics move, as in OFA's
``DynamicBatchNorm2d``), which also holds under ``torch.func.grad``.

The kernel transform is OFA's (Cai et al., ICLR 2020, Sec. 3.2 "elastic kernel size"): a smaller kernel is the centre
of the next larger one multiplied by a learned (k²×k²) matrix, applied from the largest kernel down.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch.nn.functional as F
from deps_kernels import TRITON_AVAILABLE
from deps_kernels.reference import ACTIVATIONS, activation_reference
from torch import Tensor

__all__ = [
    "activation",
    "batch_norm",
    "conv",
    "depthwise_conv",
    "depthwise_bn_act",
    "resolve_depthwise_backend",
    "centre_slice",
    "dw_source_size",
    "transform_kernel",
    "squeeze_excite",
    "global_pool",
    "DEPTHWISE_BACKENDS",
]

DEPTHWISE_BACKENDS = ("auto", "torch", "triton")


def activation(x: Tensor, name: str) -> Tensor:
    """ReLU, ReLU6, h-swish (``x · relu6(x + 3) / 6``) or identity: ``deps_kernels.reference``'s, which the fused
    depthwise layer's kernels are checked against."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}")
    return activation_reference(x, name)


def batch_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    *,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """BN over the active channels. In training, ``running_*`` (if given) move by ``momentum`` in place.

    Passing ``running_mean=None`` in training normalises with batch statistics and leaves the stored ones alone
    (BigNAS-style subnets); in evaluation the stored statistics are required.
    """
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


def conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, stride: int = 1) -> Tensor:
    """Dense conv with 'same' padding (k // 2); the weight is the active slice ``[C'_out, C'_in, k, k]``."""
    k = weight.shape[-1]
    return F.conv2d(x, weight, bias, stride, k // 2)


def depthwise_conv(
    x: Tensor,
    weight: Tensor,
    *,
    stride: int,
    backend: str = "auto",
    grad_out: Tensor | None = None,
    grad_scale: float = 1.0,
) -> Tensor:
    """Depthwise conv with 'same' padding on ``C' = x.shape[1]`` channels; ``weight`` is ``[C', 1, k, k]``.

    ``backend``: ``"torch"`` (cuDNN / the CPU reference), ``"triton"`` (the elastic kernel of ``deps_kernels``; it
    reads a strided view of the stored kernel in place), ``"auto"`` (Triton on CUDA when it is installed, torch
    elsewhere); see :func:`resolve_depthwise_backend`.
    ``grad_out`` (Triton only): a tensor shaped like ``weight`` (a gradient accumulator's view) into which the
    backward adds ``grad_scale · dL/dweight``; the weight then gets no gradient from this op.
    """
    if resolve_depthwise_backend(backend, x) == "triton":
        from deps_kernels.elastic_dwconv import elastic_dwconv

        k = weight.shape[-1]
        return elastic_dwconv(x, weight, kernel_size=k, stride=stride, grad_out=grad_out, grad_scale=grad_scale)
    if grad_out is not None:
        raise ValueError("grad_out (the fused depthwise weight gradient) needs the Triton backend")
    k = weight.shape[-1]
    return F.conv2d(x, weight, None, stride, k // 2, 1, x.shape[1])


def depthwise_bn_act(
    x: Tensor,
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    *,
    stride: int,
    act: str,
    training: bool,
    momentum: float,
    eps: float,
    backend: str = "auto",
    fused: bool = False,
    grad_out: Tensor | None = None,
    grad_scale: float = 1.0,
) -> Tensor:
    """``activation(batch_norm(depthwise_conv(x, weight)), act)``, the depthwise layer of an inverted-residual block.

    ``fused`` (Triton backend only): one op, ``deps_kernels.dwconv_bn_act`` — the BN statistics from the conv
    kernel's epilogue, normalisation and activation in one pass, the BN-activation backward in two passes; the running
    statistics move as :func:`batch_norm` moves them. Otherwise the three ops in turn. ``grad_out``/``grad_scale``: as
    in :func:`depthwise_conv`.
    """
    if fused:
        if resolve_depthwise_backend(backend, x) != "triton":
            raise ValueError(f"the fused depthwise-BN-activation op needs the Triton backend; backend={backend!r}")
        from deps_kernels.dwconv_bn_act import dwconv_bn_act

        return dwconv_bn_act(
            x, weight, bn_weight, bn_bias, running_mean, running_var, kernel_size=weight.shape[-1], stride=stride,
            training=training, momentum=momentum, eps=eps, act=act, grad_out=grad_out, grad_scale=grad_scale,
        )  # fmt: skip
    y = depthwise_conv(x, weight, stride=stride, backend=backend, grad_out=grad_out, grad_scale=grad_scale)
    y = batch_norm(y, bn_weight, bn_bias, running_mean, running_var, training=training, momentum=momentum, eps=eps)
    return activation(y, act)


def resolve_depthwise_backend(backend: str, x: Tensor) -> str:
    """``"torch"`` or ``"triton"``: what ``backend`` means for the input ``x``.

    ``"auto"`` is Triton for CUDA tensors when Triton is installed, torch otherwise. ``"triton"`` on CPU tensors
    runs the kernels in the Triton interpreter, which must be switched on (``TRITON_INTERPRET=1``) before
    ``deps_kernels.elastic_dwconv`` is first imported; otherwise it is a ``ValueError``.
    """
    if backend not in DEPTHWISE_BACKENDS:
        raise ValueError(f"depthwise backend must be one of {DEPTHWISE_BACKENDS}; got {backend!r}")
    if backend == "auto":
        return "triton" if x.is_cuda and TRITON_AVAILABLE else "torch"
    if backend == "triton" and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"depthwise backend 'triton' needs CUDA tensors (got {x.device}); on the CPU it runs only in the Triton "
            "interpreter: set TRITON_INTERPRET=1 before deps_kernels.elastic_dwconv is imported"
        )
    return backend


def centre_slice(k_max: int, k: int) -> slice:
    """The centre ``k`` of ``k_max`` taps (OFA ``sub_filter_start_end``)."""
    start = k_max // 2 - k // 2
    return slice(start, start + k)


def dw_source_size(k: int, ks_choices: Sequence[int], kernel_transform: bool) -> int:
    """How many centre taps of the stored kernel a subnet with kernel ``k`` reads.

    Without the transform, its own ``k``. With it, every smaller kernel starts from the centre of the second-largest
    choice of the largest kernel (OFA: the chain 7→5→3 begins with the centre 5×5 of the 7×7 weight).
    """
    if not kernel_transform or k == max(ks_choices):
        return k
    return sorted(ks_choices)[-2]


def transform_kernel(weight: Tensor, k: int, matrices: dict[int, Tensor], ks_choices: Sequence[int]) -> Tensor:
    """OFA's kernel transform: from ``weight`` = the centre of the second-largest kernel, down to ``k``.

    ``weight``: ``[C', 1, k1, k1]`` with ``k1`` the second-largest choice (see :func:`dw_source_size`).
    ``matrices[k_small]``: the ``(k_small², k_small²)`` matrix taking a larger kernel's centre to ``k_small``.
    Returns ``[C', 1, k, k]``.
    """
    chain = sorted((c for c in ks_choices if c >= k), reverse=True)[1:]  # e.g. k=3 of (3,5,7): [5, 3]
    w = weight
    for j, target in enumerate(chain):
        if j > 0:
            s = centre_slice(w.shape[-1], target)
            w = w[:, :, s, s]
        c = w.shape[0]
        w = F.linear(w.reshape(c, target * target), matrices[target]).reshape(c, 1, target, target)
    return w


def squeeze_excite(x: Tensor, reduce_w: Tensor, reduce_b: Tensor, expand_w: Tensor, expand_b: Tensor) -> Tensor:
    """SE on the active channels: pool, 1×1 reduce, ReLU, 1×1 expand, h-sigmoid, scale (OFA ``DynamicSE``)."""
    y = x.mean((2, 3), keepdim=True)
    y = F.relu(F.conv2d(y, reduce_w, reduce_b))
    y = F.hardsigmoid(F.conv2d(y, expand_w, expand_b))
    return x * y


def global_pool(x: Tensor) -> Tensor:
    """Global average pool keeping ``[N, C, 1, 1]``."""
    return x.mean((2, 3), keepdim=True)
