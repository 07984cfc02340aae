"""Elastic functional ops: each takes the active slices of the shared weights (views) and plain tensors.

Nothing here owns state. The BN running statistics passed in are updated in place by ``F.batch_norm`` (the tensors
may be views of the supernet's full buffers, so the first C' channels of the shared statistics move, as in OFA's
``DynamicBatchNorm2d``), which also holds under ``torch.func.grad``.

The kernel transform is OFA's (Cai et al., ICLR 2020, Sec. 3.2 "elastic kernel size"): a smaller kernel is the centre
of the next larger one multiplied by a learned (k²×k²) matrix, applied from the largest kernel down.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "activation",
    "batch_norm",
    "conv",
    "depthwise_conv",
    "centre_slice",
    "dw_source_size",
    "transform_kernel",
    "squeeze_excite",
    "global_pool",
    "DEPTHWISE_BACKENDS",
]

DEPTHWISE_BACKENDS = ("auto", "torch", "triton")


def activation(x: Tensor, name: str) -> Tensor:
    """ReLU, ReLU6, h-swish (``x · relu6(x + 3) / 6``) or identity."""
    if name == "relu":
        return F.relu(x)
    if name == "h_swish":
        return F.hardswish(x)
    if name == "relu6":
        return F.relu6(x)
    if name == "none":
        return x
    raise ValueError(f"unknown activation {name!r}")


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


def depthwise_conv(x: Tensor, weight: Tensor, *, stride: int, backend: str = "auto") -> Tensor:
    """Depthwise conv with 'same' padding on ``C' = x.shape[1]`` channels; ``weight`` is ``[C', 1, k, k]``.

    ``backend``: ``"torch"`` (cuDNN / the CPU reference), ``"triton"`` (the fused elastic kernel of ``deps_kernels``,
    CUDA only), ``"auto"`` (Triton on CUDA when it is installed, torch elsewhere).
    """
    if backend not in DEPTHWISE_BACKENDS:
        raise ValueError(f"depthwise backend must be one of {DEPTHWISE_BACKENDS}; got {backend!r}")
    if backend == "triton":
        raise NotImplementedError("the Triton depthwise kernel is not wired in yet (deps_kernels)")
    k = weight.shape[-1]
    return F.conv2d(x, weight, None, stride, k // 2, 1, x.shape[1])


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
