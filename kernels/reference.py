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

__all__ = [
    "ACTIVATIONS",
    "DTYPES",
    "STRIDES",
    "activation_reference",
    "check_dwconv_bn_act_args",
    "check_elastic_dwconv_args",
    "compute_dtype",
    "dwconv_bn_act_reference",
    "elastic_dwconv_reference",
]

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


# --- the depthwise layer: conv, batch norm, activation (deps_kernels.dwconv_bn_act) ---------------------------------

ACTIVATIONS = ("none", "relu", "relu6", "h_swish")  # deps_core.ops.activation's names


def check_dwconv_bn_act_args(
    x: Tensor,
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    kernel_size: int,
    stride: int,
    training: bool,
    momentum: float,
    eps: float,
    act: str,
    grad_out: Tensor | None = None,
) -> None:
    """One ``ValueError`` naming what is wrong with the arguments of ``dwconv_bn_act``: those of ``elastic_dwconv``,
    then ``bn_weight``/``bn_bias`` ``[C']`` floating point on ``x``'s device, the running statistics (both or neither,
    ``[C']``; required in evaluation), ``momentum`` in [0, 1], ``eps`` > 0, ``act`` one of :data:`ACTIVATIONS`, and
    more than one value per channel in training."""
    check_elastic_dwconv_args(x, weight, kernel_size, stride, grad_out)
    c = x.shape[1]
    for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias)):
        if not isinstance(t, Tensor) or t.shape != (c,) or not t.dtype.is_floating_point or t.device != x.device:
            raise ValueError(f"{name} must be a floating-point [C'] = [{c}] tensor on {x.device}; got {_describe(t)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.shape != (c,) or not t.dtype.is_floating_point or t.device != x.device:
            raise ValueError(f"{name} must be a floating-point [C'] = [{c}] tensor on {x.device}; got {_describe(t)}")
    if not isinstance(training, bool):
        raise ValueError(f"training must be a bool; got {training!r}")
    if not training and running_mean is None:
        raise ValueError("evaluation (training=False) normalises with the running statistics: pass both")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1]; got {momentum!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0.0:
        raise ValueError(f"eps must be a positive number; got {eps!r}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}; got {act!r}")
    if training:  # (odd kernels with padding K // 2: H_out = ⌈H / s⌉)
        per_channel = x.shape[0] * ((x.shape[2] - 1) // stride + 1) * ((x.shape[3] - 1) // stride + 1)
        if per_channel < 2:
            raise ValueError(f"training needs more than one value per channel; got N·H_out·W_out = {per_channel}")


def activation_reference(z: Tensor, act: str) -> Tensor:
    """The activations of :data:`ACTIVATIONS` in torch (h-swish: ``z · relu6(z + 3) / 6``)."""
    if act == "relu":
        return F.relu(z)
    if act == "relu6":
        return F.relu6(z)
    if act == "h_swish":
        return F.hardswish(z)
    return z


def dwconv_bn_act_reference(
    x: Tensor,
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    *,
    kernel_size: int,
    stride: int,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    act: str = "relu",
) -> Tensor:
    """``act(F.batch_norm(elastic_dwconv_reference(x, weight)))``: the conv's output rounded to ``x.dtype`` (what
    the Triton op stores and normalises), then BN and the activation in the compute dtype, rounded once. Moves the
    running statistics in training as ``F.batch_norm`` does. Differentiable by autograd."""
    check_dwconv_bn_act_args(
        x, weight, bn_weight, bn_bias, running_mean, running_var, kernel_size, stride, training, momentum, eps, act
    )
    acc = compute_dtype(x.dtype)
    y = elastic_dwconv_reference(x, weight, kernel_size=kernel_size, stride=stride).to(acc)
    rm, rv = (None if t is None else t.to(acc) for t in (running_mean, running_var))
    z = F.batch_norm(y, rm, rv, bn_weight.to(acc), bn_bias.to(acc), training, momentum, eps)
    if training and running_mean is not None and rm is not running_mean:  # statistics kept in another dtype
        with torch.no_grad():
            running_mean.copy_(rm)
            running_var.copy_(rv)
    return activation_reference(z, act).to(x.dtype)
