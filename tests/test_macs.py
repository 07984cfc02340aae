"""Analytic MACs: OFA's published figures and a cross-check against torch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from deps_core.arch import max_arch, min_arch, uniform_arch
from deps_core.export import extract_subnet
from deps_core.macs import macs
from deps_core.spaces import create_supernet, list_spaces, space_spec


def test_ofa_mbv3_reference_figures():
    spec = space_spec("ofa_mbv3_w1.0")
    # OFA-MBV3 w1.0, 1000 classes, 224x224: k7 e6 d4 and k3 e3 d2
    assert macs(max_arch(spec)) == 566_170_656
    assert macs(min_arch(spec)) == 121_278_672
    assert round(macs(max_arch(spec)) / 1e6, 2) == 566.17 and round(macs(min_arch(spec)) / 1e6, 2) == 121.28


def test_the_two_call_forms_agree(generator):
    spec = space_spec("ofa_mbv3_w1.0")
    a = uniform_arch(spec, generator)
    assert macs(a) == macs("ofa_mbv3_w1.0", a) == macs(spec, a) == macs(spec, a, a.resolution)
    assert macs(spec, a, 160) < macs(a)
    net = create_supernet("ofa_mbv3_w1.0", num_classes=10)
    assert net.macs(a) == macs(net, a) == macs(a) - 1280 * 990
    with pytest.raises(TypeError):
        macs(a, a)
    with pytest.raises(ValueError, match="arch belongs to space"):
        macs("ofa_mbv3_w1.2", a)


def _counted_macs(module: torch.nn.Module, resolution: int) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.randn(1, 3, resolution, resolution))
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2  # torch counts a multiply-accumulate as two FLOPs


@pytest.mark.parametrize("space", list_spaces())
def test_analytic_count_matches_torch_flop_counter(space, generator):
    net = create_supernet(space, num_classes=100, generator=generator).eval()
    resolutions = [net.spec.default_resolution, min(net.spec.resolutions)]
    archs = [net.max_arch(), net.min_arch()] + [
        uniform_arch(net.spec, generator, resolutions=resolutions) for _ in range(3)
    ]
    for arch in archs:
        static = extract_subnet(net, arch).eval()
        assert net.macs(arch) == _counted_macs(static, arch.resolution), str(arch)
