"""OFA interop: our supernet against OFA's own network code (the ``ofa`` package) with the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deps_core.arch import Arch, uniform_arch
from deps_core.interop.ofa import load_ofa_state_dict, ofa_key_map, to_ofa_state_dict
from deps_core.spaces import create_supernet

CASES = {
    "ofa_mbv3_w1.0": ("mbv3", 1.0),
    "ofa_mbv3_w1.2": ("mbv3", 1.2),
    "ofa_proxyless_w1.3": ("proxyless", 1.3),
}


def _randomize(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    # every tensor non-trivial: BN statistics, affine terms, transform matrices off the identity
    with torch.no_grad():
        for name, t in state.items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=generator) + 0.5)
            elif name.endswith("_matrix"):
                t.copy_(torch.eye(t.shape[0]) + 0.2 * torch.randn(t.shape, generator=generator))
            elif name.endswith(("running_mean", "bias")) or ".bn." in name:
                t.copy_(0.1 * torch.randn(t.shape, generator=generator) + (1.0 if name.endswith("bn.weight") else 0.0))
            else:
                t.mul_(1.0 + 0.1 * torch.randn(t.shape, generator=generator))


def _ofa_net(ofa_networks, space: str, num_classes: int, ks_list=(3, 5, 7)):
    family, width = CASES[space]
    return ofa_networks[family](
        n_classes=num_classes,
        dropout_rate=0.0,
        width_mult=width,
        ks_list=list(ks_list),
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
    )


@pytest.mark.parametrize("space", sorted(CASES))
def test_logits_equal_ofa_for_the_same_weights(space, ofa_networks):
    g = torch.Generator().manual_seed(11)
    ofa = _ofa_net(ofa_networks, space, num_classes=13)
    _randomize(ofa.state_dict(), g)
    ours = create_supernet(space, num_classes=13, dropout=0.0)
    load_ofa_state_dict(ours, ofa.state_dict())
    x = torch.randn(2, 3, 96, 96, generator=g)
    archs = [ours.max_arch(), ours.min_arch()] + [uniform_arch(ours.spec, g) for _ in range(4)]
    for arch in archs:
        o = arch.to_ofa()
        ofa.set_active_subnet(ks=o["ks"], e=o["e"], d=o["d"])
        ofa.eval(), ours.eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(x, arch), ofa(x), atol=1e-4, rtol=1e-4)
        # training mode: batch statistics, and the same running-statistics update
        ofa.train(), ours.train()
        with torch.no_grad():
            torch.testing.assert_close(ours(x, arch), ofa(x), atol=1e-4, rtol=1e-4)
        theirs_after = ofa.state_dict()
        for k, v in to_ofa_state_dict(ours).items():
            if k.endswith(("running_mean", "running_var")):
                torch.testing.assert_close(v, theirs_after[k], atol=1e-5, rtol=1e-5)


def test_round_trip_through_ofa_names(ofa_networks, tmp_path):
    g = torch.Generator().manual_seed(12)
    ours = create_supernet("ofa_mbv3_w1.0", num_classes=10, generator=g)
    ofa = _ofa_net(ofa_networks, "ofa_mbv3_w1.0", num_classes=10)
    ofa.load_state_dict(to_ofa_state_dict(ours))  # OFA accepts what we write...
    # ...and what OFA writes, as a checkpoint file in its usual {"state_dict": ...} form, loads back exactly
    path = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": ofa.state_dict()}, path)
    back = create_supernet("ofa_mbv3_w1.0", num_classes=10, generator=torch.Generator().manual_seed(99))
    load_ofa_state_dict(back, path)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_old_key_spelling_and_ddp_prefix_are_accepted(generator):
    ours = create_supernet("ofa_mbv3_w1.0", num_classes=4, generator=generator)
    old_spelling = lambda k: k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k
    state = {"module." + old_spelling(k): v for k, v in to_ofa_state_dict(ours).items()}
    assert any(".mobile_inverted_conv." in k for k in state)
    fresh = create_supernet("ofa_mbv3_w1.0", num_classes=4)
    load_ofa_state_dict(fresh, state)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in ours.state_dict().items())


def test_mismatch_is_one_clear_error_and_changes_nothing(ofa_networks, generator):
    ours = create_supernet("ofa_mbv3_w1.0", num_classes=10, generator=generator)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    # a DεpS-style checkpoint trained with kernel 7 only has no transform matrices
    fixed = _ofa_net(ofa_networks, "ofa_mbv3_w1.0", num_classes=10, ks_list=(7,)).state_dict()
    with pytest.raises(
        ValueError, match=r"missing: blocks\.1\.conv\.depth_conv\.conv\.5to3_matrix[\s\S]*kernel_transform=False"
    ):
        load_ofa_state_dict(ours, fixed)
    k7 = create_supernet("ofa_mbv3_w1.0", num_classes=10, kernel_transform=False)
    load_ofa_state_dict(k7, fixed)  # the right supernet takes it
    wrong_classes = _ofa_net(ofa_networks, "ofa_mbv3_w1.0", num_classes=1000).state_dict()
    with pytest.raises(
        ValueError, match=r"shape mismatch: classifier\.linear\.bias: checkpoint \(1000,\) vs supernet \(10,\)"
    ):
        load_ofa_state_dict(ours, wrong_classes)
    extra = dict(to_ofa_state_dict(ours), **{"blocks.99.conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected: blocks\.99\.conv\.weight"):
        load_ofa_state_dict(ours, extra)
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_unreadable_checkpoint_names_the_file(tmp_path):
    ours = create_supernet("ofa_mbv3_32", num_classes=10)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_ofa_state_dict(ours, tmp_path / "nowhere.pth")
    bad = tmp_path / "truncated.pth"
    torch.save({"state_dict": to_ofa_state_dict(ours)}, bad)
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read OFA checkpoint .*truncated.pth"):
        load_ofa_state_dict(ours, bad)
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": to_ofa_state_dict(ours), "note": Path("x")}, foreign)  # an object beyond tensors
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    for path in (foreign, text):
        with pytest.raises(ValueError) as info:
            load_ofa_state_dict(ours, path)
        message = str(info.value)
        assert message.startswith(f"cannot read OFA checkpoint {path} with a weights-only load: it is damaged, not")
        assert "\n" not in message and "load_ofa_state_dict" in message


def test_key_map_covers_the_mbv3_32_space():
    ours = create_supernet("ofa_mbv3_32", num_classes=10)
    mapping = ofa_key_map(ours)
    assert mapping["blocks.0.expand.weight"] == "blocks.1.conv.inverted_bottleneck.conv.conv.weight"
    assert mapping["blocks.5.se.reduce.weight"] == "blocks.6.conv.depth_conv.se.fc.reduce.weight"
    fresh = create_supernet("ofa_mbv3_32", num_classes=10)
    load_ofa_state_dict(fresh, to_ofa_state_dict(ours))
    x = torch.randn(2, 3, 32, 32)
    arch = Arch.from_ofa([5] * 20, [4] * 20, [3] * 5, space="ofa_mbv3_32")
    torch.testing.assert_close(fresh.eval()(x, arch), ours.eval()(x, arch))
