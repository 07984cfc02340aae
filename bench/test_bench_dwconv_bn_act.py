"""The depthwise layer — elastic depthwise conv, BN in training mode, activation — three ways, on a GPU.

The stretch goal of the kernels issue: BN statistics from the depthwise kernel's epilogue and the activation fused
(``deps_kernels.dwconv_bn_act``). Shapes: the depthwise layers of OFA-MobileNetV3 w1.0 at 224 px, batch 256 (as in
``bench/test_bench_dwconv.py``), K = 3 and 7 cut from the stored 7×7 kernel, bf16 activations with fp32 parameters (as
under autocast), channels_last and NCHW; h-swish (the later stages' activation; ReLU costs the same passes).

Providers (one pytest-benchmark group per layer × K × layout × pass):
- ``fused``: ``dwconv_bn_act(...)`` — one op, ``run.fuse_dw_bn_act=true``;
- ``unfused``: ``elastic_dwconv`` then ``F.batch_norm`` then ``F.hardswish`` — what the trainer runs with the Triton
  backend alone;
- ``torch``: ``F.conv2d`` (cuDNN, on the sliced weight cast to bf16) then ``F.batch_norm`` and ``F.hardswish``.

Passes: ``fwd`` (training forward: statistics, running statistics moved, no graph) and ``fwd_bwd`` (forward and the
gradients of x, the weight, γ and β). ``extra_info`` as in the dwconv benchmark; ``minimal_bytes`` is the layer's floor
(forward: x read, the output written; backward: the output's gradient and x read, dx written; the saved tensors not
counted), so ``gbps`` compares the three on the same work. Predicted from traffic alone (deps_kernels.dwconv_bn_act's
docstring): forward + backward 3X + 10Y elements instead of 3X + 16Y, 1.46× at stride 1 and 1.27× at stride 2
against ``unfused``, less where the conv kernels are compute-bound (bf16 7×7).

Run on a GPU: ``python -m pytest bench/test_bench_dwconv_bn_act.py -m gpu --benchmark-only
--benchmark-json=dwconv-bn-act.json`` (``bench/gpu_session.sh bnact`` runs the channels_last forward + backward),
then ``python bench/report.py dwconv-bn-act.json --reference torch``. ``DEPS_BENCH_DEVICE=cpu`` runs it at tiny sizes
in the Triton interpreter (tests/test_bench_smoke.py); its times mean nothing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.test_bench_dwconv import BATCH, DEVICE, K_MAX, LAYERS, SMOKE, _conv, _layer_id, _minimal_bytes, time_passes

pytestmark = [] if SMOKE else [pytest.mark.gpu]

KERNELS = [3, 7]
LAYOUTS = ["channels_last", "nchw"]
PASSES = ["fwd", "fwd_bwd"]
PROVIDERS = ["fused", "unfused", "torch"]
MOMENTUM, EPS = 0.1, 1e-5


def _layer(provider, x, w_full, gamma, beta, rm, rv, k, stride):
    if provider == "fused":
        from deps_kernels.dwconv_bn_act import dwconv_bn_act

        return dwconv_bn_act(
            x, w_full, gamma, beta, rm, rv, kernel_size=k, stride=stride, momentum=MOMENTUM, eps=EPS, act="h_swish"
        )
    y = _conv("ours" if provider == "unfused" else "torch", x, w_full, k, stride)  # the dwconv benchmark's two convs
    return F.hardswish(F.batch_norm(y, rm, rv, gamma, beta, True, MOMENTUM, EPS))


# the bottom decorator varies slowest: channels_last (the training layout) before NCHW, so a time cap cuts NCHW first
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("k", KERNELS)
@pytest.mark.parametrize("layer", LAYERS, ids=_layer_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bench_dwconv_bn_act(benchmark, layout, layer, k, pass_, provider):
    c, h, stride = layer
    benchmark.group = f"dwconv+bn+act {pass_} bf16 {layout} {_layer_id(layer)} K{k}"
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(BATCH, c, h, h, device=DEVICE, dtype=torch.bfloat16, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w_full = (torch.randn(c, 1, K_MAX, K_MAX, device=DEVICE, generator=g) * 0.1).requires_grad_()
    gamma = (1 + 0.1 * torch.randn(c, device=DEVICE, generator=g)).requires_grad_()
    beta = (0.1 * torch.randn(c, device=DEVICE, generator=g)).requires_grad_()
    rm, rv = torch.zeros(c, device=DEVICE), torch.ones(c, device=DEVICE)
    x.requires_grad_()
    out = _layer(provider, x, w_full, gamma, beta, rm, rv, k, stride)
    ga = torch.randn_like(out)

    def fwd():
        with torch.no_grad():
            _layer(provider, x, w_full, gamma, beta, rm, rv, k, stride)

    def fwd_bwd():
        torch.autograd.grad(_layer(provider, x, w_full, gamma, beta, rm, rv, k, stride), (x, w_full, gamma, beta), ga)

    op = {"fwd": fwd, "fwd_bwd": fwd_bwd}[pass_]
    time_passes(
        benchmark, op, _minimal_bytes(pass_, x, out), subject="dwconv_bn_act", provider=provider,
        layer=_layer_id(layer), kernel=k, layout=layout, dtype="bf16", act="h_swish", pass_=pass_,
        shape=[BATCH, c, h, h], stride=stride,
    )  # fmt: skip
