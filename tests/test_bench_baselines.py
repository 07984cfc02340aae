"""The benchmark's baselines compute what deps_core computes (float64), so their timings compare the same work."""

from __future__ import annotations

import pytest
import torch

from bench.baselines.ofa_eager import OFAEagerNet, eager_step
from bench.baselines.static import StaticSubnets, static_step
from bench.test_bench_grad_engine import ENGINES, term_gradients
from deps_core.schedules import Progress
from deps_core.spaces import create_supernet
from deps_core.step import autograd_step, detached_state
from deps_core.strategies import DepsStrategy, SubnetTerm


def _setup(seed: int, kernel_transform: bool):
    torch.manual_seed(seed)
    net = create_supernet(
        "ofa_mbv3_32",
        num_classes=10,
        width_mult=0.25,
        kernel_transform=kernel_transform,
        generator=torch.Generator().manual_seed(seed),
    ).double()
    with torch.no_grad():  # non-trivial BN statistics and transform matrices
        for name, p in net.named_parameters():
            if ".dw.m" in name:
                p.add_(0.05 * torch.randn_like(p))
        for name, b in net.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    strategy = DepsStrategy(net.spec, total=10, lr=0.1, lr_batch=128, global_batch=6)
    plan = strategy.plan(Progress(7, 0, 10), seed=seed)  # shrinking: full + min + 2 uniform, in-place KD
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(6, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    return net.train(), plan, x, y


def _grads_and_buffers(net):
    grads = {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in net.named_parameters()}
    return grads, {k: b.clone() for k, b in net.named_buffers()}


@pytest.mark.parametrize("seed,kernel_transform", [(0, True), (1, False)])
def test_eager_baseline_equals_deps_step(seed, kernel_transform):
    net, plan, x, y = _setup(seed, kernel_transform)
    assert any(t.loss == "inplace_kd" for t in plan.terms) and len({t.arch for t in plan.terms}) > 2
    start = {k: b.clone() for k, b in net.named_buffers()}

    torch.manual_seed(seed + 10)  # dropout masks: both steps draw them in the same order
    ref_losses = autograd_step(net, plan.terms, x, y).losses
    ref_grads, ref_bufs = _grads_and_buffers(net)

    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, b in net.named_buffers():
            b.copy_(start[k])
    eager = OFAEagerNet(net)
    assert {id(p) for p in eager.parameters()} <= {id(p) for p in net.parameters()}  # shared, not copied
    torch.manual_seed(seed + 10)
    losses = eager_step(eager, plan.terms, x, y)
    grads, bufs = _grads_and_buffers(net)

    torch.testing.assert_close(torch.stack(losses), torch.stack(ref_losses), rtol=1e-12, atol=1e-12)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-10, atol=1e-12, msg=f"gradient of {k}")
    for k in ref_bufs:
        torch.testing.assert_close(bufs[k], ref_bufs[k], rtol=1e-12, atol=1e-12, msg=f"buffer {k}")


def test_static_equivalent_runs_the_same_subnets():
    """Each pre-extracted static subnet gives its supernet subnet's loss and (sliced) gradients."""
    net, plan, x, y = _setup(3, True)
    static = StaticSubnets(net, plan.terms)
    net.eval()
    ref = [net(x, t.arch) for t in plan.terms]
    for s, r in zip(static.nets, ref):
        torch.testing.assert_close(s.eval()(x), r, rtol=1e-10, atol=1e-12)
    losses = static_step(static, x, y)
    assert len(losses) == len(plan.terms) and all(torch.isfinite(v) for v in losses)
    for s in static.nets:
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in s.parameters())


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("role", ["full", "min"])
def test_gradient_engines_equal_the_autograd_step(engine, role):
    """bench/test_bench_grad_engine.py times several engines on one term: each gives autograd's loss and gradients."""
    net, plan, x, y = _setup(4, True)
    arch = net.max_arch() if role == "full" else net.min_arch()
    term = SubnetTerm(arch, 1.0, "ce", role=role)
    start = {k: b.clone() for k, b in net.named_buffers()}
    (ref_loss,) = autograd_step(net, [term], x, y).losses
    ref_grads, ref_bufs = _grads_and_buffers(net)
    net.zero_grad(set_to_none=True)
    params, buffers = detached_state(net)
    with torch.no_grad():
        for k, b in buffers.items():
            b.copy_(start[k])
    grads, loss = term_gradients(engine, net, params, buffers, term, x, y)

    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    assert not loss.requires_grad and not any(g.requires_grad for g in grads.values())
    slices = net.param_slices(arch)
    assert grads.keys() == slices.keys()
    for k, g in grads.items():  # a gradient per active view, of the view's shape; autograd's is zero elsewhere
        full = torch.zeros_like(ref_grads[k])
        full[slices[k]] = g
        torch.testing.assert_close(full, ref_grads[k], rtol=1e-10, atol=1e-12, msg=f"gradient of {k}")
    for k in ref_bufs:
        torch.testing.assert_close(buffers[k], ref_bufs[k], rtol=1e-12, atol=1e-12, msg=f"buffer {k}")
