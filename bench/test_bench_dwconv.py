"""The elastic depthwise conv (``deps_kernels.elastic_dwconv``) vs PyTorch's depthwise conv, on a GPU.

Shapes: the depthwise layers of OFA-MobileNetV3 w1.0 at 224 px, batch 256 (``(C, H_in, stride)``: the channels are
``C_in · e`` of a block, e ∈ {3, 4, 6}), each at K = 3, 5, 7 cut from the stored 7×7 kernel, NCHW and channels_last,
bf16 and fp32 activations (the stored weight stays fp32, as under autocast). Passes: forward, backward (dx and dW from
a retained graph), forward + backward.

Providers (one pytest-benchmark group per shape × K × layout × dtype × pass, so they print side by side):
- ``ours``: ``elastic_dwconv(x, w_full, kernel_size=K)`` reading the window of the full fp32 kernel in place;
- ``torch``: ``F.conv2d(x, w_full[:C, :, win, win].to(x.dtype), groups=C)`` (cuDNN), the cast included as autocast
  would do it on every call.

``extra_info``: device, torch/triton versions, the minimal bytes of the pass (every activation read and written once:
forward ``x + y``, backward ``gy + x + dx``, both their sum) and the achieved GB/s. Small layers (the 7×7 and 14×14
ones) fit in the 50 MB L2 of an H100, so their GB/s can exceed DRAM bandwidth.

Timing: each timed call runs the pass ``ops_per_call`` times back to back and synchronizes once (``ops_per_call``
chosen per case so a call holds ≥ 1 ms of GPU work, at most 64), so the small layers are not timed as launch latency
alone; ``bench/report.py`` divides by it, so every figure is per pass.

Run on a GPU (all 792 take several minutes including Triton's compiles; select with ``-k``, e.g. ``-k "bf16 and
fwd_bwd"``; ``bench/gpu_session.sh`` runs the selection that fits a lease):
``python -m pytest bench/test_bench_dwconv.py -m gpu --benchmark-only --benchmark-json=dwconv.json``, then
``python bench/report.py dwconv.json --ceilings ceilings.json`` (``bench/ceilings.py`` measures the copy bandwidth)
for the summary against cuDNN's best layout and the memory roofline.

``DEPS_BENCH_DEVICE=cpu`` (with ``TRITON_INTERPRET=1``) runs the same code at tiny sizes in the Triton interpreter:
the smoke test in ``tests/test_bench_smoke.py`` keeps this file working between GPU sessions; its times mean nothing.
"""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
import torch.nn.functional as F

from bench.ceilings import median_seconds
from bench.dwconv_layers import LAYERS as OFA_MBV3_LAYERS

DEVICE = os.environ.get("DEPS_BENCH_DEVICE", "cuda")
SMOKE = DEVICE != "cuda"  # the interpreter at tiny sizes: the code path, not a measurement
pytestmark = [] if SMOKE else [pytest.mark.gpu]
if SMOKE:  # read when deps_kernels.elastic_dwconv is first imported (lazily, in _conv)
    os.environ.setdefault("TRITON_INTERPRET", "1")

BATCH = 2 if SMOKE else 256
K_MAX = 7
ROUNDS = 2 if SMOKE else 20
LAYERS = list(OFA_MBV3_LAYERS)
if SMOKE:
    LAYERS = [(6, 9, 1), (5, 8, 2)]  # odd, non-power-of-two channels and sizes
KERNELS = [3, 5, 7]
LAYOUTS = ["nchw", "channels_last"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PASSES = ["fwd", "bwd", "fwd_bwd"]
PROVIDERS = ["ours", "torch"]
MIN_CALL_SECONDS = 1e-3
MAX_OPS_PER_CALL = 64


def _layer_id(layer):
    c, h, s = layer
    return f"C{c}xH{h}s{s}"


def _conv(provider: str, x: torch.Tensor, w_full: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    if provider == "ours":
        from deps_kernels.elastic_dwconv import elastic_dwconv

        return elastic_dwconv(x, w_full, kernel_size=k, stride=stride)
    c, start = x.shape[1], (K_MAX - k) // 2
    w = w_full[:c, :, start : start + k, start : start + k].to(x.dtype)
    return F.conv2d(x, w, None, stride, k // 2, 1, c)


def _minimal_bytes(pass_: str, x: torch.Tensor, y: torch.Tensor) -> int:
    fwd = (x.numel() + y.numel()) * x.element_size()
    bwd = (y.numel() + 2 * x.numel()) * x.element_size()
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[pass_]


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _ops_per_call(op) -> int:
    """Back-to-back passes per timed call: enough for ≥ 1 ms of device work (one pass timed after a warm-up)."""
    if SMOKE:
        return 2
    seconds = max(median_seconds(op, torch.device("cuda"), repeats=1, warmup=1), 1e-7)
    return max(1, min(MAX_OPS_PER_CALL, math.ceil(MIN_CALL_SECONDS / seconds)))


# the bottom decorator varies slowest: all bf16 cases run before the fp32 ones, so a time cap cuts fp32 first
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", KERNELS)
@pytest.mark.parametrize("layer", LAYERS, ids=_layer_id)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_bench_elastic_dwconv(benchmark, layer, k, layout, dtype, pass_, provider):
    c, h, stride = layer
    benchmark.group = f"dwconv {pass_} {dtype} {layout} {_layer_id(layer)} K{k}"
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(BATCH, c, h, h, device=DEVICE, dtype=DTYPES[dtype], generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w_full = torch.randn(c, 1, K_MAX, K_MAX, device=DEVICE, generator=g) * 0.1
    x.requires_grad_()
    w_full.requires_grad_()
    y = _conv(provider, x, w_full, k, stride)
    gy = torch.randn_like(y)

    def fwd():
        with torch.no_grad():
            _conv(provider, x, w_full, k, stride)

    def bwd():
        torch.autograd.grad(y, (x, w_full), gy, retain_graph=True)

    def fwd_bwd():
        torch.autograd.grad(_conv(provider, x, w_full, k, stride), (x, w_full), gy)

    op = {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd_bwd}[pass_]
    time_passes(
        benchmark, op, _minimal_bytes(pass_, x, y), subject="dwconv", provider=provider, layer=_layer_id(layer),
        kernel=k, layout=layout, dtype=dtype, pass_=pass_, shape=[BATCH, c, h, h], stride=stride,
    )  # fmt: skip


def time_passes(benchmark, op, minimal_bytes: int, **extra) -> None:
    """Time ``op`` (one pass) with ``benchmark``: a first call outside the timing (compiles, cuDNN's choice), then
    calls of :func:`_ops_per_call` passes each, synchronized once; ``extra_info`` gets ``extra``, the device and
    versions, ``ops_per_call``, ``minimal_bytes`` and the achieved GB/s on them."""
    op()
    _sync()
    reps = _ops_per_call(op)

    def call():
        for _ in range(reps):
            op()
        _sync()

    t0 = time.perf_counter()
    benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(
        **extra,
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (Triton interpreter)",
        torch=torch.__version__,
        triton=_triton_version(),
        ops_per_call=reps,
        minimal_bytes=minimal_bytes,
        wall_seconds=round(time.perf_counter() - t0, 3),
    )
    if benchmark.stats:  # absent under --benchmark-disable
        benchmark.extra_info["gbps"] = float(f"{minimal_bytes * reps / benchmark.stats.stats.median / 1e9:.4g}")


def _triton_version() -> str:
    import triton

    return triton.__version__
