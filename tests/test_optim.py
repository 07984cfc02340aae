"""TF's RMSProp (deps_core.optim.RMSpropTF) against its update rule written out in float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from deps_core.optim import RMSpropTF


def _tf_rmsprop(params, steps, *, decay, momentum, eps, weight_decay):
    """tf.compat.v1.train.RMSPropOptimizer, one parameter at a time: mean square from 1, ε under the root, the rate
    inside the momentum buffer. ``steps``: (lr, grads) per step, a grad ``None`` for no update."""
    params = [p.clone() for p in params]
    ms = [torch.ones_like(p) for p in params]
    mom = [torch.zeros_like(p) for p in params]
    for lr, grads in steps:
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g + weight_decay[i] * params[i]
            ms[i] = decay * ms[i] + (1 - decay) * g * g
            mom[i] = momentum * mom[i] + lr * g / torch.sqrt(ms[i] + eps)
            params[i] = params[i] - mom[i]
    return params, ms, mom


def test_first_step_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = RMSpropTF([p], lr=0.1)  # decay 0.9, momentum 0.9, eps 1e-3: BigNAS/EfficientNet's values
    p.grad = torch.tensor([2.0], dtype=torch.float64)
    opt.step()
    # ms = 0.9 · 1 + 0.1 · 4 = 1.3 (torch's RMSprop would start from 0: 0.4, and divide by sqrt(0.4) + 1e-3)
    assert p.item() == pytest.approx(1.0 - 0.1 * 2.0 / math.sqrt(1.3 + 1e-3), rel=1e-15)
    assert opt.state[p]["mean_square"].item() == pytest.approx(1.3)


def test_matches_the_update_rule_over_steps_with_changing_rates_groups_decay_and_missing_grads():
    g = torch.Generator().manual_seed(1)
    shapes = [(4, 3), (5,), (2, 2, 3)]
    start = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    params = [torch.nn.Parameter(t.clone()) for t in start]
    opt = RMSpropTF(
        [{"params": params[:2], "weight_decay": 0.05}, {"params": params[2:], "weight_decay": 0.0}],
        lr=0.3,
        decay=0.8,
        momentum=0.7,
        eps=1e-4,
    )
    steps = []
    for k, lr in enumerate([0.3, 0.1, 0.2, 0.05]):
        grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        if k == 2:
            grads[1] = None  # no gradient this step: parameter and state stay as they are
        for group in opt.param_groups:
            group["lr"] = lr
        for p, grad in zip(params, grads):
            p.grad = grad
        before = params[1].detach().clone(), {k: v.clone() for k, v in opt.state[params[1]].items()}
        opt.step()
        if k == 2:
            assert torch.equal(params[1].detach(), before[0])
            assert all(torch.equal(opt.state[params[1]][key], value) for key, value in before[1].items())
        steps.append((lr, grads))
    want, ms, mom = _tf_rmsprop(start, steps, decay=0.8, momentum=0.7, eps=1e-4, weight_decay=[0.05, 0.05, 0.0])
    for i, p in enumerate(params):
        torch.testing.assert_close(p.detach(), want[i], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state[p]["mean_square"], ms[i], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], mom[i], rtol=1e-12, atol=1e-14)
        assert not torch.equal(p.detach(), start[i])


def test_state_dict_round_trip_continues_identically():
    g = torch.Generator().manual_seed(2)
    a = torch.nn.Parameter(torch.randn(6, generator=g))
    b = torch.nn.Parameter(a.detach().clone())
    first, second = RMSpropTF([a], lr=0.01, weight_decay=1e-5), RMSpropTF([b], lr=0.01, weight_decay=1e-5)
    grads = [torch.randn(6, generator=g) for _ in range(4)]
    for grad in grads[:2]:
        a.grad, b.grad = grad.clone(), grad.clone()
        first.step()
        second.step()
    restored = RMSpropTF([b], lr=0.5)
    restored.load_state_dict(copy.deepcopy(first.state_dict()))  # as read from disk (torch shares the tensors)
    assert restored.param_groups[0]["weight_decay"] == 1e-5 and restored.param_groups[0]["lr"] == 0.01
    for grad in grads[2:]:
        a.grad, b.grad = grad.clone(), grad.clone()
        first.step()
        restored.step()
    assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "lr must be >= 0"),
        (dict(lr=0.1, decay=1.0), "decay must lie in"),
        (dict(lr=0.1, momentum=-0.1), "momentum must lie in"),
        (dict(lr=0.1, eps=0.0), "eps must be > 0"),
        (dict(lr=0.1, weight_decay=-1e-5), "weight_decay must be >= 0"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RMSpropTF([torch.nn.Parameter(torch.zeros(2))], **kwargs)
