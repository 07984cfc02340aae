"""Channel re-organization: the largest subnet is unchanged, optimizer state moves with the weights."""

from __future__ import annotations

import copy

import pytest
import torch

from deps_core.arch import uniform_arch
from deps_core.reorganize import apply_permutations, channel_order, channel_permutations, reorganize_channels
from deps_core.spaces import create_supernet


def _net(seed=0):
    net = create_supernet(
        "ofa_mbv3_32", num_classes=10, width_mult=0.5, dropout=0.0, generator=torch.Generator().manual_seed(seed)
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return net.double()


def test_channel_order_sorts_by_importance_with_ofa_protected_ranges():
    imp = torch.tensor([1.0, 5.0, 2.0, 9.0, 3.0, 8.0])
    assert channel_order(imp, [6, 4, 2], 0).tolist() == [3, 5, 1, 4, 2, 0]
    # stage 1: channels past width 4 stay behind the first four, each range sorted on its own
    assert channel_order(imp, [6, 4, 2], 1).tolist() == [3, 1, 2, 0, 5, 4]


@pytest.mark.parametrize("expand_stage", [0, 1])
def test_largest_subnet_computes_the_same_function(expand_stage):
    net = _net().eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    before = net(x, net.max_arch())
    perms = reorganize_channels(net, expand_stage=expand_stage)
    assert any(not torch.equal(idx, torch.arange(len(idx))) for idx, _ in perms.values())
    torch.testing.assert_close(net(x, net.max_arch()), before, rtol=1e-12, atol=1e-12)
    # smaller subnets now keep the most important channels, so they do change
    small = uniform_arch(net.spec, torch.Generator().manual_seed(0)).replace(e=(3,) * 20)
    importance = net.blocks[0].project.weight.abs().sum(dim=(0, 2, 3))
    if expand_stage == 0:
        assert torch.all(importance[:-1] >= importance[1:])
    assert torch.isfinite(net(x, small)).all()


def test_momentum_is_permuted_with_the_weights():
    """Training the max subnet is equivariant under the permutation: step, sort, step == step, step, sort."""
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 2, 3, 4])
    a, b = _net(), _net()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)

    def step(net, opt):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x, net.max_arch()), y).backward()
        opt.step()

    a.train(), b.train()
    step(a, opt_a), step(b, opt_b)
    perms = channel_permutations(a, expand_stage=1)
    apply_permutations(a, perms, [opt_a])
    step(a, opt_a)
    step(b, opt_b)
    apply_permutations(b, perms)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12, msg=name)
    for (name, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers()):
        torch.testing.assert_close(ba, bb, rtol=1e-10, atol=1e-12, msg=name)


def test_without_the_optimizer_the_momentum_would_be_stale():
    """The check above can fail: permuting weights but not momentum (the research code) changes the next step."""
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 2, 3, 4])
    a = _net().train()
    b = copy.deepcopy(a)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    for net, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x, net.max_arch()), y).backward()
        opt.step()
    perms = channel_permutations(a)
    apply_permutations(a, perms, [opt_a])
    apply_permutations(b, perms)  # momentum left in the old order
    for net, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x, net.max_arch()), y).backward()
        opt.step()
    assert not torch.allclose(a.blocks[0].dw.weight, b.blocks[0].dw.weight)


def test_invalid_stage_is_rejected():
    with pytest.raises(ValueError, match="expand_stage must lie in"):
        reorganize_channels(_net(), expand_stage=3)
