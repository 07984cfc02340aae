"""The gradient engine under the functional step: ``torch.func.vjp`` and ``grad`` against ``torch.autograd.grad``.

:func:`deps_core.step.functional_step` differentiates each term's loss with respect to the active-slice views of the
shared weights with a ``torch.func`` transform (DESIGN.md). This subject times that one call for one term, the full
model's loss of the FM-warmup step (forward and backward, nothing accumulated), by four engines on the same views,
forward and batch:

- ``torch.func.vjp``: ``deps_core.step.grad_and_value_once`` (``vjp`` and its pullback with ``create_graph=False``),
  which ``functional_step`` calls;
- ``torch.func.grad``: ``grad_and_value``, as ``functional_step`` did until 2026-12-06 (it always passes
  ``create_graph=True`` to autograd, so that transforms nest: the backward then runs in grad mode);
- ``autograd.grad``: ``torch.autograd.grad`` with the views made leaves (``detach().requires_grad_()``, same storage);
- ``autograd.grad create_graph``: the same with ``create_graph=True``.

The last three rows give the cost of ``torch.func.grad`` over plain autograd and how much of it ``create_graph=True``
alone explains; the first, whether ``vjp`` without it matches plain autograd. The differences are a few per cent,
less than the drift of a shared machine between one provider's rounds and the next's, so the engines are not separate
benchmarks: each timed round runs all of them in turn (rotating which goes first) and keeps each one's time in
``extra_info["interleaved"]``; ``bench/report.py`` gives a row per engine with the median of its per-round ratio to
the first. On CUDA each engine's peak memory beyond what was allocated before its call goes into the table too
(``peak_mib``: ``create_graph`` keeps more gradient buffers alive at once). ``tests/test_bench_baselines.py`` checks
in float64 that the engines return the same gradients.

Settings as ``bench/test_bench_step.py``: CPU ``ofa_mbv3_32`` w0.5, 32 px, batch 64, fp32; GPU (``gpu`` marker)
OFA-MBV3 w1.0, 224 px, bf16 autocast, batch 256.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
import torch
from torch import Tensor
from torch.func import grad_and_value

from bench.test_bench_step import SETTINGS, _batch, _info, _plan, _supernet
from deps_core.distill import LossConfig, term_loss
from deps_core.runtime import tune_cpu_allocator
from deps_core.step import detached_state, grad_and_value_once
from deps_core.strategies import SubnetTerm
from deps_core.supernet import Supernet

ENGINES = ["torch.func.vjp", "torch.func.grad", "autograd.grad", "autograd.grad create_graph"]


def term_gradients(
    engine: str,
    net: Supernet,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    term: SubnetTerm,
    images: Tensor,
    labels: Tensor,
) -> tuple[dict[str, Tensor], Tensor]:
    """``(∇ of term's loss w.r.t. each active-slice view of params, loss)`` computed by ``engine`` (one of
    ``ENGINES``); a ``ce`` or ``label_smoothing`` term (no distillation target). BN running statistics move as in
    the step."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}; got {engine!r}")
    views = net.active_params(term.arch, params)
    bufs = net.active_buffers(term.arch, buffers)
    dropout_p = net.spec.dropout if term.dropout else 0.0

    def loss_fn(v: dict[str, Tensor]) -> tuple[Tensor, Tensor]:  # (loss, detached logits), as the step's
        logits = net.functional_forward(
            v, bufs, images, term.arch, training=True, dropout_p=dropout_p, update_bn_stats=term.update_bn_stats
        )
        return term_loss(term.loss, logits, labels, None, LossConfig()), logits.detach()

    if engine == "torch.func.vjp":
        grads, (loss, _) = grad_and_value_once(loss_fn, views)
        return grads, loss
    if engine == "torch.func.grad":
        grads, (loss, _) = grad_and_value(loss_fn, has_aux=True)(views)
        return grads, loss
    leaves = {n: v.detach().requires_grad_() for n, v in views.items()}
    loss, _ = loss_fn(leaves)
    grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=engine.endswith("create_graph"))
    return {n: g.detach() for n, g in zip(leaves, grads)}, loss.detach()


def _bench(benchmark, device: str) -> None:
    if device == "cpu":
        tune_cpu_allocator()
    net = _supernet(device)
    (term,) = _plan(net, "fm_warmup")  # the full model alone
    x, y = _batch(device)
    params, buffers = detached_state(net)
    space, width, batch, res, _, autocast, rounds = SETTINGS[device]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    benchmark.group = (
        f"gradient engine, full model, {device}, {space} w{width}, {res}px, batch {batch}, "
        f"{'bf16' if autocast else 'fp32'} (interleaved)"
    )
    times: dict[str, list[float]] = {e: [] for e in ENGINES}
    peak: dict[str, dict[str, float]] = {e: {} for e in ENGINES}

    def one_round() -> None:
        # the engines take turns (rotating who goes first), so drift of a shared machine hits all of them alike
        shift = len(times[ENGINES[0]]) % len(ENGINES)
        for engine in ENGINES[shift:] + ENGINES[:shift]:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                term_gradients(engine, net, params, buffers, term, x, y)
            sync()
            times[engine].append(time.perf_counter() - start)
            if device == "cuda":  # what the call held at its peak beyond what was allocated before it
                peak[engine] = {"peak_mib": round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)}

    one_round()  # warm-up, not kept
    for t in times.values():
        t.clear()
    benchmark.pedantic(one_round, rounds=len(ENGINES) * rounds, iterations=1)
    extra = {"per_provider": peak} if device == "cuda" else {}
    _info(benchmark, device, net, [term], provider="interleaved", interleaved=times, **extra)


def test_bench_grad_engine_cpu(benchmark):
    _bench(benchmark, "cpu")


@pytest.mark.gpu
def test_bench_grad_engine_gpu(benchmark):
    _bench(benchmark, "cuda")
