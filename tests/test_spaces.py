"""Registry-wide supernet tests: every registered space, its largest and smallest subnets, static extraction."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deps_core.arch import Arch
from deps_core.export import build_static, export_static, extract_subnet, load_static, subnet_config
from deps_core.spaces import create_supernet, list_spaces, register_space, space_spec

SPACES = list_spaces()


def _input(net, batch: int = 2, generator=None) -> torch.Tensor:
    # the forward does not depend on arch.resolution; small inputs keep the CPU suite fast
    res = 32 if net.spec.default_resolution <= 64 else 64
    return torch.randn(batch, 3, res, res, generator=generator)


@pytest.fixture(scope="module")
def nets():
    g = torch.Generator().manual_seed(0)
    return {name: create_supernet(name, num_classes=11, generator=g) for name in SPACES}


def test_registry_lists_the_built_in_spaces():
    assert {"ofa_mbv3_w1.0", "ofa_mbv3_w1.2", "ofa_mbv3_32", "ofa_proxyless_w1.3"} <= set(SPACES)
    with pytest.raises(ValueError, match="already registered"):
        register_space("ofa_mbv3_w1.0")(lambda **kw: None)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_supernet("ofa_mbv3_32", num_classes=0)


@pytest.mark.parametrize(
    "space, widths, strides",
    [
        # OFA's widths (make_divisible(w * base, 8)) and stage strides
        ("ofa_mbv3_w1.0", (16, 16, 24, 40, 80, 112, 160, 960, 1280), (2, 2, 2, 2, 1, 2)),
        ("ofa_mbv3_w1.2", (24, 24, 32, 48, 96, 136, 192, 1152, 1536), (2, 2, 2, 2, 1, 2)),
        ("ofa_mbv3_32", (16, 16, 24, 40, 80, 112, 160, 960, 1280), (1, 1, 2, 2, 1, 2)),
    ],
)
def test_mbv3_structure_follows_ofa(space, widths, strides):
    spec = space_spec(space)
    assert (spec.stem.cout, spec.first.cout) == widths[:2]
    assert tuple(s.width for s in spec.stages) == widths[2:7]
    assert (spec.head_pre_pool[0].cout, spec.head_post_pool[0].cout) == widths[7:]
    assert (spec.stem.stride,) + tuple(s.stride for s in spec.stages) == strides
    assert [s.act for s in spec.stages] == ["relu", "relu", "h_swish", "h_swish", "h_swish"]
    assert [s.se for s in spec.stages] == [False, True, False, True, True]
    assert spec.first.residual and not spec.head_post_pool[0].bn


def test_proxyless_structure_follows_ofa():
    spec = space_spec("ofa_proxyless_w1.3")
    assert (spec.stem.cout, spec.first.cout) == (40, 24) and not spec.first.residual
    assert tuple(s.width for s in spec.stages) == (32, 56, 104, 128, 248, 416)
    assert tuple(s.stride for s in spec.stages) == (2, 2, 2, 1, 2, 1)
    assert spec.head_pre_pool[0].cout == 1664 and spec.head_post_pool == ()
    assert spec.bn_eps == 1e-3 and {s.act for s in spec.stages} == {"relu6"}


@pytest.mark.parametrize("space", SPACES)
def test_max_subnet_is_finite_and_reaches_every_weight(space, nets):
    net = nets[space].train()
    net.zero_grad(set_to_none=True)
    arch = net.max_arch()
    logits = net(_input(net), arch)
    assert logits.shape == (2, 11) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    for name, p in net.named_parameters():
        if ".dw.m" in name:  # kernel-transform matrices serve only smaller kernels
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # a kernel-3 subnet at full depth and width reaches every transform matrix
    net.zero_grad(set_to_none=True)
    k3 = arch.replace(ks=(3,) * len(arch.ks))
    net(_input(net), k3).square().mean().backward()
    for name, p in net.named_parameters():
        if ".dw.m" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("kernel_transform", [True, False])
def test_min_subnet_leaves_unused_slices_with_exactly_zero_gradient(space, kernel_transform):
    net = create_supernet(
        space, num_classes=7, kernel_transform=kernel_transform, generator=torch.Generator().manual_seed(1)
    )
    arch = net.min_arch()
    net.train()
    net(_input(net), arch).square().mean().backward()
    slices = net.param_slices(arch)
    for name, p in net.named_parameters():
        if name not in slices:
            assert p.grad is None, f"{name} is outside the min subnet but got a gradient"
            continue
        mask = torch.zeros_like(p, dtype=torch.bool)
        mask[slices[name]] = True
        assert torch.count_nonzero(p.grad[~mask]) == 0, f"{name}: gradient outside the active slice"
        assert p.grad[mask].abs().sum() > 0, f"{name}: no gradient inside the active slice"
    # the depthwise kernels of k=3 blocks read 3x3 (plain crop) or the 5x5 centre (transform) of the 7x7
    k = 5 if net.kernel_transform else 3
    assert tuple(net.active_params(arch)["blocks.0.dw.weight"].shape[-2:]) == (k, k)


@pytest.mark.parametrize("space", SPACES)
def test_choosing_a_subnet_changes_nothing_on_the_module(space, nets, generator):
    from deps_core.arch import uniform_arch

    net = nets[space].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = _input(net)
    a, b = uniform_arch(net.spec, generator), uniform_arch(net.spec, generator)
    ya = net(x, a)
    net(x, b)
    assert torch.equal(net(x, a), ya)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("space", SPACES)
def test_zero_init_residual_makes_every_residual_block_the_identity_at_init(space, generator):
    from deps_core.arch import uniform_arch

    plain = create_supernet(space, num_classes=7, generator=torch.Generator().manual_seed(3))
    zero = create_supernet(space, num_classes=7, generator=torch.Generator().manual_seed(3), zero_init_residual=True)
    spec = zero.spec
    residual = {f"blocks.{b.index}.project_bn.weight" for b in spec.blocks if b.residual}
    residual |= {"first.project_bn.weight"} if spec.first.residual else set()
    assert residual and len(residual) < len(spec.blocks)  # the first block of a stage has no shortcut
    initial = plain.state_dict()
    zeroed = {n for n, p in zero.named_parameters() if not torch.equal(p, initial[n])}
    assert zeroed == residual
    assert all(torch.count_nonzero(zero.state_dict()[n]) == 0 for n in residual)
    assert len(zero.residual_blocks()) == len(residual) and not plain.zero_init_residual

    # at init a subnet's output does not depend on its depths, nor on the kernels and widths of residual blocks
    a = uniform_arch(spec, generator)
    shallow_ks, shallow_e = list(a.ks), list(a.e)
    for stage in spec.stages:
        for i in range(stage.first_block + 1, stage.first_block + stage.max_depth):
            shallow_ks[i], shallow_e[i] = min(spec.ks_choices), min(spec.e_choices)
    b = a.replace(d=tuple(min(s.d_choices) for s in spec.stages), ks=tuple(shallow_ks), e=tuple(shallow_e))
    assert b != a
    x = _input(zero, generator=generator)

    def run(net, arch):
        with torch.random.fork_rng():  # the same dropout mask every time
            torch.manual_seed(0)
            return net(x, arch)

    for mode in ("train", "eval"):
        zero.train(mode == "train"), plain.train(mode == "train")
        assert torch.equal(run(zero, a), run(zero, b)), mode
        assert not torch.allclose(run(plain, a), run(plain, b)), mode
    # and the zeroed scales train: their gradient is not zero
    zero.train()
    zero(x, zero.max_arch()).square().mean().backward()
    assert all(zero.get_parameter(n).grad.abs().sum() > 0 for n in residual)


def test_training_forward_moves_only_the_active_running_statistics(generator):
    net = create_supernet("ofa_mbv3_32", num_classes=5, width_mult=0.5, generator=generator).train()
    arch = net.min_arch()
    before = {k: v.clone() for k, v in net.named_buffers()}
    net(torch.randn(4, 3, 32, 32, generator=generator), arch)
    active = net.buffer_slices(arch)
    for name, buf in net.named_buffers():
        if not name.endswith(("running_mean", "running_var")):
            continue
        mask = torch.zeros_like(buf, dtype=torch.bool)
        if name in active:
            mask[active[name]] = True
            assert not torch.equal(buf[mask], before[name][mask]), name
        assert torch.equal(buf[~mask], before[name][~mask]), name
    # BigNAS-style: batch statistics without touching the stored ones
    snapshot = {k: v.clone() for k, v in net.named_buffers()}
    net(torch.randn(4, 3, 32, 32, generator=generator), arch, update_bn_stats=False)
    assert all(torch.equal(snapshot[k], v) for k, v in net.named_buffers())


def _arch_strategy(space: str):
    spec = space_spec(space)
    n = spec.n_blocks
    return st.builds(
        lambda ks, e, d: Arch(space, ks, e, d, spec.default_resolution).canonical(),
        st.lists(st.sampled_from(spec.ks_choices), min_size=n, max_size=n),
        st.lists(st.sampled_from(spec.e_choices), min_size=n, max_size=n),
        st.tuples(*[st.sampled_from(s.d_choices) for s in spec.stages]),
    )


def _perturb_bn(net, generator):
    # non-trivial BN statistics and affine weights, so extraction has something to get wrong
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_mean") or name.endswith("bn.bias"):
                t.copy_(torch.randn(t.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=generator) + 0.5)
            elif ".dw.m" in name:
                t.add_(torch.randn(t.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("space", SPACES)
def test_extracted_subnet_matches_supernet(space):
    g = torch.Generator().manual_seed(2)
    net = create_supernet(space, num_classes=9, generator=g).eval()
    _perturb_bn(net, g)
    x = _input(net, batch=3, generator=g)

    @settings(max_examples=6 if space != "ofa_mbv3_32" else 12)
    @given(arch=_arch_strategy(space))
    def check(arch):
        static = extract_subnet(net, arch).eval()
        torch.testing.assert_close(static(x), net(x, arch), atol=1e-5, rtol=1e-5)
        # the JSON config rebuilds the same network without the supernet
        rebuilt = build_static(subnet_config(net, arch))
        rebuilt.load_state_dict(static.state_dict())
        torch.testing.assert_close(rebuilt.eval()(x), net(x, arch), atol=1e-5, rtol=1e-5)

    check()


def test_static_config_is_json_and_rejects_foreign_configs(generator):
    import json

    net = create_supernet("ofa_mbv3_32", num_classes=3, width_mult=0.5, generator=generator)
    config = json.loads(json.dumps(subnet_config(net, net.min_arch())))
    assert build_static(config)
    with pytest.raises(ValueError, match="not a static-subnet config"):
        build_static({"format": "ofa"})
    del config["blocks"]
    with pytest.raises(ValueError, match=r"lacks the keys \['blocks'\]"):
        build_static(config)


def test_an_export_that_is_damaged_or_mismatched_is_one_clear_error(tmp_path, generator):
    net = create_supernet("ofa_mbv3_32", num_classes=3, width_mult=0.25, generator=generator).eval()
    small, large = tmp_path / "small", tmp_path / "large"
    export_static(net, net.min_arch(), small)
    export_static(net, net.max_arch(), large)
    x = torch.randn(2, 3, 32, 32, generator=generator)
    torch.testing.assert_close(load_static(small)(x), net(x, net.min_arch()))
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "subnet.json").write_bytes((small / "subnet.json").read_bytes())
    (tmp_path / "mixed" / "subnet.pt").write_bytes((large / "subnet.pt").read_bytes())
    with pytest.raises(ValueError, match=r"mixed/subnet\.pt does not fit the network .*mixed/subnet\.json describes"):
        load_static(tmp_path / "mixed")
    (small / "subnet.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"small/subnet\.pt is truncated, corrupt or not a state dict"):
        load_static(small)
    (small / "subnet.json").write_text("{")
    with pytest.raises(ValueError, match=r"small/subnet\.json is not a JSON file"):
        load_static(small)


def test_supernet_rejects_archs_of_other_spaces_or_choices(nets):
    proxyless_arch = nets["ofa_proxyless_w1.3"].max_arch()
    with pytest.raises(ValueError, match="arch belongs to space 'ofa_proxyless_w1.3'"):
        nets["ofa_mbv3_w1.0"](torch.randn(1, 3, 32, 32), proxyless_arch)
    fixed_k7 = create_supernet("ofa_mbv3_w1.0", ks_choices=[7])
    assert not fixed_k7.kernel_transform and not any(".dw.m" in n for n, _ in fixed_k7.named_parameters())
    with pytest.raises(ValueError, match=r"arch\.ks has \[3\]"):
        fixed_k7(torch.randn(1, 3, 32, 32), fixed_k7.max_arch().replace(ks=(3,) * 20))


@pytest.mark.parametrize(
    "shape, dtype",
    [((3, 32, 32), torch.float32), ((2, 1, 32, 32), torch.float32), ((2, 4, 32, 32), torch.float64),
     ((2, 3, 32, 32), torch.uint8), ((2, 3, 32, 32, 1), torch.float32)],
)  # fmt: skip
def test_supernet_names_a_malformed_input_batch(nets, shape, dtype):
    net = nets["ofa_mbv3_32"]
    x = torch.zeros(shape, dtype=dtype)
    message = rf"input must be a floating-point batch \[N, 3, H, W\].*got shape {re.escape(str(shape))} of {dtype}"
    with pytest.raises(ValueError, match=message):
        net(x, net.min_arch())
    views, buffers = net.active_params(net.min_arch()), net.active_buffers(net.min_arch())
    with pytest.raises(ValueError, match=message):
        net.functional_forward(views, buffers, x, net.min_arch(), training=True)
