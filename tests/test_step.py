"""The functional ε-weighted step against plain autograd, in float64, for every strategy at several points."""

from __future__ import annotations

import copy

import pytest
import torch

from deps_core.accumulate import GradAccumulator
from deps_core.distill import LossConfig, term_loss
from deps_core.schedules import Progress
from deps_core.spaces import create_supernet
from deps_core.step import autograd_step, detached_state, functional_step
from deps_core.strategies import BigNASStrategy, CompOFAStrategy, DepsStrategy, OFAStrategy, SubnetTerm

STEPS = 4  # steps per epoch in these tiny schedules


def _supernet():
    net = create_supernet("ofa_mbv3_32", num_classes=10, width_mult=0.25, generator=torch.Generator().manual_seed(0))
    net = net.double().train()
    with torch.no_grad():  # non-identity kernel transforms and BN statistics, so nothing is trivially equal
        for name, t in net.state_dict().items():
            if ".dw.m" in name:
                t.add_(0.1 * torch.randn(t.shape, generator=torch.Generator().manual_seed(len(name)), dtype=t.dtype))
            elif name.endswith("running_var"):
                t.fill_(1.5)
    return net


def _strategies(spec):
    common = dict(lr=0.1, lr_batch=128, global_batch=16)
    return {
        "deps": DepsStrategy(spec, total=10, ramp_epochs=2, reorganize=True, **common),
        "deps_lr_matched_all_uniform": DepsStrategy(
            spec, total=10, ramp_epochs=2, eps_form="lr_matched", all_uniform=True, **common
        ),
        "deps_ce_no_bn": DepsStrategy(spec, total=10, subnet_loss="ce", subnet_bn_stats=False, **common),
        "ofa": OFAStrategy(
            spec,
            teacher_epochs=2,
            kernel_epochs=1,
            depth_epochs=(1, 1),
            expand_epochs=(1, 1),
            warmup_epochs=1,
            **common,
        ),
        "bignas": BigNASStrategy(spec, total=6, **common),
        "compofa": CompOFAStrategy(spec, teacher_epochs=2, compound_epochs=(1, 1), warmup_epochs=1, **common),
    }


# (strategy, epoch, step): FM-warmup, first shrinking step, inside and after the ε ramp; every OFA/CompOFA phase
POINTS = [
    ("deps", 2, 1),
    ("deps", 5, 0),
    ("deps", 6, 3),
    ("deps", 9, 2),
    ("deps_lr_matched_all_uniform", 5, 1),
    ("deps_lr_matched_all_uniform", 9, 3),
    ("deps_ce_no_bn", 7, 2),
    ("ofa", 0, 1),
    ("ofa", 2, 0),
    ("ofa", 4, 1),
    ("ofa", 5, 2),
    ("ofa", 7, 0),
    ("ofa", 8, 3),
    ("bignas", 0, 0),
    ("bignas", 4, 2),
    ("compofa", 1, 3),
    ("compofa", 2, 2),
    ("compofa", 4, 1),
]


def _compare(net, terms, teacher_logits=None, loss_config=None, seed=0):
    loss_config = LossConfig() if loss_config is None else loss_config
    ref = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (6,), generator=g)
    params, buffers = detached_state(net)
    acc = GradAccumulator(params, dtype=torch.float64)
    torch.manual_seed(seed)  # the same dropout masks on both paths
    ours = functional_step(
        net, params, buffers, acc, terms, images, labels, loss_config=loss_config, teacher_logits=teacher_logits
    )
    torch.manual_seed(seed)
    theirs = autograd_step(ref, terms, images, labels, loss_config=loss_config, teacher_logits=teacher_logits)
    return ref, acc, ours, theirs


def _assert_equal_gradients(ref, acc):
    expected = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for _, p in ref.named_parameters()]
    )
    assert expected.norm() > 0
    # relative to the whole gradient: single tensors may have a true gradient of exactly zero (a BN bias
    # followed by another BN), where both paths return rounding noise
    rel = (acc.flat - expected).norm() / expected.norm()
    assert rel <= 1e-10, rel
    for name, p in ref.named_parameters():
        got, want = acc.grads[name], p.grad if p.grad is not None else torch.zeros_like(p)
        assert (got - want).abs().max() <= 1e-10 * expected.abs().max(), name


@pytest.mark.parametrize("name, epoch, step", POINTS)
def test_functional_step_equals_autograd_for_every_strategy(name, epoch, step):
    net = _supernet()
    strategy = _strategies(net.spec)[name]
    plan = strategy.plan(Progress(epoch, step, STEPS), seed=7)
    teacher = torch.randn(6, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref, acc, ours, theirs = _compare(net, plan.terms, teacher if plan.needs_teacher else None, seed=epoch * 10 + step)
    _assert_equal_gradients(ref, acc)
    for a, b in zip(ours.losses, theirs.losses):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for (n, a), (_, b) in zip(net.named_buffers(), ref.named_buffers()):
        assert torch.equal(a, b), f"BN statistics differ after the step: {n}"
    if any(t.role == "full" for t in plan.terms):
        torch.testing.assert_close(ours.full_logits, theirs.full_logits, rtol=1e-12, atol=0)


def test_kd_temperature_and_label_smoothing_reach_both_paths():
    net = _supernet()
    terms = [
        SubnetTerm(net.max_arch(), 1.0, "ce", dropout=True, role="full"),
        SubnetTerm(net.min_arch(), 0.37, "inplace_kd", role="min"),
    ]
    ref, acc, ours, theirs = _compare(net, terms, loss_config=LossConfig(label_smoothing=0.2, kd_temperature=3.0))
    _assert_equal_gradients(ref, acc)


@pytest.mark.parametrize("kind", ["ce", "inplace_kd", "teacher_kd"])
def test_a_bf16_terms_loss_is_computed_in_float32(kind):
    # under autocast the logits are bf16; CPU autocast would leave softmax and the distillation sums in bf16
    g = torch.Generator().manual_seed(5)
    logits, teacher = (torch.randn(16, 10, generator=g).mul(3).bfloat16() for _ in range(2))
    labels = torch.randint(0, 10, (16,), generator=g)
    config = LossConfig(label_smoothing=0.1, kd_temperature=2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = term_loss(kind, logits, labels, teacher, config)
    assert loss.dtype == torch.float32
    want = term_loss(kind, logits.double(), labels, teacher.double(), config)
    assert abs(loss.double() - want) <= 1e-6 * want


def test_under_bf16_autocast_the_step_runs_in_bf16_and_every_loss_is_float32():
    net = _supernet().float()
    terms = [
        SubnetTerm(net.max_arch(), 1.0, "ce", role="full"),
        SubnetTerm(net.min_arch(), 0.5, "inplace_kd", role="min"),
    ]
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
    params, buffers = detached_state(net)
    acc = GradAccumulator(params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = functional_step(net, params, buffers, acc, terms, images, labels)
    assert result.full_logits.dtype == torch.bfloat16  # the forward ran under autocast
    assert [loss.dtype for loss in result.losses] == [torch.float32, torch.float32]
    assert acc.flat.dtype == torch.float32 and bool(acc.flat.isfinite().all()) and acc.flat.abs().max() > 0


def test_gradients_have_the_size_of_the_active_slices(monkeypatch):
    net = _supernet()
    seen = []
    original = GradAccumulator.add_

    def spy(self, grads, slices, weight):
        for n, g in grads.items():
            full = self.grads[n]
            seen.append((n, tuple(g.shape), tuple(full[slices[n]].shape if slices[n] else full.shape)))
        return original(self, grads, slices, weight)

    monkeypatch.setattr(GradAccumulator, "add_", spy)
    terms = [SubnetTerm(net.min_arch(), 1.0, "ce")]
    params, buffers = detached_state(net)
    functional_step(
        net,
        params,
        buffers,
        GradAccumulator(params, dtype=torch.float64),
        terms,
        torch.randn(2, 3, 16, 16, dtype=torch.float64),
        torch.tensor([1, 2]),
    )
    assert seen and all(g == s for _, g, s in seen)
    dw = dict((n, g) for n, g, _ in seen)["blocks.0.dw.weight"]
    assert dw[0] < net.blocks[0].dw.weight.shape[0] and dw[-1] < 7  # a slice, not the full 7x7 kernel of all channels


def test_in_place_kd_needs_the_full_model_first():
    net = _supernet()
    params, buffers = detached_state(net)
    acc = GradAccumulator(params, dtype=torch.float64)
    x, y = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="no full-model term precedes it"):
        functional_step(net, params, buffers, acc, [SubnetTerm(net.min_arch(), 1.0, "inplace_kd")], x, y)
    with pytest.raises(ValueError, match="needs an external teacher"):
        functional_step(net, params, buffers, acc, [SubnetTerm(net.min_arch(), 1.0, "teacher_kd")], x, y)


def test_an_accumulator_of_other_parameters_is_refused_before_any_work():
    net = _supernet()
    params, buffers = detached_state(net)
    other = create_supernet("ofa_mbv3_32", num_classes=7, width_mult=0.25, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1])
    terms = [SubnetTerm(net.max_arch(), 1.0, "ce")]
    before = {k: v.clone() for k, v in buffers.items()}
    with pytest.raises(ValueError, match=r"built for other parameters: classifier\.weight is \[7, \d+\] in it"):
        functional_step(net, params, buffers, GradAccumulator(detached_state(other)[0]), terms, x, y)
    fewer = {k: v for k, v in params.items() if k != "classifier.bias"}
    with pytest.raises(ValueError, match=r"1 not in it \(e\.g\. \['classifier\.bias'\]\), 0 of it not given"):
        functional_step(net, params, buffers, GradAccumulator(fewer), terms, x, y)
    assert all(torch.equal(before[k], v) for k, v in buffers.items())  # no forward ran: BN statistics untouched


def test_accumulator_binds_its_buffers_as_grads_and_skips_untouched_parameters():
    net = _supernet()
    params, buffers = detached_state(net)
    acc = GradAccumulator(params, dtype=torch.float64)
    functional_step(
        net,
        params,
        buffers,
        acc,
        [SubnetTerm(net.max_arch(), 1.0, "ce")],
        torch.randn(2, 3, 16, 16, dtype=torch.float64),
        torch.tensor([0, 1]),
    )
    named = dict(net.named_parameters())
    acc.bind(named)
    assert named["blocks.0.dw.m7to5"].grad is None  # the max subnet never uses a transform matrix
    assert named["blocks.0.dw.weight"].grad.data_ptr() == acc.grads["blocks.0.dw.weight"].data_ptr()
    acc.zero_()
    assert acc.flat.abs().sum() == 0 and not acc.touched


def test_frozen_teacher_matches_the_full_model_and_stays_frozen():
    from deps_core.distill import FrozenTeacher

    net = _supernet()
    teacher = FrozenTeacher(net)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        arch = net.max_arch()  # batch statistics, no dropout: OFA's teacher.train() under no_grad
        expected = net.functional_forward(
            net.active_params(arch), net.active_buffers(arch), x, arch, training=True, update_bn_stats=False
        )
    torch.testing.assert_close(teacher(x), expected)
    with torch.no_grad():  # training the supernet does not move the teacher
        for p in net.parameters():
            p.add_(1.0)
    torch.testing.assert_close(teacher(x), expected)
    clone = FrozenTeacher(_supernet())
    clone.load_state_dict(teacher.state_dict())
    torch.testing.assert_close(clone(x), expected)
    with pytest.raises(ValueError, match="bn must be"):
        FrozenTeacher(net, bn="eval")
