"""Step time: the DεpS shrinking step of ``deps_core`` against the research-code step and the static-equivalent.

Providers (one pytest-benchmark group per subject, so they print side by side):

- ``deps``: :func:`deps_core.step.functional_step` (per-term ``torch.func.vjp`` on active-slice views,
  ε-weighted accumulation into one flat fp32 buffer; the depthwise op of ``deps_core.ops``, Triton on CUDA);
- ``deps_fused`` (GPU): the same with ``fuse_dw_grad=True`` (the Triton kernel adds the depthwise weight gradients
  straight into the accumulator);
- ``deps_fused_bn`` (GPU): ``deps_fused`` with ``fuse_dw_bn_act=True`` too (each depthwise conv, its BN and activation
  as one op, ``deps_kernels.dwconv_bn_act``);
- ``deps_cudnn`` (GPU): ``deps`` with PyTorch's depthwise conv (``dw_backend="torch"``) instead of the Triton kernel,
  so the kernel's share of the step is measured apart from the functional step's;
- ``autograd``: :func:`deps_core.step.autograd_step`, the same supernet with ``(w · loss).backward()`` per term;
- ``eager``: ``bench/baselines/ofa_eager.py``, the research code's way (subnet as module state, ``.contiguous()``
  weight copies every forward, PyTorch's depthwise conv, ``.backward()`` per subnet);
- ``static``: ``bench/baselines/static.py``, the same subnets pre-extracted as static networks (weight sharing free).

Subjects: the shrinking step (full + 3 subnets: DεpS's plan at ε = 1 with in-place KD), the FM-warmup step (full
model alone), and ``deps``'s step as k (terms per step) grows 1..8. CPU: ``ofa_mbv3_32`` width 0.5, 32×32
channels_last, batch 64, fp32, with the ``deps`` program's allocator setting. GPU (``gpu`` marker): OFA-MBV3 w1.0 at
224, bf16 autocast, batch 256, channels_last. CUDA is synchronized inside every timed call; the device, versions and
the plan's MACs go to ``extra_info``. Tables: ``python bench/report.py`` on the ``--benchmark-json`` output.
"""

from __future__ import annotations

import platform

import pytest
import torch

from bench.baselines.ofa_eager import OFAEagerNet, eager_step
from bench.baselines.static import StaticSubnets, static_step
from deps_core.accumulate import GradAccumulator
from deps_core.arch import uniform_arch
from deps_core.runtime import tune_cpu_allocator
from deps_core.schedules import Progress
from deps_core.spaces import create_supernet
from deps_core.step import autograd_step, detached_state, functional_step
from deps_core.strategies import DepsStrategy, SubnetTerm

PROVIDERS = ["deps", "autograd", "eager", "static"]
GPU_PROVIDERS = ["deps", "deps_fused", "deps_fused_bn", "deps_cudnn", "autograd", "eager", "static"]
SETTINGS = {
    # device: space, width, batch, resolution, classes, autocast, rounds
    "cpu": ("ofa_mbv3_32", 0.5, 64, 32, 10, False, 5),
    "cuda": ("ofa_mbv3_w1.0", 1.0, 256, 224, 1000, True, 20),
}


def _supernet(device: str):
    space, width, _, _, classes, _, _ = SETTINGS[device]
    net = create_supernet(space, num_classes=classes, width_mult=width, generator=torch.Generator().manual_seed(0))
    return net.to(device).train()


def _batch(device: str):
    _, _, batch, res, classes, _, _ = SETTINGS[device]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, res, res, generator=g).contiguous(memory_format=torch.channels_last)
    return x.to(device), torch.randint(0, classes, (batch,), generator=g).to(device)


def _plan(net, phase: str):
    strategy = DepsStrategy(net.spec, total=10, lr=0.1, lr_batch=128, global_batch=64, k=4, ramp_epochs=1.0)
    progress = Progress(0, 0, 10) if phase == "fm_warmup" else Progress(9, 0, 10)  # warm-up; shrinking at ε = 1
    terms = strategy.plan(progress, seed=0).terms
    assert (len(terms) == 1) == (phase == "fm_warmup")
    return terms


def _k_terms(net, k: int):
    """The full model and k − 1 uniform subnets (fixed generator), ε = 1, in-place KD."""
    g = torch.Generator().manual_seed(k)
    terms = [SubnetTerm(net.max_arch(), 1.0, "ce", dropout=True, role="full")]
    terms += [SubnetTerm(uniform_arch(net.spec, g), 1.0, "inplace_kd", role="uniform") for _ in range(k - 1)]
    return terms


def _runner(provider: str, net, terms, x, y, autocast: bool):
    device = x.device.type
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def amp():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=autocast)

    if provider in ("deps", "deps_fused", "deps_fused_bn", "deps_cudnn"):
        params, buffers = detached_state(net)
        acc = GradAccumulator(params)
        # (CUDA only) depthwise dW added into the accumulator by the Triton kernel; conv + BN + activation as one op
        fusions = dict(fuse_dw_grad=provider.startswith("deps_fused"), fuse_dw_bn_act=provider == "deps_fused_bn")
        backend = "torch" if provider == "deps_cudnn" else "auto"

        def run():
            acc.zero_()
            with amp():
                functional_step(net, params, buffers, acc, terms, x, y, dw_backend=backend, **fusions)
            sync()

    elif provider == "autograd":

        def run():
            net.zero_grad(set_to_none=True)
            with amp():
                autograd_step(net, terms, x, y)
            sync()

    elif provider == "eager":
        eager = OFAEagerNet(net)

        def run():
            net.zero_grad(set_to_none=True)
            with amp():
                eager_step(eager, terms, x, y)
            sync()

    else:
        static = StaticSubnets(net, terms, memory_format=torch.channels_last)

        def run():
            static.zero_grad()
            with amp():
                static_step(static, x, y)
            sync()

    return run


def _info(benchmark, device: str, net, terms, **extra):
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    benchmark.extra_info.update(
        device=name,
        torch=torch.__version__,
        triton=triton_version,
        threads=torch.get_num_threads(),
        terms=len(terms),
        plan_mmacs=round(sum(net.macs(t.arch) for t in terms) / 1e6, 2),
        **extra,
    )


def _bench(benchmark, device: str, provider: str, phase: str, k: int | None = None):
    if device == "cpu":
        tune_cpu_allocator()
    net = _supernet(device)
    terms = _plan(net, phase) if k is None else _k_terms(net, k)
    x, y = _batch(device)
    *_, autocast, rounds = SETTINGS[device]
    space, width, batch, res, *_ = SETTINGS[device]
    dtype = "bf16" if autocast else "fp32"
    what = "vs k" if k is not None else phase.replace("_", "-")
    benchmark.group = f"step {what}, {device}, {space} w{width}, {res}px, batch {batch}, {dtype}"
    _info(benchmark, device, net, terms, provider=provider, phase=phase, k=len(terms))
    if k is not None:
        rounds = max(3, rounds // 2)  # eight sizes: fewer rounds each
    # two untimed rounds: with one, the first timed round of the process's first benchmark still ran ~20 % slow
    # (CPU, whichever provider came first; 2026-12-06)
    benchmark.pedantic(_runner(provider, net, terms, x, y, autocast), rounds=rounds, warmup_rounds=2)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bench_shrinking_step_cpu(benchmark, provider):
    _bench(benchmark, "cpu", provider, "shrinking")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bench_fm_warmup_step_cpu(benchmark, provider):
    _bench(benchmark, "cpu", provider, "fm_warmup")


@pytest.mark.parametrize("k", range(1, 9))
def test_bench_step_vs_k_cpu(benchmark, k):
    _bench(benchmark, "cpu", "deps", "k_sweep", k=k)


@pytest.mark.gpu
@pytest.mark.parametrize("provider", GPU_PROVIDERS)
def test_bench_shrinking_step_gpu(benchmark, provider):
    _bench(benchmark, "cuda", provider, "shrinking")


@pytest.mark.gpu
@pytest.mark.parametrize("provider", GPU_PROVIDERS)
def test_bench_fm_warmup_step_gpu(benchmark, provider):
    _bench(benchmark, "cuda", provider, "fm_warmup")


@pytest.mark.gpu
@pytest.mark.parametrize("k", range(1, 9))
def test_bench_step_vs_k_gpu(benchmark, k):
    _bench(benchmark, "cuda", "deps", "k_sweep", k=k)
