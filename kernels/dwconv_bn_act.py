"""The depthwise layer of an inverted-residual block — elastic depthwise conv, batch norm, activation — as one op whose
BN statistics come out of the convolution's epilogue and whose normalisation and activation are one pass.

``dwconv_bn_act(x, weight, bn_weight, bn_bias, running_mean, running_var, kernel_size=K, stride=s, training=...,
momentum=..., eps=..., act=...)`` computes what :func:`deps_kernels.reference.dwconv_bn_act_reference` computes (the
depthwise conv of :mod:`deps_kernels.elastic_dwconv`, ``F.batch_norm`` and the activation) with fewer passes over the
layer's output ``y`` (``[N, C', OH, OW]``, the largest tensor of the block after the expanded input):

- forward, training: the conv kernel also reduces each program's tile of ``y`` to its count, sum and sum of squared
  deviations per channel (merged in a fixed order, Chan et al.'s pairwise update: no atomics, and no cancellation of
  E[y²] − E[y]²); one kernel then reads ``y`` and writes ``act(γ·(y − μ)/σ + β)``. PyTorch's unfused layer reads ``y``
  for the statistics, again to normalise, writes the normalised tensor, and reads it for the activation.
- backward: one kernel reduces ``Σ dz`` and ``Σ dz·ŷ`` per channel (``dz = da · act'(z)``, recomputed from ``y``),
  one writes ``dL/dy``; the depthwise input- and weight-gradient kernels of :mod:`deps_kernels.elastic_dwconv` take it
  from there (with ``grad_out``, the weight gradient is added, scaled, into a gradient buffer as in that op).
- evaluation (``training=False``): the running statistics normalise; the backward is the same without the terms of
  the batch statistics.

Counting the passes over tensors of ``y``'s size (a read or a write each): the forward makes 3 instead of 6 (conv write;
statistics read, normalise read + write, activation read + write), the BN-activation backward 5 instead of 8 (activation
backward 3, BN backward 5), and one such tensor fewer is kept for the backward (``y`` only, not also the normalised
one). With ``x`` of ``X`` elements and ``y`` of ``Y``, the layer's forward + backward moves 3X + 10Y instead of 3X +
16Y: 1.46× less at stride 1, 1.27× at stride 2. The running statistics move inside the forward op (``momentum``,
unbiased variance, as ``F.batch_norm``), so they also move under ``torch.func.grad``. Statistics and accumulation in
fp32 (fp64 for fp64 inputs); ``y``, the output and ``dL/dx`` in ``x``'s dtype and memory format, ``dL/dγ`` and ``dL/dβ``
in ``γ``'s dtype.

Registration as in :mod:`deps_kernels.elastic_dwconv` (whose launchers, tiles and ``torch.library`` helpers this module
uses): the forward and the BN-activation backward are ``triton_op`` (``custom_op`` under the interpreter), and the
public function goes through an ``autograd.Function`` written in the ``setup_context`` style.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from deps_kernels import elastic_dwconv as _E
from deps_kernels.elastic_dwconv import _at, _conv_tile, _tile_coords
from deps_kernels.reference import ACTIVATIONS, check_dwconv_bn_act_args, compute_dtype
from torch import Tensor

__all__ = ["dwconv_bn_act", "INTERPRETED"]

INTERPRETED = _E.INTERPRETED
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}  # the kernels' ACT: 0 none, 1 relu, 2 relu6, 3 h_swish


# --- kernels ------------------------------------------------------------------------------------------------------
# Tiles and addressing are those of the depthwise kernels: [BLOCK_C, BLOCK_H, BLOCK_W] over (channels, rows, columns)
# of the output grid, program (n · tiles_h + tile_h) · tiles_w + tile_w along axis 0 and a channel tile along axis 1.


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.maximum(z, 0.0)
    elif ACT == 2:
        z = tl.minimum(tl.maximum(z, 0.0), 6.0)
    elif ACT == 3:  # h-swish: z · relu6(z + 3) / 6
        z = z * tl.minimum(tl.maximum(z + 3.0, 0.0), 6.0) / 6.0
    return z


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    # d act / dz with PyTorch's conventions at the kinks (threshold_backward, hardtanh_backward, hardswish_backward)
    if ACT == 1:
        d = tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where((z > 0.0) & (z < 6.0), 1.0, 0.0)
    elif ACT == 3:
        d = tl.where(z < -3.0, 0.0, tl.where(z <= 3.0, z / 3.0 + 0.5, 1.0))
    else:
        d = tl.full(z.shape, 1.0, z.dtype)
    return d


@triton.jit
def _sum_positions(v, CL: tl.constexpr):
    # [BLOCK_C, BLOCK_H, BLOCK_W] -> [BLOCK_C]: rows first in channels_last, columns first in NCHW (sm_90 SASS, Triton
    # 3.7: the order that leaves fewer shuffles, e.g. 52 instead of 104 for the two sums of a 32×2×32 bf16 tile)
    if CL:
        total = tl.sum(tl.sum(v, axis=1), axis=1)
    else:
        total = tl.sum(tl.sum(v, axis=2), axis=1)
    return total


@triton.jit
def _dwconv_stats_kernel(
    x_ptr,  # [N, C', H, W], strides (sxn, sxc, sxh, sxw)
    w_ptr,  # [C_w, 1, K_w, K_w] stored kernel (see _conv_tile)
    y_ptr,  # [N, C', OH, OW], strides (syn, syc, syh, syw)
    stats_ptr,  # [programs along axis 0, 3, C'] contiguous, ACC: this tile's count, Σ y and Σ (y - tile mean)²
    C,
    H,
    W,
    OH,
    OW,
    sxn,
    sxc,
    sxh,
    sxw,
    syn,
    syc,
    syh,
    syw,
    CL: tl.constexpr,
    CA: tl.constexpr,
    XA: tl.constexpr,
    YA: tl.constexpr,
    SWC: tl.constexpr,
    SWH: tl.constexpr,
    SWW: tl.constexpr,
    W_OFF: tl.constexpr,
    K: tl.constexpr,
    STRIDE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # the depthwise forward, and the tile's statistics of y as stored (rounded to y's dtype: what BN would read):
    # Σ y, then Σ (y - tile mean)² (two passes over registers: no E[y²] - E[y]² cancellation); the count is the
    # tile's in-range positions, computed rather than reduced
    pid = tl.program_id(0)
    n, oh, ow = _tile_coords(pid, C, OH, OW, BLOCK_C, BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = _conv_tile(x_ptr, w_ptr, n, c, oh, ow, C, H, W, sxn, sxc, sxh, sxw,
                     CL, CA, XA, SWC, SWH, SWW, W_OFF, K, STRIDE, ACC, BLOCK_C, BLOCK_H, BLOCK_W)  # fmt: skip
    c_ok = tl.max_constancy(c < C, (CA,))
    c3, c_ok3 = c[:, None, None], c_ok[:, None, None]
    y_ok = c_ok3 & (oh < OH) & (ow < OW)
    yv = acc.to(y_ptr.dtype.element_ty)
    tl.store(_at(y_ptr, n, c3, oh, ow, syn, syc, syh, syw, CL, YA), yv, mask=y_ok)
    tiles_w = tl.cdiv(OW, BLOCK_W)
    oh0 = ((pid % (tl.cdiv(OH, BLOCK_H) * tiles_w)) // tiles_w) * BLOCK_H
    ow0 = (pid % tiles_w) * BLOCK_W
    count = (tl.minimum(OH - oh0, BLOCK_H) * tl.minimum(OW - ow0, BLOCK_W)).to(ACC)
    v = tl.where(y_ok, yv.to(ACC), 0.0)
    total = _sum_positions(v, CL)
    dev = tl.where(y_ok, v - (total / count)[:, None, None], 0.0)
    m2 = _sum_positions(dev * dev, CL)
    row = stats_ptr + pid.to(tl.int64) * (3 * C) + c
    tl.store(row, tl.zeros([BLOCK_C], dtype=ACC) + count, mask=c_ok)
    tl.store(row + C, total, mask=c_ok)
    tl.store(row + 2 * C, m2, mask=c_ok)


@triton.jit
def _bn_act_kernel(
    y_ptr,  # [N, C', OH, OW], strides (syn, syc, syh, syw)
    out_ptr,  # [N, C', OH, OW], strides (son, soc, soh, sow)
    scale_ptr,  # [C'] ACC: γ / σ
    shift_ptr,  # [C'] ACC: β - μ γ / σ
    C,
    OH,
    OW,
    syn,
    syc,
    syh,
    syw,
    son,
    soc,
    soh,
    sow,
    CL: tl.constexpr,
    CA: tl.constexpr,
    YA: tl.constexpr,
    OA: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # out = act(y · scale + shift)
    n, oh, ow = _tile_coords(tl.program_id(0), C, OH, OW, BLOCK_C, BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = tl.max_constancy(c < C, (CA,))
    c3, ok = c[:, None, None], c_ok[:, None, None] & (oh < OH) & (ow < OW)
    scale = tl.load(scale_ptr + c, mask=c_ok, other=0.0)[:, None, None]
    shift = tl.load(shift_ptr + c, mask=c_ok, other=0.0)[:, None, None]
    yv = tl.load(_at(y_ptr, n, c3, oh, ow, syn, syc, syh, syw, CL, YA), mask=ok, other=0.0).to(ACC)
    a = _act(yv * scale + shift, ACT)
    tl.store(_at(out_ptr, n, c3, oh, ow, son, soc, soh, sow, CL, OA), a.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _bn_act_grad_kernel(
    ga_ptr,  # [N, C', OH, OW] dL/d out, strides (sgn, sgc, sgh, sgw) (any: autograd may hand in expanded zeros)
    y_ptr,  # [N, C', OH, OW], strides (syn, syc, syh, syw)
    gy_ptr,  # REDUCE: [programs along axis 0, 2, C'] ACC partial Σ dz, Σ dz·ŷ; else [N, C', OH, OW] dL/dy, y's strides
    scale_ptr,  # [C'] ACC: γ / σ
    shift_ptr,  # [C'] ACC: β - μ γ / σ
    mean_ptr,  # [C'] ACC: μ
    rstd_ptr,  # [C'] ACC: 1 / σ
    c1_ptr,  # [C'] ACC: mean of dz (0 in evaluation); unused when REDUCE
    c2_ptr,  # [C'] ACC: mean of dz·ŷ (0 in evaluation); unused when REDUCE
    C,
    OH,
    OW,
    sgn,
    sgc,
    sgh,
    sgw,
    syn,
    syc,
    syh,
    syw,
    CL: tl.constexpr,
    CA: tl.constexpr,
    GA: tl.constexpr,
    YA: tl.constexpr,
    ACT: tl.constexpr,
    REDUCE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # z = y · scale + shift, dz = d out · act'(z), ŷ = (y - μ) / σ. REDUCE: this tile's Σ dz and Σ dz·ŷ per channel;
    # else dL/dy = scale · (dz - mean(dz) - ŷ · mean(dz·ŷ)) (BN's backward; the means are over N × OH × OW)
    pid = tl.program_id(0)
    n, oh, ow = _tile_coords(pid, C, OH, OW, BLOCK_C, BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = tl.max_constancy(c < C, (CA,))
    c3, ok = c[:, None, None], c_ok[:, None, None] & (oh < OH) & (ow < OW)
    scale = tl.load(scale_ptr + c, mask=c_ok, other=0.0)[:, None, None]
    shift = tl.load(shift_ptr + c, mask=c_ok, other=0.0)[:, None, None]
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)[:, None, None]
    rstd = tl.load(rstd_ptr + c, mask=c_ok, other=0.0)[:, None, None]
    yv = tl.load(_at(y_ptr, n, c3, oh, ow, syn, syc, syh, syw, CL, YA), mask=ok, other=0.0).to(ACC)
    ga = tl.load(_at(ga_ptr, n, c3, oh, ow, sgn, sgc, sgh, sgw, CL, GA), mask=ok, other=0.0).to(ACC)
    dz = tl.where(ok, ga * _act_grad(yv * scale + shift, ACT), 0.0)
    y_hat = (yv - mean) * rstd
    if REDUCE:
        row = gy_ptr + pid.to(tl.int64) * (2 * C) + c
        tl.store(row, _sum_positions(dz, CL), mask=c_ok)
        tl.store(row + C, _sum_positions(dz * y_hat, CL), mask=c_ok)
    else:
        c1 = tl.load(c1_ptr + c, mask=c_ok, other=0.0)[:, None, None]
        c2 = tl.load(c2_ptr + c, mask=c_ok, other=0.0)[:, None, None]
        gy = scale * (dz - c1 - y_hat * c2)
        tl.store(_at(gy_ptr, n, c3, oh, ow, syn, syc, syh, syw, CL, YA), gy.to(gy_ptr.dtype.element_ty), mask=ok)


# --- launchers ----------------------------------------------------------------------------------------------------


def _grid(y: Tensor, t: _E._Tile) -> tuple[int, int]:
    n, c, oh, ow = (int(d) for d in y.shape)
    return n * triton.cdiv(oh, t.block_h) * triton.cdiv(ow, t.block_w), triton.cdiv(c, t.block_c)


def _pointwise_tile(y: Tensor) -> _E._Tile:
    """The elementwise kernels' tile: the depthwise forward's for a 1×1 kernel over ``y``'s grid, with twice the rows
    in channels_last (32 bf16 elements a thread): the per-tile reductions of the backward's first pass and the
    per-channel loads are then shared by twice the elements (sm_90 SASS, Triton 3.7, bf16: 38 → 27 instructions an
    element for the reduction pass, 30 → 25 for dL/dy, 18 → 14 for the normalisation; at most 110 registers)."""
    t = _E._default_tile("fwd", y, int(y.shape[2]), int(y.shape[3]), 1)
    if _E._channels_last(y):
        t = t._replace(block_h=min(triton.next_power_of_2(int(y.shape[2])), 2 * t.block_h))
    return t


def _forward_stats(
    x: Tensor, weight: Tensor, y: Tensor, k: int, stride: int, tile: _E._Tile | None = None, *, launch=_E._launch
) -> tuple[Tensor, Tensor]:
    """``y[:] = elastic_dwconv(x, weight)`` and ``y``'s per-channel mean and biased variance (ACC dtype)."""
    n, c, h, w = (int(d) for d in x.shape)
    oh, ow = int(y.shape[2]), int(y.shape[3])
    t = tile or _E._default_tile("fwd", x, oh, ow, k)
    grid = _grid(y, t)
    acc = compute_dtype(x.dtype)
    stats = _E._empty((grid[0], 3, c), dtype=acc, device=x.device)
    launch(_dwconv_stats_kernel, grid,
        x, weight, y, stats, c, h, w, oh, ow, *x.stride(), *y.stride(), **_E._weight_consts(weight, k),
        **_E._address_consts(c, t, _E._channels_last(x), XA=x, YA=y),
        K=k, STRIDE=stride, ACC=_E._TL_DTYPE[acc],
        BLOCK_C=t.block_c, BLOCK_H=t.block_h, BLOCK_W=t.block_w, num_warps=t.num_warps,
    )  # fmt: skip
    # Chan et al.'s merge of the tiles' (count, sum, M2), in tile order: deterministic, and no E[y²] - E[y]²
    count, total, m2 = stats.unbind(1)
    n_all = count.sum(0)
    mean = total.sum(0) / n_all
    var = (m2.sum(0) + (count * (total / count - mean) ** 2).sum(0)) / n_all
    return mean, var


def _bn_act(
    y: Tensor, out: Tensor, scale: Tensor, shift: Tensor, act: str, tile: _E._Tile | None = None, *, launch=_E._launch
) -> Tensor:
    """``out[:] = act(y · scale + shift)`` (per-channel ``scale``, ``shift`` in the ACC dtype)."""
    c = int(y.shape[1])
    t = tile or _pointwise_tile(y)
    launch(_bn_act_kernel, _grid(y, t),
        y, out, scale, shift, c, int(y.shape[2]), int(y.shape[3]), *y.stride(), *out.stride(),
        **_E._address_consts(c, t, _E._channels_last(y), YA=y, OA=out),
        ACT=_ACT_CODE[act], ACC=_E._TL_DTYPE[compute_dtype(y.dtype)],
        BLOCK_C=t.block_c, BLOCK_H=t.block_h, BLOCK_W=t.block_w, num_warps=t.num_warps,
    )  # fmt: skip
    return out


def _bn_act_grad(
    ga: Tensor, y: Tensor, gy: Tensor, scale: Tensor, shift: Tensor, mean: Tensor, rstd: Tensor, act: str,
    *, training: bool, tile: _E._Tile | None = None, launch=_E._launch,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``gy[:] = dL/dy`` from ``ga = dL/d out``; returns ``(Σ dz, Σ dz·ŷ)`` per channel (= dL/dβ, dL/dγ; ACC)."""
    n, c, oh, ow = (int(d) for d in y.shape)
    t = tile or _pointwise_tile(y)
    grid = _grid(y, t)
    acc = compute_dtype(y.dtype)
    part = _E._empty((grid[0], 2, c), dtype=acc, device=y.device)
    common = dict(
        **_E._address_consts(c, t, _E._channels_last(y), GA=ga, YA=y),
        ACT=_ACT_CODE[act], ACC=_E._TL_DTYPE[acc],
        BLOCK_C=t.block_c, BLOCK_H=t.block_h, BLOCK_W=t.block_w, num_warps=t.num_warps,
    )  # fmt: skip
    launch(_bn_act_grad_kernel, grid,
        ga, y, part, scale, shift, mean, rstd, mean, rstd, c, oh, ow, *ga.stride(), *y.stride(),
        REDUCE=True, **common,
    )  # fmt: skip
    sum_dz, sum_dz_yhat = part.sum(0).unbind(0)  # in tile order: deterministic
    if training:
        count = n * oh * ow
        c1, c2 = sum_dz / count, sum_dz_yhat / count
    else:  # the running statistics are constants: no terms through μ and σ
        c1 = c2 = torch.zeros_like(sum_dz)
    launch(_bn_act_grad_kernel, grid,
        ga, y, gy, scale, shift, mean, rstd, c1, c2, c, oh, ow, *ga.stride(), *y.stride(),
        REDUCE=False, **common,
    )  # fmt: skip
    return sum_dz, sum_dz_yhat


# --- torch.library registration -----------------------------------------------------------------------------------


def _fake_forward(
    x, weight, bn_weight, bn_bias, running_mean, running_var, kernel_size, stride, training, momentum, eps, act
):
    n, c, h, w = x.shape
    shape = (n, c, _E._out_size(h, kernel_size, stride), _E._out_size(w, kernel_size, stride))
    acc = compute_dtype(x.dtype)
    out = _E._empty_like_layout(x, shape, x.dtype)
    y = _E._empty_like_layout(x, shape, x.dtype)
    return out, y, x.new_empty((c,), dtype=acc), x.new_empty((c,), dtype=acc)


@_E._define("deps::dwconv_bn_act", _fake_forward, mutates_args=("running_mean", "running_var"))
def _dwconv_bn_act_op(
    x: Tensor,
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Optional[Tensor],  # noqa: UP045 (torch 2.6's schema inference needs typing.Optional)
    running_var: Optional[Tensor],  # noqa: UP045
    kernel_size: int,
    stride: int,
    training: bool,
    momentum: float,
    eps: float,
    act: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(out, y, μ, 1/σ)``: the layer's output, the conv's output (saved for the backward), and the statistics that
    normalised it (the batch's in training, the running ones in evaluation)."""
    out, y, mean, rstd = _fake_forward(
        x, weight, bn_weight, bn_bias, running_mean, running_var, kernel_size, stride, training, momentum, eps, act
    )
    acc = mean.dtype
    if training:
        mean_b, var_b = _forward_stats(x, weight, y, kernel_size, stride)
        mean.copy_(mean_b)
        rstd.copy_(torch.rsqrt(var_b + eps))
        if running_mean is not None:
            count = y.numel() // y.shape[1]
            running_mean.mul_(1 - momentum).add_(mean_b.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_((var_b * (count / (count - 1))).to(running_var.dtype), alpha=momentum)
    else:
        if y.numel():  # (an empty batch: no kernel to launch; training rejects it, one value per channel)
            _E._forward(x, weight, y, kernel_size, stride)
        mean.copy_(running_mean)
        rstd.copy_(torch.rsqrt(running_var.to(acc) + eps))
    scale = bn_weight.to(acc) * rstd
    if y.numel():
        _bn_act(y, out, scale, bn_bias.to(acc) - mean * scale, act)
    return out, y, mean, rstd


def _fake_grad_bn_act(grad_out, y, bn_weight, bn_bias, mean, rstd, training, act):
    return _E._empty_like_layout(y, tuple(y.shape), y.dtype), torch.empty_like(bn_weight), torch.empty_like(bn_bias)


@_E._define("deps::dwconv_bn_act_grad_bn_act", _fake_grad_bn_act)
def _grad_bn_act_op(
    grad_out: Tensor,
    y: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    mean: Tensor,
    rstd: Tensor,
    training: bool,
    act: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dy, dL/dγ, dL/dβ)`` from ``dL/d out``."""
    gy, _, _ = _fake_grad_bn_act(grad_out, y, bn_weight, bn_bias, mean, rstd, training, act)
    if not y.numel():  # an empty batch in evaluation
        return gy, torch.zeros_like(bn_weight), torch.zeros_like(bn_bias)
    acc = mean.dtype
    scale = bn_weight.to(acc) * rstd
    sum_dz, sum_dz_yhat = _bn_act_grad(
        grad_out, y, gy, scale, bn_bias.to(acc) - mean * scale, mean, rstd, act, training=training
    )
    # copies: a custom op's outputs may not share storage (both sums are views of one tensor)
    return gy, sum_dz_yhat.to(bn_weight.dtype, copy=True), sum_dz.to(bn_bias.dtype, copy=True)


def _setup_context(ctx, inputs, output):
    x, weight, bn_weight, bn_bias, _, _, kernel_size, stride, training, _, _, act, grad_out, grad_scale = inputs
    _, y, mean, rstd = output
    ctx.mark_non_differentiable(y, mean, rstd)
    ctx.save_for_backward(x, weight, bn_weight, bn_bias, y, mean, rstd)
    ctx.kernel_size, ctx.stride, ctx.training, ctx.act, ctx.grad_scale = kernel_size, stride, training, act, grad_scale
    ctx.grad_out = grad_out  # written by the backward: kept, not saved (see elastic_dwconv._setup_context)


def _backward(ctx, grad_out, _grad_y, _grad_mean, _grad_rstd):
    x, weight, bn_weight, bn_bias, y, mean, rstd = ctx.saved_tensors
    k, s = ctx.kernel_size, ctx.stride
    needs = ctx.needs_input_grad
    dx = dw = dgamma = dbeta = None
    with torch.no_grad():  # not differentiable again (see elastic_dwconv._backward)
        gy, dgamma, dbeta = _grad_bn_act_op(grad_out, y, bn_weight, bn_bias, mean, rstd, ctx.training, ctx.act)
        if needs[0]:
            dx = _E._grad_input_op(gy, x, weight, k, s)
        if ctx.grad_out is not None:
            _E._grad_weight_add_op(gy, x, ctx.grad_out, k, s, ctx.grad_scale)
        elif needs[1]:
            dw = _E._grad_weight_op(gy, x, weight, k, s)
    return dx, dw, dgamma if needs[2] else None, dbeta if needs[3] else None, *[None] * 10


class _DwconvBnAct(torch.autograd.Function):
    """The op with its backward, in the ``setup_context`` style that ``torch.func.grad`` accepts (see
    ``elastic_dwconv._ElasticDwconv``). ``grad_out``/``grad_scale`` are for the backward only."""

    @staticmethod
    def forward(x, weight, bn_weight, bn_bias, running_mean, running_var, kernel_size, stride, training, momentum, eps,
                act, grad_out, grad_scale):  # fmt: skip
        return _dwconv_bn_act_op(
            x, weight, bn_weight, bn_bias, running_mean, running_var, kernel_size, stride, training, momentum, eps, act
        )

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


# --- public API ---------------------------------------------------------------------------------------------------


def dwconv_bn_act(
    x: Tensor,
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    *,
    kernel_size: int | None = None,
    stride: int = 1,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    act: str = "relu",
    grad_out: Tensor | None = None,
    grad_scale: float = 1.0,
) -> Tensor:
    """``act(BN(elastic_dwconv(x, weight)))``: ``x`` ``[N, C', H, W]``, ``weight`` ``[C_max, 1, K_max, K_max]`` (its
    first ``C'`` channels and centre ``kernel_size`` taps, read in place), ``bn_weight``/``bn_bias`` ``[C']``; returns
    ``[N, C', H_out, W_out]`` in ``x``'s dtype and memory format.

    Training: batch statistics; ``running_mean``/``running_var`` (``[C']``, e.g. views of the full buffers), if
    given, move by ``momentum`` in place. Evaluation: they are required and normalise. ``act``: one of
    ``reference.ACTIVATIONS``. ``grad_out``: as in ``elastic_dwconv`` (the weight's gradient is added, times
    ``grad_scale``, into it). One ``ValueError`` for invalid arguments.
    """
    if kernel_size is None and isinstance(weight, Tensor) and weight.dim() == 4:
        kernel_size = weight.shape[-1]
    check_dwconv_bn_act_args(
        x, weight, bn_weight, bn_bias, running_mean, running_var, kernel_size, stride, training, momentum, eps, act,
        grad_out,
    )  # fmt: skip
    if x.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"the Triton depthwise kernels need CUDA tensors; got {x.device} (CPU tensors run under the Triton "
            "interpreter only: set TRITON_INTERPRET=1 before deps_kernels.elastic_dwconv is imported)"
        )
    out, _, _, _ = _DwconvBnAct.apply(
        x, weight, bn_weight, bn_bias, running_mean, running_var, kernel_size, stride, training, float(momentum),
        float(eps), act, grad_out, float(grad_scale),
    )  # fmt: skip
    return out
