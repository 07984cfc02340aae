"""Arch values: validation, serialisation, OFA list convention, samplers."""

from __future__ import annotations

import json

import pytest
import torch

from deps_core.arch import Arch, compound_arch, max_arch, min_arch, sandwich_archs, sized_arch, uniform_arch
from deps_core.spaces import list_spaces, space_spec

MBV3 = "ofa_mbv3_w1.0"


def _arch(**changes):
    base = dict(space=MBV3, ks=[7] * 20, e=[6] * 20, d=[4] * 5, resolution=224)
    return Arch(**(base | changes))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(ks=[7] * 19), r"arch\.ks needs 20 entries"),
        (dict(ks=[7] * 19 + [4]), r"arch\.ks has \[4\]; allowed values in ofa_mbv3_w1\.0: \[3, 5, 7\]"),
        (dict(e=[6] * 19 + [5]), r"arch\.e has \[5\]; allowed values in ofa_mbv3_w1\.0: \[3, 4, 6\]"),
        (dict(d=[4, 4, 4, 4]), r"arch\.d needs 5 entries"),
        (dict(d=[4, 4, 1, 4, 4]), r"arch\.d\[2\] = 1; allowed depths for stage 2 of ofa_mbv3_w1\.0: \[2, 3, 4\]"),
        (dict(resolution=225), r"arch\.resolution = 225; allowed resolutions"),
        (dict(space="ofa_mbv9"), r"unknown space 'ofa_mbv9'; registered spaces"),
    ],
)
def test_invalid_arch_names_field_and_allowed_values(changes, message):
    with pytest.raises(ValueError, match=message):
        _arch(**changes)


def test_arch_rejects_non_integers():
    with pytest.raises(TypeError, match="expected ints"):
        _arch(ks=["7"] * 20)
    with pytest.raises(TypeError):
        _arch(d=4)


def test_arch_is_immutable_hashable_and_json_round_trips(generator):
    a = uniform_arch(space_spec(MBV3), generator)
    with pytest.raises(AttributeError):
        a.ks = (3,) * 20  # type: ignore[misc]
    assert a == Arch.from_json(a.to_json())
    assert hash(a) == hash(Arch.from_dict(json.loads(a.to_json())))
    assert len({a, Arch.from_json(a.to_json())}) == 1
    with pytest.raises(ValueError, match="exactly the keys"):
        Arch.from_dict({"space": MBV3, "ks": a.ks})
    with pytest.raises(ValueError, match="not a JSON arch"):
        Arch.from_json("{not json")


def test_ofa_list_convention_round_trip(generator):
    spec = space_spec(MBV3)
    for _ in range(5):
        a = uniform_arch(spec, generator)
        o = a.to_ofa()
        assert len(o["ks"]) == len(o["e"]) == 20 and len(o["d"]) == 5 and o["image_size"] == a.resolution
        assert Arch.from_ofa(o["ks"], o["e"], o["d"], space=MBV3, resolution=o["image_size"]) == a


def test_skipped_blocks_are_ignored_by_canonical():
    # stage 0 runs 2 of its 4 blocks: entries 2 and 3 are OFA's "kept but ignored" entries
    a = _arch(d=[2, 4, 4, 4, 4], ks=[3, 3, 5, 3] + [7] * 16)
    b = _arch(d=[2, 4, 4, 4, 4], ks=[3, 3, 7, 7] + [7] * 16)
    assert a != b and a.canonical() == b.canonical() == b
    assert a.active_blocks()[:3] == [0, 1, 4]


def test_proxyless_last_stage_depth_follows_ofa_clipping():
    spec = space_spec("ofa_proxyless_w1.3")
    assert len(spec.stages) == 6 and spec.stages[-1].max_depth == 1 and spec.n_blocks == 21
    # OFA samples a depth for the one-block last stage too and clips it to 1
    a = Arch.from_ofa([5] * 21, [4] * 21, [2, 3, 4, 2, 3, 4], space="ofa_proxyless_w1.3")
    assert a.d == (2, 3, 4, 2, 3, 1)
    assert a.to_ofa()["d"] == [2, 3, 4, 2, 3, 1]


@pytest.mark.parametrize("space", list_spaces())
def test_max_min_and_samplers_stay_in_space(space, generator):
    spec = space_spec(space)
    big, small = max_arch(spec), min_arch(spec)
    assert set(big.ks) == {7} and set(big.e) == {6} and all(d == s.max_depth for d, s in zip(big.d, spec.stages))
    assert all(d == min(s.d_choices) for d, s in zip(small.d, spec.stages))
    assert all(small.ks[i] == 3 and small.e[i] == 3 for i in small.active_blocks())
    for _ in range(20):
        a = uniform_arch(spec, generator, resolutions=[128, 160, 224] if spec.default_resolution == 224 else None)
        assert a == a.canonical()
        spec.check(a)


def test_uniform_sampler_is_a_function_of_the_generator():
    spec = space_spec(MBV3)

    def draw(seed: int) -> list[Arch]:
        g = torch.Generator().manual_seed(seed)
        return [uniform_arch(spec, g) for _ in range(4)]

    assert draw(5) == draw(5)
    assert draw(5) != draw(6)


def test_uniform_sampler_covers_every_choice(generator):
    spec = space_spec(MBV3)
    archs = [uniform_arch(spec, generator, resolutions=[160, 192, 224]) for _ in range(200)]
    first_block_ks = {a.ks[0] for a in archs}
    depths = {d for a in archs for d in a.d}
    assert first_block_ks == {3, 5, 7} and depths == {2, 3, 4}
    assert {a.resolution for a in archs} == {160, 192, 224}


def test_compound_sampler_ties_expand_to_depth(generator):
    spec = space_spec(MBV3)
    for _ in range(30):
        a = compound_arch(spec, generator)
        for stage, d in zip(spec.stages, a.d):
            active = range(stage.first_block, stage.first_block + d)
            assert {a.e[i] for i in active} == {{2: 3, 3: 4, 4: 6}[d]}
    with pytest.raises(ValueError, match="no entry for depths"):
        compound_arch(spec, generator, expand_for_depth={2: 3, 3: 4})


def test_sandwich_rule(generator):
    spec = space_spec(MBV3)
    archs = sandwich_archs(spec, generator, 4)
    assert archs[0] == max_arch(spec) and archs[1] == min_arch(spec) and len(archs) == 4
    with pytest.raises(ValueError, match="n >= 2"):
        sandwich_archs(spec, generator, 1)


def test_restricted_space_keeps_subsets_only():
    spec = space_spec(MBV3, ks_choices=[7])
    assert spec.ks_choices == (7,) and max_arch(spec) == max_arch(space_spec(MBV3))
    with pytest.raises(ValueError, match=r"ks_choices must be a non-empty subset of \[3, 5, 7\]"):
        space_spec(MBV3, ks_choices=[9])
    with pytest.raises(ValueError, match="arch.ks has"):
        spec.check(_arch(ks=[3] * 20))


def test_samplers_of_a_restricted_space_stay_inside_it(generator):
    spec = space_spec(MBV3, ks_choices=[3, 5], e_choices=[3, 4])
    for arch in [min_arch(spec), max_arch(spec), *(uniform_arch(spec, generator) for _ in range(10))]:
        spec.check(arch)  # skipped blocks filled with the restricted space's largest choices, not the registry's
        assert set(arch.ks) <= {3, 5} and set(arch.e) <= {3, 4}
    k5 = space_spec(MBV3, ks_choices=[5])
    for _ in range(10):
        k5.check(compound_arch(k5, generator))


@pytest.mark.parametrize("space", list_spaces())
def test_sized_sampler_spans_the_space_from_min_to_max(space, generator):
    """Size 0 and 1 are the smallest and largest subnet; in between, draws stay in the space (restricted too) and
    larger sizes give more MACs on average."""
    from deps_core.spaces import create_supernet

    spec = space_spec(space)
    assert sized_arch(spec, generator, 0.0) == min_arch(spec) and sized_arch(spec, generator, 1.0) == max_arch(spec)
    restricted = space_spec(space, ks_choices=[3, 5], e_choices=[3, 4])
    assert sized_arch(restricted, generator, 1.0) == max_arch(restricted)
    for size in (0.1, 0.5, 0.9):
        for _ in range(5):
            for s in (spec, restricted):
                a = sized_arch(s, generator, size)
                s.check(a)
                assert a == a.canonical(s)
    net = create_supernet(space, num_classes=10)
    mean = [sum(net.macs(sized_arch(spec, generator, size)) for _ in range(40)) / 40 for size in (0.2, 0.5, 0.8)]
    assert mean[0] < mean[1] < mean[2], mean
    with pytest.raises(ValueError, match=r"size must lie in \[0, 1\]; got 1.5"):
        sized_arch(spec, generator, 1.5)


def test_sized_sampler_is_a_function_of_the_generator():
    spec = space_spec(MBV3)

    def draw(seed: int) -> list[Arch]:
        g = torch.Generator().manual_seed(seed)
        return [sized_arch(spec, g, 0.3) for _ in range(4)]

    assert draw(5) == draw(5)
    assert draw(5) != draw(6)
