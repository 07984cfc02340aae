"""Elastic depthwise convolution in Triton: the active window of the stored kernel read in place, and a weight
gradient that can be added, scaled, straight into a full-size gradient buffer.

``elastic_dwconv(x, weight, kernel_size=K, stride=s)`` is the op of :mod:`deps_kernels.reference` (OFA's elastic
kernel and width, Cai et al. ICLR 2020): ``x`` ``[N, C', H, W]`` convolved with the first ``C'`` channels and the
centre ``K×K`` taps of ``weight`` ``[C_max, 1, K_max, K_max]``, 'same' padding ``K // 2``, stride 1 or 2. The window
is never copied: the kernels get the weight's strides and the window's first tap. fp32/bf16/fp64 inputs, NCHW,
channels_last or any other strides; accumulation in fp32 (fp64 for fp64 inputs); the output has ``x``'s dtype and
layout.

The fused weight gradient (DεpS eq. (4), ``G[active] += ε · ∇L``): with ``grad_out`` (a tensor shaped like ``weight``,
e.g. the weight's view of :class:`deps_core.accumulate.GradAccumulator`'s flat buffer), the backward adds
``grad_scale · dL/dW`` into ``grad_out``'s window as a side effect and returns **no gradient for the weight** (autograd
sees ``None``; ``torch.func.grad`` reports zeros). Without it, the backward returns ``dW`` shaped like ``weight``
(zeros outside the window), so ``torch.func.grad`` and autograd work as for any op. Each backward call adds once
(``retain_graph`` and a second ``backward`` add twice).

Determinism: ``dW`` is a reduction over ``N × H_out × W_out``. Each program of the first weight-gradient kernel sums a
fixed, contiguous range of output rows into its own row of a scratch buffer ``[splits, K², C']``; a second kernel
sums those rows in order and writes (or adds into) the target. No atomics, so two runs give identical bits (the
result depends only on the shapes and the device's SM count, which fix the split).

Performance was first judged without a GPU, from the SASS Triton compiles for sm_90 (``bench/inspect_kernels.py``:
registers, load widths, instructions per element); the GPU benchmarks (``bench/gpu_session.sh``) are the measurement.

Registration: four ``torch.library.triton_op`` (torch ≥ 2.6): the forward, dx, dW, and the in-place ``grad_out +=
scale · dW``; ``torch.compile`` sees their kernels. The forward op's autograd is registered with ``register_autograd``
(setup_context style), and the same three functions make an ``autograd.Function`` that :func:`elastic_dwconv` calls,
because the generated custom-op autograd does not work under ``torch.func`` (see :class:`_ElasticDwconv`). Under
``TRITON_INTERPRET=1`` (CPU tests) the ops are opaque ``torch.library.custom_op`` with explicit fake kernels instead:
``triton_op`` traces its implementation as the fake kernel, and interpreted kernels cannot run on fake tensors
(``DEPS_KERNELS_TRITON_OP=1`` forces the ``triton_op`` registration there too, for its eager path in the CPU tests).
"""

import functools
import math
import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from deps_kernels.reference import check_elastic_dwconv_args, compute_dtype
from torch import Tensor

__all__ = ["elastic_dwconv", "INTERPRETED"]

# --- kernels ------------------------------------------------------------------------------------------------------
# Tiles are [BLOCK_C, BLOCK_H, BLOCK_W] (channels, rows, columns). Every tensor is addressed through its own strides,
# so one kernel serves NCHW and channels_last; Triton specializes stride arguments equal to 1, and its coalescing
# pass then lays threads out along the contiguous axis (W for NCHW, C for channels_last).


@triton.jit
def _tile_coords(pid, C, OH, OW, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # pid = (n · tiles_h + tile_h) · tiles_w + tile_w over the [N, OH, OW] grid; channels come from program_id(1)
    tiles_w = tl.cdiv(OW, BLOCK_W)
    tiles_hw = tl.cdiv(OH, BLOCK_H) * tiles_w
    n = (pid // tiles_hw).to(tl.int64)
    oh = ((pid % tiles_hw) // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
    ow = (pid % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    return n, oh[None, :, None], ow[None, None, :]


@triton.jit
def _at(ptr, n, c, h, w, sn, sc, sh, sw, CL: tl.constexpr, ALIGN: tl.constexpr):
    # ptr + the offset of element (n, c, h, w), told that the offset along the axes other than the contiguous one (C
    # in channels_last, W otherwise) is a multiple of ALIGN (the launcher's _align): Triton records an integer
    # argument's divisibility only when it is a multiple of 16, so the rows of a 72-channel layer (144 bytes,
    # 16-byte aligned) were otherwise taken to be unaligned
    if CL:
        off = n * sn + h * sh + w * sw
        last = c * sc
    else:
        off = n * sn + c * sc + h * sh
        last = w * sw
    if ALIGN > 1 and off.numel > 1:  # (one position: Triton folds the offset to a scalar, which cannot carry it)
        off = tl.multiple_of(off, (ALIGN,) * len(off.shape))
    return ptr + off + last


@triton.jit
def _conv_tile(
    x_ptr,
    w_ptr,
    n,
    c,
    oh,
    ow,
    C,
    H,
    W,
    sxn,
    sxc,
    sxh,
    sxw,
    CL: tl.constexpr,
    CA: tl.constexpr,
    XA: tl.constexpr,
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
    # the forward's [BLOCK_C, BLOCK_H, BLOCK_W] tile of y in ACC, at channels c, output rows oh and columns ow:
    # y[n, c, oh, ow] = Σ_ij x[n, c, oh·s + i - K//2, ow·s + j - K//2] · w[c, w_off + i, w_off + j]
    # (shared by the forward kernel and the forward with BN statistics of deps_kernels.dwconv_bn_act; inlined)
    c_ok = tl.max_constancy(c < C, (CA,))  # C is a multiple of CA: the mask is whole over each vector of channels
    c3, c_ok3 = c[:, None, None], c_ok[:, None, None]
    w_base = w_ptr + tl.minimum(c, C - 1) * SWC + W_OFF * (SWH + SWW)  # tap (0, 0) of the window
    acc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=ACC)
    for i in tl.static_range(K):
        ih = oh * STRIDE + (i - K // 2)
        row_ok = c_ok3 & (ih >= 0) & (ih < H)
        for j in tl.static_range(K):
            iw = ow * STRIDE + (j - K // 2)
            x = _at(x_ptr, n, c3, ih, iw, sxn, sxc, sxh, sxw, CL, XA)
            xv = tl.load(x, mask=row_ok & (iw >= 0) & (iw < W), other=0.0)
            wv = tl.load(w_base + (i * SWH + j * SWW))
            acc += xv.to(ACC) * wv.to(ACC)[:, None, None]
    return acc


@triton.jit
def _dwconv_fwd_kernel(
    x_ptr,  # [N, C', H, W], strides (sxn, sxc, sxh, sxw)
    w_ptr,  # [C_w, 1, K_w, K_w] stored kernel; tap (i, j) of channel c at c·swc + (w_off + i)·swh + (w_off + j)·sww
    y_ptr,  # [N, C', OH, OW], strides (syn, syc, syh, syw)
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
    CL: tl.constexpr,  # channels_last (C contiguous) or not (W contiguous)
    CA: tl.constexpr,  # a power of two dividing C (up to 16)
    XA: tl.constexpr,  # _align of x and of y
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
    # grid (N · tiles(OH) · tiles(OW), tiles(C'))
    n, oh, ow = _tile_coords(tl.program_id(0), C, OH, OW, BLOCK_C, BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = _conv_tile(x_ptr, w_ptr, n, c, oh, ow, C, H, W, sxn, sxc, sxh, sxw,
                     CL, CA, XA, SWC, SWH, SWW, W_OFF, K, STRIDE, ACC, BLOCK_C, BLOCK_H, BLOCK_W)  # fmt: skip
    c3, c_ok3 = c[:, None, None], tl.max_constancy(c < C, (CA,))[:, None, None]
    y_ok = c_ok3 & (oh < OH) & (ow < OW)
    y = _at(y_ptr, n, c3, oh, ow, syn, syc, syh, syw, CL, YA)
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=y_ok)


@triton.jit
def _dwconv_grad_input_kernel(
    gy_ptr,  # [N, C', OH, OW] dL/dy, strides (sgn, sgc, sgh, sgw) (any: autograd may hand in expanded zeros)
    w_ptr,  # [C_w, 1, K_w, K_w] stored kernel, as in the forward
    dx_ptr,  # [N, C', H, W] dL/dx, strides (sdn, sdc, sdh, sdw)
    C,
    H,
    W,
    OH,
    OW,
    sgn,
    sgc,
    sgh,
    sgw,
    sdn,
    sdc,
    sdh,
    sdw,
    CL: tl.constexpr,  # channels_last (C contiguous) or not (W contiguous)
    CA: tl.constexpr,  # a power of two dividing C (up to 16)
    GA: tl.constexpr,  # _align of gy and of dx
    DA: tl.constexpr,
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
    # grid (N · tiles(⌈H/s⌉) · tiles(⌈W/s⌉), tiles(C')): dx[n, c, h, w] = Σ_ij gy[n, c, (h + K//2 - i) / s,
    # (w + K//2 - j) / s] w[c, i, j] over the taps where the division is exact and in range (a gather: no write
    # conflicts). Which taps those are depends only on (h mod s, w mod s): a program takes a tile (a, b) of the
    # ⌈H/s⌉ × ⌈W/s⌉ grid and computes dx at (a·s + ph, b·s + pw) for each of the s² phases in turn, each with its own
    # taps only, so a stride-2 dx element costs ~K²/4 loads instead of K² mostly masked ones
    n, a, b = _tile_coords(tl.program_id(0), C, tl.cdiv(H, STRIDE), tl.cdiv(W, STRIDE), BLOCK_C, BLOCK_H, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = tl.max_constancy(c < C, (CA,))  # C is a multiple of CA: the mask is whole over each vector of channels
    c3, c_ok3 = c[:, None, None], c_ok[:, None, None]
    w_base = w_ptr + tl.minimum(c, C - 1) * SWC + W_OFF * (SWH + SWW)  # tap (0, 0) of the window
    for ph in tl.static_range(STRIDE):
        for pw in tl.static_range(STRIDE):
            acc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=ACC)
            for i in tl.static_range(K):
                if (ph + K // 2 - i) % STRIDE == 0:  # a compile-time test: this phase's rows of taps
                    oh = a + (ph + K // 2 - i) // STRIDE
                    row_ok = c_ok3 & (oh >= 0) & (oh < OH)
                    for j in tl.static_range(K):
                        if (pw + K // 2 - j) % STRIDE == 0:
                            ow = b + (pw + K // 2 - j) // STRIDE
                            g_at = _at(gy_ptr, n, c3, oh, ow, sgn, sgc, sgh, sgw, CL, GA)
                            g = tl.load(g_at, mask=row_ok & (ow >= 0) & (ow < OW), other=0.0)
                            wv = tl.load(w_base + (i * SWH + j * SWW))
                            acc += g.to(ACC) * wv.to(ACC)[:, None, None]
            ih = a * STRIDE + ph
            iw = b * STRIDE + pw
            dx_ok = c_ok3 & (ih < H) & (iw < W)
            dx = _at(dx_ptr, n, c3, ih, iw, sdn, sdc, sdh, sdw, CL, DA)
            tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=dx_ok)


@triton.jit
def _dwconv_grad_weight_partial_kernel(
    gy_ptr,  # [N, C', OH, OW] dL/dy, strides (sgn, sgc, sgh, sgw)
    x_ptr,  # [N, C', H, W], strides (sxn, sxc, sxh, sxw)
    part_ptr,  # [splits, K·K, C'] contiguous, ACC dtype: row `split` holds this program's partial dW (tap-major)
    N,
    C,
    H,
    W,
    OH,
    OW,
    rows_per_split,
    sgn,
    sgc,
    sgh,
    sgw,
    sxn,
    sxc,
    sxh,
    sxw,
    CL: tl.constexpr,  # channels_last (C contiguous) or not (W contiguous)
    CA: tl.constexpr,  # a power of two dividing C (up to 16)
    GA: tl.constexpr,  # _align of gy and of x
    XA: tl.constexpr,
    K: tl.constexpr,
    STRIDE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_T: tl.constexpr,  # next_power_of_2(K·K)
):
    # grid (tiles(C'), splits). A row of work is (n, tile_h): BLOCK_H output rows of image n, swept BLOCK_W columns at
    # a time; program `split` sums rows [split · per, (split + 1) · per) of
    # dW[c, i, j] = Σ gy[n, c, oh, ow] x[n, c, oh·s + i - K//2, ow·s + j - K//2].
    # The tap is an axis of the tile, [taps, channels, rows, columns]: each (tap, position) product is accumulated
    # elementwise, and positions are summed once at the end, so the loops have no cross-thread reduction (summing each
    # tile per tap cost 49 reductions, with their shuffles and barriers, per tile), and the column loop no division.
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = tl.max_constancy(c < C, (CA,))  # C is a multiple of CA: the mask is whole over each vector of channels
    split = tl.program_id(1)
    c4 = c[None, :, None, None]
    t = tl.arange(0, BLOCK_T)[:, None, None, None]
    di = t // K - K // 2  # the tap's offset from the centre, rows and columns
    tap_ok = (t < K * K) & c_ok[None, :, None, None]
    col = tl.arange(0, BLOCK_W)[None, None, None, :]
    c3 = c[:, None, None]
    col3 = tl.arange(0, BLOCK_W)[None, None, :]
    icol = col * STRIDE + t % K - K // 2  # input column of (tap, column) in the first column tile
    acc = tl.zeros([BLOCK_T, BLOCK_C, BLOCK_H, BLOCK_W], dtype=ACC)
    tiles_h = tl.cdiv(OH, BLOCK_H)
    start = split * rows_per_split
    end = tl.minimum(start + rows_per_split, N * tiles_h)
    for r in range(start, end):
        n = (r // tiles_h).to(tl.int64)
        oh = (r % tiles_h) * BLOCK_H + tl.arange(0, BLOCK_H)[None, None, :, None]
        ih = oh * STRIDE + di
        row_ok = tap_ok & (oh < OH) & (ih >= 0) & (ih < H)
        # dy is loaded [channels, rows, columns] and broadcast over the taps after its conversion: built with the tap
        # axis, the load was repeated (and converted) once per register repetition of the tap axis
        oh3 = (r % tiles_h) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :, None]
        g_ok = c_ok[:, None, None] & (oh3 < OH)
        g_row = _at(gy_ptr, n, c3, oh3, col3, sgn, sgc, sgh, sgw, CL, GA)
        x_row = _at(x_ptr, n, c4, ih, icol, sxn, sxc, sxh, sxw, CL, XA)
        for ow0 in range(0, OW, BLOCK_W):
            g_step = ow0 * sgw
            x_step = (ow0 * STRIDE) * sxw
            if CL:  # whole positions: multiples of the alignment too
                g_step = tl.multiple_of(g_step, GA)
                x_step = tl.multiple_of(x_step, XA)
            g = tl.load(g_row + g_step, mask=g_ok & (col3 < OW - ow0), other=0.0).to(ACC)
            iw = icol + ow0 * STRIDE
            x_ok = row_ok & (col < OW - ow0) & (iw >= 0) & (iw < W)
            xv = tl.load(x_row + x_step, mask=x_ok, other=0.0).to(ACC)
            acc += g[None, :, :, :] * xv
    total = tl.sum(tl.sum(acc, axis=3), axis=2)  # [taps, channels]
    taps = tl.arange(0, BLOCK_T)[:, None]
    part = part_ptr + split.to(tl.int64) * (K * K * C) + taps * C + c[None, :]
    tl.store(part, total, mask=(taps < K * K) & (c[None, :] < C))


@triton.jit
def _dwconv_grad_weight_reduce_kernel(
    part_ptr,  # [splits, K·K, C'] contiguous, ACC dtype (from the partial kernel)
    out_ptr,  # [C_w, 1, K_w, K_w], strides (soc, soh, sow): dW (written whole) or grad_out (its window += scale · dW)
    scale_ptr,  # [1] in out's dtype: grad_scale (a float argument would be rounded to fp32)
    C,
    C_w,
    K_w,
    w_off,
    splits,
    soc,
    soh,
    sow,
    K: tl.constexpr,
    ACC: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # grid (tiles(C_w · K_w · K_w)): element e = (c, kh, kw) of the target, row-major; the splits are summed in
    # index order, so the result does not depend on how the programs were scheduled
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = e < C_w * K_w * K_w
    c = e // (K_w * K_w)
    kh = (e % (K_w * K_w)) // K_w
    kw = e % K_w
    i = kh - w_off
    j = kw - w_off
    active = in_range & (c < C) & (i >= 0) & (i < K) & (j >= 0) & (j < K)
    src = part_ptr + (i * K + j) * C + c
    total = tl.zeros([BLOCK], dtype=ACC)
    for split in range(splits):
        total += tl.load(src + split * (K * K * C), mask=active, other=0.0)
    dst = out_ptr + c * soc + kh * soh + kw * sow
    if ACCUMULATE:
        old = tl.load(dst, mask=active, other=0.0)
        scale = tl.load(scale_ptr)
        tl.store(dst, old + scale * total.to(old.dtype), mask=active)
    else:
        tl.store(dst, total.to(out_ptr.dtype.element_ty), mask=in_range)


# --- launchers ----------------------------------------------------------------------------------------------------

INTERPRETED = not isinstance(_dwconv_fwd_kernel, triton.runtime.JITFunction)  # TRITON_INTERPRET=1 at import
# The CUDA registration (triton_op + wrap_triton) is used whenever the kernels are compiled. In the interpreter it runs
# eagerly but cannot be traced (fake tensors), so there the ops are custom_op + register_fake; DEPS_KERNELS_TRITON_OP=1
# (read at import) forces the CUDA registration anyway, so the CPU tests can run its eager path (tests/kernels).
TRITON_OP = not INTERPRETED or os.environ.get("DEPS_KERNELS_TRITON_OP") == "1"
_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def _kernel(fn):
    # triton_op sees the kernels only through wrap_triton; under custom_op the kernels are called as they are
    return torch.library.wrap_triton(fn) if TRITON_OP else fn


def _launch(kernel, grid, *args, **kwargs) -> None:
    """How the launchers start a kernel. They take it as their ``launch`` argument, so a tool can record the exact
    arguments instead (bench/inspect_kernels.py compiles them for a CUDA target without a GPU)."""
    _kernel(kernel)[grid](*args, **kwargs)


class _Tile(NamedTuple):
    block_c: int
    block_h: int
    block_w: int
    num_warps: int


def _channels_last(t: Tensor) -> bool:
    return t.stride(1) == 1 and t.stride(3) != 1


def _channel_block(c: int, widest: int) -> int:
    """Channels per channels_last tile: ``widest`` (128 bytes; fewer for fewer channels) unless the last tile would
    leave more than 1/8 of the programs' lanes idle — the expand-derived widths are multiples of 8, e.g. 72 in
    64-channel tiles runs 128 — then the largest of a half and a quarter of it (≥ 32 bytes per position, whole
    sectors) that does not, else the least idle."""
    top = min(widest, triton.next_power_of_2(c))
    options = [b for b in (top, top // 2, top // 4) if b >= min(top, max(1, widest // 4))]
    waste = [triton.cdiv(c, b) * b / c for b in options]
    fit = [b for b, x in zip(options, waste) if x <= 1.125]
    return fit[0] if fit else options[waste.index(min(waste))]


def _tile(
    c: int, h: int, w: int, channels_last: bool, elem_size: int, k: int, *, wgrad: bool = False, phases: int = 1
) -> _Tile:
    """The tile of a program for kernel size ``k`` over an ``h × w`` grid (``phases``: how many stride phases a dx
    program computes its tile at, stride²).

    Forward and input gradient, channels_last: each thread holds one 16-byte vector of channels at two positions
    (2048 elements in 4 warps for bf16, 1024 for fp32), so each of its scalar weight loads (the channel stride of the
    stored kernel is K_max², never a vector) serves two positions; a stride-2 dx program, which already works at four
    phases, keeps 1024 (at 2048 its 7×7 bf16 code reached 255 registers and spilled). NCHW: 1024 elements in 4 warps,
    8 per thread; for 7×7, 512 elements of at most 8 rows, 4 per thread (there each element's 49 loads are scalar, and
    1024-element tiles of up to 32 rows hit 255 registers and spilled). All on sm_90 with Triton 3.6's and 3.7's
    ptxas (bench/inspect_kernels.py). Weight gradient, whose tile has a tap axis of ``next_power_of_2(K²)`` in front:
    ~4096 (tap, element) products, in 4 warps (2 for NCHW rows of ≥ 32 columns).

    NCHW: W is contiguous, so a row of up to 64 columns per tile (≥ 128 contiguous bytes at stride 1; at stride 2 the
    skipped columns are the next tap's and hit L1), rows to fill the tile, and small planes (14², 7²) take several
    channels so no program is mostly masked. channels_last: C is contiguous, so 128 bytes of channels (32 fp32,
    64 bf16: 16-byte loads), then columns, then rows.
    """
    p2 = triton.next_power_of_2
    taps = p2(k * k) if wgrad else 1
    small = not wgrad and not channels_last and k >= 7
    if wgrad:
        budget = max(1, 4096 // taps)
    elif channels_last:
        budget = 1024 if phases > 1 else max(1024, 4096 // elem_size)
    else:
        budget = 512 if small else 1024
    if channels_last:
        block_c = min(_channel_block(c, max(1, 128 // elem_size)), budget)
        block_w = min(p2(w), max(1, budget // block_c), 32)
        block_h = min(p2(h), max(1, budget // (block_c * block_w)))
    else:
        block_w = min(p2(w), 64, budget)
        block_h = min(p2(h), max(1, budget // block_w), 8 if small else budget)
        block_c = min(p2(c), max(1, budget // (block_h * block_w)))
    elements = taps * block_c * block_h * block_w
    # dW in NCHW with rows of ≥ 32 columns: 2 warps (64 products a thread), so the warps lie along W in both its dy
    # and (tap, x) tiles: with 4, Triton 3.6 split them over taps and rows differently and converted dy's layout
    # through shared memory (two barriers) every trip, and each row's address and mask work was shared by half as
    # many products. Narrower planes keep 4 warps (with 2, the 14² and 7² ones spilled)
    if wgrad:
        per_thread = 64 if not channels_last and block_w >= 32 else 8
    else:
        per_thread = 4 if small else max(8, budget // 128)
    return _Tile(block_c, block_h, block_w, num_warps=max(1, min(4, elements // (32 * per_thread))))


def _default_tile(kernel: str, x: Tensor, oh: int, ow: int, k: int, stride: int = 1) -> _Tile:
    """The tile a launcher takes when given none: ``fwd`` and ``dw`` tile the output grid ``oh × ow``, ``dx`` the
    input grid divided by the stride (``x``: the activation, or its gradient for ``dx`` — same shape and layout; each
    dx program covers the ``stride²`` phases of its tile); ``k`` the kernel size."""
    c, h, w = (int(d) for d in x.shape[1:])
    dx = kernel == "dx"
    grid = (triton.cdiv(h, stride), triton.cdiv(w, stride)) if dx else (oh, ow)
    phases = stride * stride if dx else 1
    return _tile(c, *grid, _channels_last(x), x.element_size(), k, wgrad=kernel == "dw", phases=phases)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # the interpreter: a few splits, so the ordered reduction is exercised


def _default_splits(rows: int, tiles_c: int, sm_count: int) -> int:
    """How many programs share the weight gradient's ``rows`` rows of work (image, tile of output rows) per channel
    tile: ~8 programs per SM in all; a split never gets less than one row."""
    return max(1, min(rows, triton.cdiv(8 * sm_count, tiles_c)))


def _empty(shape, *, dtype: torch.dtype, device: torch.device, memory_format=torch.contiguous_format) -> Tensor:
    # every output and scratch buffer of the ops comes from here (the tests poison it with NaN)
    return torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)


def _empty_like_layout(x: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format
    return _empty(shape, dtype=dtype, device=x.device, memory_format=fmt)


def _pow2_factor(n: int, most: int = 16) -> int:
    """The largest power of two up to ``most`` (a power of two: the tile's channels) dividing ``n``: the kernels'
    channel masks are whole over that many channels (Triton knows an integer argument's divisibility only when it is
    a multiple of 16, so the masks of a 72-channel layer were taken to vary channel by channel, and its loads went 2
    bytes at a time; a constancy wider than the tile broke Triton 3.7's lowering)."""
    return math.gcd(n, most) if n else most


def _align(t: Tensor, cl: bool) -> int:
    """What the kernels' ``_at`` may assume of ``t`` addressed as channels_last (``cl``) or not: the largest power of
    two, up to 16 bytes of elements, dividing the stride of every axis but the contiguous one (C or W; 1 if that axis
    is not contiguous). Axes of size 1 are never stepped along."""
    inner = 1 if cl else 3
    if t.stride(inner) != 1 and t.shape[inner] != 1:
        return 1
    a = max(1, 16 // t.element_size())
    while a > 1 and any(t.stride(d) % a for d in range(4) if d != inner and t.shape[d] != 1):
        a //= 2
    return a


def _address_consts(c: int, tile: _Tile, cl: bool, **tensors: Tensor) -> dict:
    """The kernels' addressing constants: ``CL`` (channels_last), ``CA`` (the power of two dividing the channel count,
    up to the tile's channels) and, per keyword, the named tensor's :func:`_align` in that layout."""
    return dict(CL=cl, CA=_pow2_factor(c, tile.block_c), **{name: _align(t, cl) for name, t in tensors.items()})


def _out_size(size: int, k: int, stride: int) -> int:
    return (size + 2 * (k // 2) - k) // stride + 1


def _weight_consts(weight: Tensor, k: int) -> dict[str, int]:
    """The stored kernel's strides and the offset of the centre ``k × k`` window: compile-time constants."""
    return dict(SWC=weight.stride(0), SWH=weight.stride(2), SWW=weight.stride(3), W_OFF=(weight.shape[-1] - k) // 2)


def _forward(
    x: Tensor, weight: Tensor, y: Tensor, k: int, stride: int, tile: _Tile | None = None, *, launch=_launch
) -> Tensor:
    """y[:] = elastic_dwconv(x, weight); every element of ``y`` written."""
    n, c, h, w = (int(d) for d in x.shape)  # tiles and grids are concrete even when tracing with SymInts
    oh, ow = int(y.shape[2]), int(y.shape[3])
    t = tile or _default_tile("fwd", x, oh, ow, k)
    grid = (n * triton.cdiv(oh, t.block_h) * triton.cdiv(ow, t.block_w), triton.cdiv(c, t.block_c))
    launch(_dwconv_fwd_kernel, grid,
        x, weight, y, c, h, w, oh, ow, *x.stride(), *y.stride(), **_weight_consts(weight, k),
        **_address_consts(c, t, _channels_last(x), XA=x, YA=y),
        K=k, STRIDE=stride, ACC=_TL_DTYPE[compute_dtype(x.dtype)],
        BLOCK_C=t.block_c, BLOCK_H=t.block_h, BLOCK_W=t.block_w, num_warps=t.num_warps,
    )  # fmt: skip
    return y


def _grad_input(
    gy: Tensor, weight: Tensor, dx: Tensor, k: int, stride: int, tile: _Tile | None = None, *, launch=_launch
) -> Tensor:
    """dx[:] = dL/dx; every element of ``dx`` written."""
    n, c, h, w = (int(d) for d in dx.shape)
    oh, ow = int(gy.shape[2]), int(gy.shape[3])
    t = tile or _default_tile("dx", dx, oh, ow, k, stride)
    hs, ws = triton.cdiv(h, stride), triton.cdiv(w, stride)  # the grid of (a, b): each program does s² phases
    grid = (n * triton.cdiv(hs, t.block_h) * triton.cdiv(ws, t.block_w), triton.cdiv(c, t.block_c))
    launch(_dwconv_grad_input_kernel, grid,
        gy, weight, dx, c, h, w, oh, ow, *gy.stride(), *dx.stride(), **_weight_consts(weight, k),
        **_address_consts(c, t, _channels_last(dx), GA=gy, DA=dx),
        K=k, STRIDE=stride, ACC=_TL_DTYPE[compute_dtype(dx.dtype)],
        BLOCK_C=t.block_c, BLOCK_H=t.block_h, BLOCK_W=t.block_w, num_warps=t.num_warps,
    )  # fmt: skip
    return dx


def _grad_weight(
    gy: Tensor,
    x: Tensor,
    out: Tensor,
    k: int,
    stride: int,
    *,
    accumulate: bool,
    scale: float = 1.0,
    tile: _Tile | None = None,
    splits: int | None = None,
    sm_count: int | None = None,
    launch=_launch,
) -> Tensor:
    """``out`` (shaped like the stored weight): ``= dW`` (every element written, zeros outside the window) or, with
    ``accumulate``, ``out[:C', :, window, window] += scale · dW`` (nothing else touched)."""
    n, c, h, w = (int(d) for d in x.shape)
    oh, ow = int(gy.shape[2]), int(gy.shape[3])
    acc = compute_dtype(x.dtype)
    t = tile or _default_tile("dw", x, oh, ow, k)
    tiles_c = triton.cdiv(c, t.block_c)
    rows = n * triton.cdiv(oh, t.block_h)  # the kernel's rows of work: (image, tile of output rows)
    if splits is None:
        splits = _default_splits(rows, tiles_c, sm_count or _sm_count(x.device))
    per = triton.cdiv(rows, splits)
    splits = triton.cdiv(rows, per)  # none empty
    part = _empty((splits, k * k, c), dtype=acc, device=x.device)
    consts = _address_consts(c, t, _channels_last(x), GA=gy, XA=x)
    # the alignment hints only in channels_last: in NCHW, Triton 3.7 then converted a tile's layout through shared
    # memory (two barriers) every row, and W-rows are read 2 bytes at a time whatever their alignment
    if not consts["CL"]:
        consts.update(GA=1, XA=1)
    launch(_dwconv_grad_weight_partial_kernel, (tiles_c, splits),
        gy, x, part, n, c, h, w, oh, ow, per, *gy.stride(), *x.stride(),
        **consts,
        K=k, STRIDE=stride, ACC=_TL_DTYPE[acc],
        BLOCK_C=t.block_c, BLOCK_H=t.block_h, BLOCK_W=t.block_w, BLOCK_T=triton.next_power_of_2(k * k),
        num_warps=t.num_warps,
    )  # fmt: skip
    scale_t = torch.full((1,), scale, dtype=out.dtype, device=out.device)
    c_w, k_w, block = int(out.shape[0]), int(out.shape[-1]), 256
    launch(_dwconv_grad_weight_reduce_kernel, (triton.cdiv(c_w * k_w * k_w, block),),
        part, out, scale_t, c, c_w, k_w, (k_w - k) // 2, splits, out.stride(0), out.stride(2), out.stride(3),
        K=k, ACC=_TL_DTYPE[acc], ACCUMULATE=accumulate, BLOCK=block, num_warps=4,
    )  # fmt: skip
    return out


# --- torch.library registration -----------------------------------------------------------------------------------


def _define(name: str, fake, mutates_args: tuple[str, ...] = ()):
    def register(fn):
        if TRITON_OP:
            return torch.library.triton_op(name, mutates_args=mutates_args)(fn)
        op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
        op.register_fake(fake)
        return op

    return register


def _fake_forward(x, weight, kernel_size, stride, grad_out, grad_scale):
    n, c, h, w = x.shape
    return _empty_like_layout(x, (n, c, _out_size(h, kernel_size, stride), _out_size(w, kernel_size, stride)), x.dtype)


@_define("deps::elastic_dwconv", _fake_forward)
def _elastic_dwconv_op(
    x: Tensor,
    weight: Tensor,
    kernel_size: int,
    stride: int,
    grad_out: Optional[Tensor],  # noqa: UP045 (torch 2.6's schema inference needs typing.Optional)
    grad_scale: float,
) -> Tensor:
    # grad_out and grad_scale are for the backward (see _setup_context)
    y = _fake_forward(x, weight, kernel_size, stride, grad_out, grad_scale)
    if y.numel():
        _forward(x, weight, y, kernel_size, stride)
    return y


def _fake_grad_input(grad_y, x, weight, kernel_size, stride):
    return _empty_like_layout(x, tuple(x.shape), x.dtype)


@_define("deps::elastic_dwconv_grad_input", _fake_grad_input)
def _grad_input_op(grad_y: Tensor, x: Tensor, weight: Tensor, kernel_size: int, stride: int) -> Tensor:
    # x only gives dx its shape, dtype and layout
    dx = _fake_grad_input(grad_y, x, weight, kernel_size, stride)
    if dx.numel():
        if grad_y.numel():
            _grad_input(grad_y, weight, dx, kernel_size, stride)
        else:
            dx.zero_()
    return dx


def _fake_grad_weight(grad_y, x, weight, kernel_size, stride):
    return _empty(weight.shape, dtype=weight.dtype, device=weight.device)


@_define("deps::elastic_dwconv_grad_weight", _fake_grad_weight)
def _grad_weight_op(grad_y: Tensor, x: Tensor, weight: Tensor, kernel_size: int, stride: int) -> Tensor:
    # weight only gives dW its shape and dtype
    dw = _fake_grad_weight(grad_y, x, weight, kernel_size, stride)
    if grad_y.numel():
        _grad_weight(grad_y, x, dw, kernel_size, stride, accumulate=False)
    else:
        dw.zero_()
    return dw


def _fake_grad_weight_add(grad_y, x, grad_out, kernel_size, stride, grad_scale):
    return None


@_define("deps::elastic_dwconv_grad_weight_add_", _fake_grad_weight_add, mutates_args=("grad_out",))
def _grad_weight_add_op(
    grad_y: Tensor, x: Tensor, grad_out: Tensor, kernel_size: int, stride: int, grad_scale: float
) -> None:
    if grad_y.numel():
        _grad_weight(grad_y, x, grad_out, kernel_size, stride, accumulate=True, scale=grad_scale)


def _setup_context(ctx, inputs, output):
    x, weight, kernel_size, stride, grad_out, grad_scale = inputs
    ctx.save_for_backward(x, weight)
    ctx.kernel_size, ctx.stride, ctx.grad_scale = kernel_size, stride, grad_scale
    # Kept as an attribute, not saved: the backward writes into it, and a saved tensor's version check would fail
    # for the next op whose buffer is a view of the same flat storage.
    ctx.grad_out = grad_out


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    k, s = ctx.kernel_size, ctx.stride
    dx = dw = None
    # Not differentiable again (no double backward). torch.func.grad runs backwards with create_graph=True, so without
    # no_grad the backward ops would be dispatched to their (absent) autograd.
    with torch.no_grad():
        if ctx.needs_input_grad[0]:
            dx = _grad_input_op(grad_y, x, weight, k, s)
        if ctx.grad_out is not None:  # fused: grad_out[window] += grad_scale · dW, and no gradient for the weight
            _grad_weight_add_op(grad_y, x, ctx.grad_out, k, s, ctx.grad_scale)
        elif ctx.needs_input_grad[1]:
            dw = _grad_weight_op(grad_y, x, weight, k, s)
    return dx, dw, None, None, None, None


_elastic_dwconv_op.register_autograd(_backward, setup_context=_setup_context)


class _ElasticDwconv(torch.autograd.Function):
    """The same forward, setup_context and backward as an ``autograd.Function``: the autograd that
    ``register_autograd`` generates for a custom op has no ``setup_context`` and fails under ``torch.func``
    transforms (pytorch/pytorch#168393, #170834), so the public function goes through this class, which both
    ``torch.func.grad`` and ``torch.compile`` (dynamo traces autograd.Function) accept. Not supported: compiling a
    ``torch.func.grad`` of it (dynamo then calls the op with grad-tracking tensors and reaches the generated
    autograd, which raises; hiding the op from it with ``no_grad`` gave silently wrong gradients in torch 2.13)."""

    @staticmethod
    def forward(x, weight, kernel_size, stride, grad_out, grad_scale):
        return _elastic_dwconv_op(x, weight, kernel_size, stride, grad_out, grad_scale)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


# --- public API ---------------------------------------------------------------------------------------------------


def elastic_dwconv(
    x: Tensor,
    weight: Tensor,
    *,
    kernel_size: int | None = None,
    stride: int = 1,
    grad_out: Tensor | None = None,
    grad_scale: float = 1.0,
) -> Tensor:
    """Depthwise conv of ``x`` ``[N, C', H, W]`` with the first ``C'`` channels and the centre ``kernel_size`` taps
    (default: all ``K_max``) of ``weight`` ``[C_max, 1, K_max, K_max]``, read in place; returns ``[N, C', H_out,
    W_out]`` in ``x``'s dtype and memory format.

    ``grad_out`` (shaped like ``weight``, e.g. a view of a gradient accumulator): the backward adds
    ``grad_scale · dL/dweight`` into its window and gives the weight no gradient (see the module docstring).
    Raises ``ValueError`` for invalid arguments, and for CPU tensors unless ``TRITON_INTERPRET=1`` was set before
    this module was imported.
    """
    if kernel_size is None and isinstance(weight, Tensor) and weight.dim() == 4:
        kernel_size = weight.shape[-1]
    check_elastic_dwconv_args(x, weight, kernel_size, stride, grad_out)
    if x.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"the Triton depthwise kernels need CUDA tensors; got {x.device} (CPU tensors run under the Triton "
            "interpreter only: set TRITON_INTERPRET=1 before deps_kernels.elastic_dwconv is imported)"
        )
    return _ElasticDwconv.apply(x, weight, kernel_size, stride, grad_out, float(grad_scale))
