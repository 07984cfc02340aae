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

Run on a GPU (all 792 take roughly 10–15 min including Triton's compiles; select with ``-k``, e.g. ``-k bf16``):
``.venv/bin/python -m pytest bench/test_bench_dwconv.py -m gpu --benchmark-only --benchmark-columns=median,iqr``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu

BATCH = 256
K_MAX = 7
# (C, H_in, stride) of OFA-MBV3 w1.0's depthwise layers at 224 px
LAYERS = [
    (16, 112, 1),  # first block (fixed, e = 1)
    (96, 112, 2),  # stage 1 entry, e = 6
    (72, 56, 2),  # stage 2 entry, e = 3
    (144, 56, 1),  # stage 1, e = 6
    (144, 56, 2),  # stage 2 entry, e = 6
    (240, 28, 1),  # stage 2, e = 6
    (240, 28, 2),  # stage 3 entry, e = 6
    (480, 14, 1),  # stage 3/4, e = 6
    (672, 14, 1),  # stage 4, e = 6
    (672, 14, 2),  # stage 5 entry, e = 6
    (960, 7, 1),  # stage 5, e = 6
]
KERNELS = [3, 5, 7]
LAYOUTS = ["nchw", "channels_last"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PASSES = ["fwd", "bwd", "fwd+bwd"]
PROVIDERS = ["ours", "torch"]


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
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", KERNELS)
@pytest.mark.parametrize("layer", LAYERS, ids=_layer_id)
def test_bench_elastic_dwconv(benchmark, layer, k, layout, dtype, pass_, provider):
    import triton

    c, h, stride = layer
    benchmark.group = f"dwconv {pass_} {dtype} {layout} {_layer_id(layer)} K{k}"
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(BATCH, c, h, h, device="cuda", dtype=DTYPES[dtype], generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w_full = torch.randn(c, 1, K_MAX, K_MAX, device="cuda", generator=g) * 0.1
    x.requires_grad_()
    w_full.requires_grad_()
    y = _conv(provider, x, w_full, k, stride)
    gy = torch.randn_like(y)

    def fwd():
        with torch.no_grad():
            _conv(provider, x, w_full, k, stride)
        torch.cuda.synchronize()

    def bwd():
        torch.autograd.grad(y, (x, w_full), gy, retain_graph=True)
        torch.cuda.synchronize()

    def fwd_bwd():
        torch.autograd.grad(_conv(provider, x, w_full, k, stride), (x, w_full), gy)
        torch.cuda.synchronize()

    fn = {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd}[pass_]
    fn()  # compile / pick the cuDNN algorithm outside the timing
    benchmark.pedantic(fn, rounds=20, warmup_rounds=3, iterations=1)
    minimal = _minimal_bytes(pass_, x, y)
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        shape=[BATCH, c, h, h],
        stride=stride,
        minimal_bytes=minimal,
    )
    if benchmark.stats:  # absent under --benchmark-disable
        benchmark.extra_info["gbps_at_median"] = round(minimal / benchmark.stats.stats.median / 1e9, 1)
