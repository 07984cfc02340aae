"""Step time of the functional ε-weighted step vs the plain-autograd step, on the same plan.

CPU: MBV3-32 (``ofa_mbv3_32``, width 0.5), 32×32 channels_last (as the loaders deliver), batch 32, fp32, a DεpS
shrinking step (full + min + 2 uniform), with the ``deps`` program's CPU allocator setting (``deps_core.runtime``).
GPU (``gpu`` marker): OFA-MBV3 w1.0 at 224, bf16 autocast, batch 256, the same kind of step.
Providers share one group so pytest-benchmark prints them side by side; the ratio goes to ``extra_info``.
"""

from __future__ import annotations

import platform

import pytest
import torch

from deps_core.accumulate import GradAccumulator
from deps_core.runtime import tune_cpu_allocator
from deps_core.schedules import Progress
from deps_core.spaces import create_supernet
from deps_core.step import autograd_step, detached_state, functional_step
from deps_core.strategies import DepsStrategy

PROVIDERS = ["functional", "autograd"]


def _setup(space: str, batch: int, resolution: int, device: str, width: float = 1.0):
    net = (
        create_supernet(
            space,
            num_classes=1000 if resolution > 64 else 10,
            width_mult=width,
            generator=torch.Generator().manual_seed(0),
        )
        .to(device)
        .train()
    )
    strategy = DepsStrategy(net.spec, total=10, lr=0.1, lr_batch=128, global_batch=batch)
    plan = strategy.plan(Progress(9, 0, 10), seed=0)  # shrinking, ε = 1: full + min + 2 uniform
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, resolution, resolution, generator=g).to(device)
    y = torch.randint(0, net.num_classes, (batch,), generator=g).to(device)
    return net, plan, x, y


def _runner(provider: str, net, plan, x, y, autocast: bool):
    device = x.device.type
    params, buffers = detached_state(net)
    acc = GradAccumulator(params)

    def functional():
        acc.zero_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            functional_step(net, params, buffers, acc, plan.terms, x, y)
        if device == "cuda":
            torch.cuda.synchronize()

    def autograd():
        net.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            autograd_step(net, plan.terms, x, y)
        if device == "cuda":
            torch.cuda.synchronize()

    return {"functional": functional, "autograd": autograd}[provider]


def _info(benchmark, device: str, **extra):
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    benchmark.extra_info.update(device=name, torch=torch.__version__, threads=torch.get_num_threads(), **extra)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bench_shrinking_step_cpu(benchmark, provider):
    benchmark.group = "shrinking step, CPU, ofa_mbv3_32 w0.5, batch 32, fp32"
    tune_cpu_allocator()
    net, plan, x, y = _setup("ofa_mbv3_32", 32, 32, "cpu", width=0.5)
    x = x.contiguous(memory_format=torch.channels_last)
    fn = _runner(provider, net, plan, x, y, autocast=False)
    _info(benchmark, "cpu", terms=len(plan.terms))
    benchmark.pedantic(fn, rounds=8, warmup_rounds=2)


@pytest.mark.gpu
@pytest.mark.parametrize("provider", PROVIDERS)
def test_bench_shrinking_step_gpu(benchmark, provider):
    benchmark.group = "shrinking step, GPU, ofa_mbv3_w1.0, 224, batch 256, bf16"
    net, plan, x, y = _setup("ofa_mbv3_w1.0", 256, 224, "cuda")
    x = x.contiguous(memory_format=torch.channels_last)
    fn = _runner(provider, net, plan, x, y, autocast=True)
    _info(benchmark, "cuda", terms=len(plan.terms))
    benchmark.pedantic(fn, rounds=10, warmup_rounds=3)
