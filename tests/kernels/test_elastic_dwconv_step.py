"""The fused depthwise weight gradient inside the ε-step, in float64.

``functional_step(..., dw_backend="triton", fuse_dw_grad=True)``: the depthwise weights convolved as they are are
not differentiated by ``torch.func``; the Triton weight-gradient kernel adds ``w_j · ∇`` straight into their views of
the accumulator's flat buffer. It must equal the existing path (torch backend, every gradient from ``torch.func``,
added by ``GradAccumulator.add_``). With the kernel transform on, the smaller kernels are transformed in torch and
their gradients take the op's unfused path (``dW`` returned to ``torch.func``), so both paths run in one step.
``fuse_dw_bn_act=True``: each depthwise conv, BN and activation as one op (``deps_kernels.dwconv_bn_act``), whose
running statistics must move as ``F.batch_norm`` moves them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from deps_kernels import dwconv_bn_act as B
from deps_kernels import elastic_dwconv as E

from deps_core.accumulate import GradAccumulator
from deps_core.arch import uniform_arch
from deps_core.spaces import create_supernet
from deps_core.step import detached_state, functional_step
from deps_core.strategies import SubnetTerm

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not E.INTERPRETED, reason="kernels compiled for CUDA here")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(E.INTERPRETED, reason="kernels interpreted")]),
]


def _supernet(ks_choices: tuple[int, ...], device: str = "cpu"):
    # a restricted space (depth 2, 8×8 images, kernels as given) keeps the interpreted step short
    net = create_supernet(
        "ofa_mbv3_32",
        num_classes=10,
        width_mult=0.25,
        ks_choices=ks_choices,
        d_choices=(2,),
        kernel_transform=True,  # on whenever there are two kernel sizes
        generator=torch.Generator().manual_seed(0),
    )
    net = net.double().to(device).train()
    with torch.no_grad():  # non-identity kernel transforms, so a transformed kernel differs from the centre crop
        for name, t in net.state_dict().items():
            if ".dw.m" in name:
                noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(len(name)), dtype=t.dtype)
                t.add_(0.1 * noise.to(device))
    return net


def _step(net, terms, images, labels, **kw):
    params, buffers = detached_state(net)
    acc = GradAccumulator(params, dtype=torch.float64)
    result = functional_step(net, params, buffers, acc, terms, images, labels, **kw)
    return acc, result


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "ks_choices, role, weight, fusions",
    [
        ((3,), "full", 1.0, ("fuse_dw_grad",)),  # one kernel size: every depthwise weight fused
        # kernel transform: the 5×5 blocks fused, the transformed 3×3 through torch.func
        ((3, 5), "uniform", 0.37, ("fuse_dw_grad",)),
        # each depthwise conv + BN + activation as one op (deps_kernels.dwconv_bn_act), with and without the fused dW
        ((3, 5), "uniform", 0.37, ("fuse_dw_bn_act",)),
        ((3, 5), "uniform", 1.0, ("fuse_dw_grad", "fuse_dw_bn_act")),
    ],
    ids=["one_k-dw_grad", "transform-dw_grad", "transform-bn_act", "transform-dw_grad+bn_act"],
)
def test_fused_dw_gradient_step_equals_the_torch_path(device, ks_choices, role, weight, fusions, monkeypatch):
    # one term each (the interpreter is slow); several weighted additions into one buffer are tested on the op
    net = _supernet(ks_choices, device)
    arch = net.max_arch() if role == "full" else uniform_arch(net.spec, torch.Generator().manual_seed(0))
    terms = [SubnetTerm(arch, weight, "ce", role=role)]
    fused_names = net.direct_depthwise_weights(arch)
    if net.kernel_transform:
        active = [f"blocks.{i}.dw.weight" for i in arch.active_blocks(net.spec)]
        assert 1 < len(fused_names) < len(active) + 1, "the subnet should mix fused and transformed kernels"
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64).to(device)
    labels = torch.randint(0, 10, (2,), generator=g).to(device)
    ref = copy.deepcopy(net)
    calls = []
    op = B.dwconv_bn_act
    monkeypatch.setattr(B, "dwconv_bn_act", lambda *a, **kw: calls.append(1) or op(*a, **kw))
    fused_acc, fused = _step(net, terms, images, labels, dw_backend="triton", **dict.fromkeys(fusions, True))
    layers = 1 + len(arch.active_blocks(net.spec))  # the first block's depthwise layer and each active block's
    assert len(calls) == (layers if "fuse_dw_bn_act" in fusions else 0)
    torch_acc, plain = _step(ref, terms, images, labels, dw_backend="torch")

    assert fused_acc.touched == torch_acc.touched
    expected = torch_acc.flat
    assert (fused_acc.flat - expected).norm() <= 1e-10 * expected.norm()
    for name, want in torch_acc.grads.items():
        assert (fused_acc.grads[name] - want).abs().max() <= 1e-10 * expected.abs().max(), name
    for a, b in zip(fused.losses, plain.losses):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for (name, a), (_, b) in zip(net.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("flag", ["fuse_dw_grad", "fuse_dw_bn_act"])
def test_fusing_needs_the_triton_backend(flag):
    net = _supernet((3,))
    terms = [SubnetTerm(net.max_arch(), 1.0, "ce", role="full")]
    with pytest.raises(ValueError, match=f"{flag} needs the Triton depthwise backend"):
        _step(net, terms, torch.zeros(1, 3, 8, 8, dtype=torch.float64), torch.tensor([0]), **{flag: True})
