"""Strategies as pure functions of progress; learning-rate and ε schedules."""

from __future__ import annotations

import math

import pytest

from deps_core.arch import max_arch, min_arch
from deps_core.schedules import CosineLR, ExpDecay, ExponentialLR, Progress, epsilon_lr_matched, epsilon_paper
from deps_core.spaces import space_spec
from deps_core.strategies import BigNASStrategy, CompOFAStrategy, DepsStrategy, OFAStrategy, term_generator

SPEC = space_spec("ofa_mbv3_w1.0")
N = 100  # steps per epoch
COMMON = dict(lr=0.1625, lr_batch=128, global_batch=256)


def deps(**kw) -> DepsStrategy:
    return DepsStrategy(SPEC, **({"total": 270} | COMMON | kw))


def test_cosine_lr_matches_ofa_form():
    lr = CosineLR(0.4, total_epochs=10, warmup_epochs=2, warmup_lr=0.0)
    assert lr(Progress(0, 0, N)) == pytest.approx(0.4 / (2 * N))  # warm-up counts T_cur + 1
    assert lr(Progress(1, N - 1, N)) == pytest.approx(0.4)
    assert lr(Progress(2, 0, N)) == pytest.approx(0.4)
    assert lr(Progress(6, 0, N)) == pytest.approx(0.2)  # half-way through the cosine part
    assert lr(Progress(9, N - 1, N)) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * (8 * N - 1) / (8 * N))))
    assert CosineLR(0.4, 10, final_lr=0.01)(Progress(5, 0, N)) == pytest.approx(0.01 + 0.39 * 0.5)


def test_exponential_lr_is_a_staircase_with_a_constant_ending_after_the_cosine_warm_up():
    shape = ExpDecay(0.5, 2.4, floor=0.1)
    lr = ExponentialLR(0.4, total_epochs=40, shape=shape, warmup_epochs=2)
    cosine = CosineLR(0.4, total_epochs=40, warmup_epochs=2)
    for epoch, step in [(0, 0), (0, 57), (1, N - 1)]:  # the same linear warm-up from 0 as the cosine schedule
        assert lr(Progress(epoch, step, N)) == cosine(Progress(epoch, step, N))
    assert lr(Progress(2, 0, N)) == 0.4
    assert lr(Progress(4, 39, N)) == 0.4  # 2.39 epochs after the warm-up: still the first stair
    assert lr(Progress(4, 40, N)) == 0.2  # 2.4 epochs exactly: one decay
    assert lr(Progress(6, 80, N)) == 0.1  # 4.8: two
    assert lr(Progress(9, 20, N)) == pytest.approx(0.05)  # 7.2 epochs: three decays, 0.5³ = 0.125 still above 0.1
    assert lr(Progress(39, N - 1, N)) == pytest.approx(0.04)  # 0.5¹⁵ long under the floor
    # a period of 0.1 epoch at 30 steps is 3.0000000000000004 steps in floats: step 3 still starts the second stair
    assert ExponentialLR(1.0, 2, ExpDecay(0.9, 0.1))(Progress(0, 3, 30)) == pytest.approx(0.9)
    assert ExponentialLR(1.0, 2, ExpDecay(0.9, 0.1))(Progress(1, 0, 30)) == pytest.approx(0.9**10)
    for bad, message in [
        (dict(decay=0.0, decay_epochs=2), "decay must lie in"),
        (dict(decay=1.5, decay_epochs=2), "decay must lie in"),
        (dict(decay=0.9, decay_epochs=0), "decay_epochs must be > 0"),
        (dict(decay=0.9, decay_epochs=2, floor=1.5), "floor"),
    ]:
        with pytest.raises(ValueError, match=message):
            ExpDecay(**bad)
    with pytest.raises(ValueError, match="warmup_epochs < total_epochs"):
        ExponentialLR(0.4, 5, shape, warmup_epochs=5)


def test_strategies_run_the_exponential_schedule_per_segment_in_place_of_the_cosine():
    shape = ExpDecay(0.9, 2.0, floor=0.05)
    s = deps(warmup_epochs=5, exp_decay=shape, final_lr=0.0)
    base = 0.1625 * 256 / 128
    for epoch in (0, 4, 5, 6, 7, 100, 269):
        want = ExponentialLR(base, 270, shape, warmup_epochs=5)(Progress(epoch, 3, N))
        assert s.lr_at(Progress(epoch, 3, N)) == s.plan(Progress(epoch, 3, N), seed=0).lr == want
    assert s.lr_at(Progress(269, 0, N)) == pytest.approx(0.05 * base)
    bignas = BigNASStrategy(SPEC, total=10, exp_decay=shape, **COMMON)
    assert bignas.lr_at(Progress(9, 0, N)) == pytest.approx(base * 0.9**4)


def test_epsilon_forms_at_known_points():
    assert epsilon_paper(-1, 500) == 0.0
    assert epsilon_paper(0, 500) == pytest.approx(1e-4)
    assert epsilon_paper(250, 500) == pytest.approx(1e-4 + (1 - 1e-4) / 2)
    assert epsilon_paper(500, 500) == epsilon_paper(10_000, 500) == 1.0
    # the official code: eps * lr rises linearly to the learning rate at the ramp's end
    assert epsilon_lr_matched(0, 500, lr=0.2, lr_at_ramp_end=0.1) == pytest.approx(0.1 / 500 / 0.2)
    assert epsilon_lr_matched(499, 500, lr=0.1, lr_at_ramp_end=0.1) == pytest.approx(1.0)
    assert epsilon_lr_matched(500, 500, lr=0.1, lr_at_ramp_end=0.1) == 1.0


def test_deps_phases_terms_and_epsilon():
    s = deps()  # shrinking from epoch 135, a 5-epoch ramp
    warm = s.plan(Progress(134, N - 1, N), seed=0)
    assert warm.phase == "fm_warmup" and warm.epsilon == 0.0 and len(warm.terms) == 1
    assert warm.terms[0].arch == max_arch(SPEC) and warm.terms[0].dropout and warm.terms[0].loss == "ce"
    first = s.plan(Progress(135, 0, N), seed=0)
    assert first.phase == "shrinking" and first.epsilon == pytest.approx(1e-4)
    roles = [t.role for t in first.terms]
    assert roles == ["full", "min", "uniform", "uniform"]
    assert first.terms[0].weight == 1.0 and all(t.weight == first.epsilon for t in first.terms[1:])
    assert first.terms[1].arch == min_arch(SPEC)
    assert all(t.loss == "inplace_kd" and not t.dropout for t in first.terms[1:])
    mid = s.plan(Progress(137, 50, N), seed=0)
    assert mid.epsilon == pytest.approx(1e-4 + (1 - 1e-4) * 250 / 500)
    assert s.plan(Progress(140, 0, N), seed=0).epsilon == 1.0
    assert s.plan(Progress(269, N - 1, N), seed=0).epsilon == 1.0
    # the LR is one cosine over the whole run, not restarted when shrinking starts
    assert first.lr == pytest.approx(CosineLR(0.1625 * 2, 270)(Progress(135, 0, N)))


def test_deps_official_recipe_and_ablations():
    official = deps(p_fm=145 / 270, eps_form="lr_matched", reorganize=True)
    assert official.plan(Progress(144, N - 1, N), seed=0).phase == "fm_warmup"
    first = official.plan(Progress(145, 0, N), seed=0)
    end_lr = official.lr_at(Progress(150, 0, N))
    assert first.epsilon * first.lr == pytest.approx(end_lr / (5 * N))
    assert official.plan(Progress(149, N - 1, N), seed=0).epsilon * official.lr_at(Progress(149, N - 1, N)) == (
        pytest.approx(end_lr)
    )
    assert first.reorganize is not None and first.reorganize.expand_stage == 1  # e {3,4,6}: OFA stage n - 1
    assert official.plan(Progress(10, 0, N), seed=0).reorganize is None
    assert deps(eps_form="none").plan(Progress(135, 0, N), seed=0).epsilon == 1.0
    assert {t.loss for t in deps(subnet_loss="ce").plan(Progress(200, 0, N), seed=0).terms} == {"ce"}
    assert deps(p_fm=0.0).plan(Progress(0, 0, N), seed=0).phase == "shrinking"  # the "in-place KD" ablation
    roles = [t.role for t in deps(all_uniform=True, k=5).plan(Progress(200, 0, N), seed=0).terms]
    assert roles == ["full"] + ["uniform"] * 4


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(p_fm=1.5), "p_fm must lie in"),
        (dict(eps_form="linear"), "eps_form must be one of"),
        (dict(subnet_loss="mse"), "subnet_loss must be"),
        (dict(k=0), "k \\(subnets per step\\) must be >= 1"),
        (dict(lr=-1.0), "lr must be a finite number > 0; got -1.0"),
        (dict(lr=math.nan), "lr must be a finite number > 0; got nan"),
        (dict(lr=math.inf), "lr must be a finite number > 0; got inf"),
        (dict(global_batch=0), "global_batch must be a finite number > 0; got 0"),
    ],
)
def test_invalid_strategy_configs_name_the_field(kw, message):
    with pytest.raises(ValueError, match=message):
        deps(**kw)


def test_sampling_is_a_pure_function_of_seed_epoch_step_term():
    s = deps(p_fm=0.0)
    a = s.plan(Progress(3, 7, N), seed=1)
    assert a == s.plan(Progress(3, 7, N), seed=1)  # another "rank" or a resumed run draws the same subnets
    assert a.terms[2].arch != a.terms[3].arch  # terms differ from each other
    assert a != s.plan(Progress(3, 8, N), seed=1) and a != s.plan(Progress(3, 7, N), seed=2)
    g1, g2 = term_generator(1, Progress(3, 7, N), 2), term_generator(1, Progress(3, 7, N), 2)
    assert g1.initial_seed() == g2.initial_seed() != term_generator(1, Progress(7, 3, N), 2).initial_seed()


def test_ofa_progressive_shrinking_phases():
    s = OFAStrategy(SPEC, **COMMON)
    assert [p.name for p in s.phases] == ["full", "kernel", "depth_1", "depth_2", "expand_1", "expand_2"]
    assert s.total_epochs == 605  # DεpS Table 2's OFA epochs: 180 + 125 + 25 + 125 + 25 + 125
    starts = {"full": 0, "kernel": 180, "depth_1": 305, "depth_2": 330, "expand_1": 455, "expand_2": 480}
    n_terms = {"full": 1, "kernel": 1, "depth_1": 2, "depth_2": 2, "expand_1": 4, "expand_2": 4}
    for name, start in starts.items():
        plan = s.plan(Progress(start, 0, N), seed=3)
        assert plan.phase == name and len(plan.terms) == n_terms[name]
        if name != "full":
            assert all(t.loss == "teacher_kd" and t.dropout for t in plan.terms) and plan.needs_teacher
    kernel = [s.plan(Progress(200, i, N), seed=3).terms[0].arch for i in range(20)]
    assert all(set(a.e) == {6} and set(a.d) == {4} for a in kernel) and len({a.ks for a in kernel}) > 1
    depth_1 = [t.arch for i in range(20) for t in s.plan(Progress(310, i, N), seed=3).terms]
    assert {d for a in depth_1 for d in a.d} == {3, 4}
    # each later phase restarts its cosine at OFA's rate per 64 images, with a 5-epoch warm-up where OFA has one
    assert s.lr_at(Progress(184, N - 1, N)) == pytest.approx(3e-2 * 256 / 64)
    assert s.lr_at(Progress(305, 0, N)) == pytest.approx(2.5e-3 * 256 / 64)
    assert s.lr_at(Progress(330, 0, N)) == pytest.approx(7.5e-3 * 256 / 64 / (5 * N))
    assert s.plan(Progress(455, 0, N), seed=0).reorganize.key == "expand_1"
    assert s.plan(Progress(500, 0, N), seed=0).reorganize.expand_stage == 1
    with pytest.raises(ValueError, match="past the end of training"):
        s.plan(Progress(605, 0, N), seed=0)


def test_bignas_sandwich_from_the_first_step():
    s = BigNASStrategy(SPEC, total=400, k=4, grad_clip_value=1.0, **COMMON)
    plan = s.plan(Progress(0, 0, N), seed=0)
    assert [t.role for t in plan.terms] == ["full", "min", "uniform", "uniform"]
    assert all(t.weight == 1.0 for t in plan.terms) and [t.loss for t in plan.terms][1:] == ["inplace_kd"] * 3
    assert s.grad_clip_value == 1.0


def test_compofa_couples_expand_to_depth_with_fixed_kernels():
    s = CompOFAStrategy(SPEC, **COMMON)
    assert s.total_epochs == 330 and [p.epochs for p in s.phases] == [180, 25, 125]
    for i in range(10):
        for t in s.plan(Progress(200, i, N), seed=5).terms:
            for stage, d, k in zip(SPEC.stages, t.arch.d, (3, 5, 3, 3, 5)):
                blocks = range(stage.first_block, stage.first_block + d)
                assert {t.arch.e[b] for b in blocks} == {{2: 3, 3: 4, 4: 6}[d]} and {t.arch.ks[b] for b in blocks} == {
                    k
                }
    with pytest.raises(ValueError, match="stage_kernels needs 5 entries"):
        CompOFAStrategy(SPEC, stage_kernels=(3, 5), **COMMON)
