"""Once-for-all training methods as pure functions of training progress.

A strategy answers one question per step, ``plan(progress, seed) -> Plan``: which subnets to train on this batch, with
which gradient weight, loss and dropout, the learning rate, and what must have happened before the step (channel
re-organization). The step and the trainer never ask which method they are running.

- :class:`DepsStrategy` — DεpS (Annavajjala, Khare et al., ECCV 2024): FM-Warmup (the full model alone until
  ``P_fm · epochs``), then ε-Shrinking (eq. (4): ``G = ∇L_full + ε_t Σ_j ∇L_j`` over the full model and ``k − 1``
  subnets) with IKD-Warmup (subnets distil in place from the full model, only after the warm-up).
- :class:`OFAStrategy` — OFA progressive shrinking (Cai et al., ICLR 2020) in one run: full model, then elastic
  kernel, depth and expand phases, each with its own learning-rate schedule, KD from a frozen full model.
- :class:`BigNASStrategy` — BigNAS (Yu et al., ECCV 2020): the sandwich rule from step 0 with in-place KD.
- :class:`CompOFAStrategy` — CompOFA (Sahni et al., ICLR 2021): full model, then compound subnets (expand tied to
  depth, fixed per-stage kernels) with teacher KD.

Subnets are drawn from a generator seeded by ``(seed, epoch, step, term)``, so every rank of a distributed run draws
the same subnets without sharing any state, and a resumed run replays them.
"""

from __future__ import annotations

import math

import attrs
import torch

from deps_core.arch import Arch, compound_arch, max_arch, min_arch, uniform_arch
from deps_core.distill import LOSS_KINDS
from deps_core.schedules import EPSILON_FORMS, ExpDecay, Progress, epsilon_lr_matched, epsilon_paper, lr_schedule
from deps_core.spaces.base import SpaceSpec

__all__ = [
    "SubnetTerm",
    "Reorganize",
    "Phase",
    "Plan",
    "term_generator",
    "DepsStrategy",
    "OFAStrategy",
    "BigNASStrategy",
    "CompOFAStrategy",
    "STRATEGIES",
]


# --- plan values ------------------------------------------------------------------------------------------------


def _loss_kind(_inst: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in LOSS_KINDS:
        raise ValueError(f"{attribute.name} must be one of {LOSS_KINDS}; got {value!r}")


@attrs.frozen
class SubnetTerm:
    """One subnet of a step: its gradient enters the update with factor ``weight``."""

    arch: Arch
    weight: float
    loss: str = attrs.field(validator=_loss_kind)
    dropout: bool = False
    update_bn_stats: bool = True
    role: str = "subnet"  # "full", "min", "uniform", "compound": for logs only


@attrs.frozen
class Reorganize:
    """Channel re-organization that must have happened (once per ``key``) before the step runs."""

    key: str
    expand_stage: int


@attrs.frozen
class Phase:
    """A stretch of training with its own learning-rate schedule (``restart=False``: continues the previous one).

    ``lr`` is the peak rate for ``lr_batch`` images; strategies scale it linearly to their global batch.
    ``ks_choices``/``e_choices``/``d_choices`` restrict the space sampled in the phase (``None``: all).
    """

    name: str
    epochs: int
    warmup_epochs: int = 0
    lr: float | None = None
    lr_batch: int | None = None
    restart: bool = True
    ks_choices: tuple[int, ...] | None = None
    e_choices: tuple[int, ...] | None = None
    d_choices: tuple[int, ...] | None = None


@attrs.frozen
class Plan:
    """Everything a step needs to know: the terms (the full model first when in-place KD is used), the learning rate
    and ε, and the phase for logs and cost accounting."""

    terms: tuple[SubnetTerm, ...]
    lr: float
    phase: str
    phase_index: int
    epsilon: float = 1.0
    reorganize: Reorganize | None = None

    @property
    def needs_teacher(self) -> bool:
        """Whether a frozen external teacher's logits are needed (OFA/CompOFA-style KD)."""
        return any(t.loss == "teacher_kd" for t in self.terms)


# --- seeding ----------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def term_generator(seed: int, progress: Progress, term: int) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, epoch, step, term)."""
    h = 0
    for part in (seed, progress.epoch, progress.step, term):
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return torch.Generator().manual_seed(h & ((1 << 63) - 1))


# --- shared machinery -------------------------------------------------------------------------------------------


def _positive(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0 < value < math.inf:  # NaN too: it would train without an error until the first loss
        raise ValueError(f"{attribute.name} must be a finite number > 0; got {value}")


class _PhasedStrategy:
    """Phase lookup and the per-phase learning rate (cosine to ``final_lr``, or ``exp_decay``'s staircase), shared by
    the strategies below."""

    spec: SpaceSpec
    global_batch: int
    final_lr: float
    exp_decay: ExpDecay | None

    @property
    def phases(self) -> tuple[Phase, ...]:  # pragma: no cover - every strategy defines it
        raise NotImplementedError

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def phase_at(self, progress: Progress) -> tuple[int, Phase, int]:
        """(index, phase, first epoch of the phase) for ``progress``."""
        start = 0
        for i, phase in enumerate(self.phases):
            if progress.epoch < start + phase.epochs:
                return i, phase, start
            start += phase.epochs
        raise ValueError(f"epoch {progress.epoch} is past the end of training ({self.total_epochs} epochs)")

    def _segment(self, index: int) -> tuple[int, int, Phase]:
        """First epoch and length of the schedule segment holding phase ``index``, and the phase that starts it."""
        starts, start = [], 0
        for p in self.phases:
            starts.append(start)
            start += p.epochs
        first = index
        while first > 0 and not self.phases[first].restart:
            first -= 1
        last = index
        while last + 1 < len(self.phases) and not self.phases[last + 1].restart:
            last += 1
        length = sum(p.epochs for p in self.phases[first : last + 1])
        return starts[first], length, self.phases[first]

    def lr_at(self, progress: Progress) -> float:
        index, _, _ = self.phase_at(progress)
        seg_start, seg_epochs, head = self._segment(index)
        base = head.lr * self.global_batch / head.lr_batch
        schedule = lr_schedule(base, seg_epochs, head.warmup_epochs, self.final_lr, self.exp_decay)
        return schedule(Progress(progress.epoch - seg_start, progress.step, progress.steps_per_epoch))

    def _space(self, phase: Phase) -> SpaceSpec:
        return self.spec.restricted(ks_choices=phase.ks_choices, e_choices=phase.e_choices, d_choices=phase.d_choices)


def _check_k(_inst: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} (subnets per step) must be >= 1; got {value}")


# --- DεpS -------------------------------------------------------------------------------------------------------


@attrs.frozen
class DepsStrategy(_PhasedStrategy):
    """DεpS. Defaults follow the paper; the official code's recipe is ``p_fm = 145/270, eps_form = "lr_matched"``.

    - ``p_fm``: shrinking starts at ``p_fm · total_epochs`` (fractional epochs allowed); before it, FM-Warmup.
    - ``k``: terms per shrinking step: the full model (weight 1, CE with label smoothing, dropout) and ``k − 1``
      subnets (weight ε_t): the smallest subnet and ``k − 2`` uniform ones, or ``k − 1`` uniform ones when
      ``all_uniform`` (eq. (4)'s ``U_{k−1}(A \\ {a_full})``).
    - ``ramp_epochs``/``eps_form``: ε rises over the first ``ramp_epochs`` of shrinking, ``"paper"`` (from
      ``eps_start`` by a constant per step to 1), ``"lr_matched"`` (the official code: ε_t·lr_t rises linearly to
      the learning rate at the ramp's end) or ``"none"`` (ablation: ε = 1 at once).
    - ``subnet_loss``: ``"inplace_kd"`` (IKD-Warmup) or ``"ce"`` (ablation). The paper's "in-place KD" ablation
      (distilling from an untrained full model) is ``p_fm = 0``.
    - ``reorganize``: OFA's channel importance sorting once, when shrinking starts (the recipe's
      ``--reorganize_weights``).
    """

    spec: SpaceSpec
    total: int = attrs.field(validator=_positive)
    lr: float = attrs.field(validator=_positive)
    lr_batch: int = attrs.field(validator=_positive)
    global_batch: int = attrs.field(validator=_positive)
    warmup_epochs: int = 0
    final_lr: float = 0.0
    exp_decay: ExpDecay | None = None
    p_fm: float = attrs.field(default=0.5)
    k: int = attrs.field(default=4, validator=_check_k)
    ramp_epochs: float = 5.0
    eps_form: str = "paper"
    eps_start: float = 1e-4
    all_uniform: bool = False
    subnet_loss: str = "inplace_kd"
    subnet_bn_stats: bool = True
    reorganize: bool = False
    grad_clip_value: float | None = None

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.p_fm <= 1.0:
            raise ValueError(f"p_fm must lie in [0, 1]; got {self.p_fm}")
        if self.eps_form not in EPSILON_FORMS:
            raise ValueError(f"eps_form must be one of {EPSILON_FORMS}; got {self.eps_form!r}")
        if self.subnet_loss not in ("inplace_kd", "ce"):
            raise ValueError(f"subnet_loss must be 'inplace_kd' or 'ce'; got {self.subnet_loss!r}")
        if self.ramp_epochs < 0 or not 0 < self.eps_start <= 1:
            raise ValueError(f"need ramp_epochs >= 0 and 0 < eps_start <= 1; got {self.ramp_epochs}, {self.eps_start}")
        if self.k < 2 and self.p_fm < 1.0:
            raise ValueError(f"k must be >= 2 to shrink (the full model plus subnets); got {self.k}")

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (Phase("deps", self.total, self.warmup_epochs, self.lr, self.lr_batch),)

    @property
    def shrink_start(self) -> float:
        return self.p_fm * self.total

    def epsilon(self, progress: Progress) -> float:
        """ε_t at ``progress`` (0 during FM-Warmup)."""
        j = progress.steps_since(self.shrink_start)
        if j < 0:
            return 0.0
        ramp = round(self.ramp_epochs * progress.steps_per_epoch)
        if self.eps_form == "none":
            return 1.0
        if self.eps_form == "paper":
            return epsilon_paper(j, ramp, self.eps_start)
        end_step = progress.global_step - j + ramp
        end_step = min(end_step, self.total * progress.steps_per_epoch - 1)
        end = Progress(
            end_step // progress.steps_per_epoch, end_step % progress.steps_per_epoch, progress.steps_per_epoch
        )
        return epsilon_lr_matched(j, ramp, self.lr_at(progress), self.lr_at(end))

    def plan(self, progress: Progress, seed: int) -> Plan:
        lr = self.lr_at(progress)
        full = SubnetTerm(max_arch(self.spec), 1.0, "ce", dropout=True, role="full")
        if progress.steps_since(self.shrink_start) < 0:
            return Plan((full,), lr, "fm_warmup", 0, epsilon=0.0)
        eps = self.epsilon(progress)
        terms = [full]
        for j in range(1, self.k):
            if j == 1 and not self.all_uniform:
                arch, role = min_arch(self.spec), "min"
            else:
                arch, role = uniform_arch(self.spec, term_generator(seed, progress, j)), "uniform"
            terms.append(SubnetTerm(arch, eps, self.subnet_loss, update_bn_stats=self.subnet_bn_stats, role=role))
        reorg = Reorganize("shrink", max(len(self.spec.e_choices) - 2, 0)) if self.reorganize else None
        return Plan(tuple(terms), lr, "shrinking", 1, epsilon=eps, reorganize=reorg)


# --- OFA progressive shrinking -------------------------------------------------------------------------------------


@attrs.frozen
class OFAStrategy(_PhasedStrategy):
    """OFA progressive shrinking in one run (``train_ofa_net.py``): full model → elastic kernel (1 subnet/step) →
    depth {3,4} then {2,3,4} (2 subnets/step) → expand {4,6} then {3,4,6} (4 subnets/step, channels re-organized at
    the start of each). Each later phase restarts a cosine schedule with OFA's rate (per 64 images); phases of
    ``+ warmup_epochs`` start with a linear warm-up. Subnets train with CE + KD from a frozen copy of the full model
    taken when phase 1 begins. Default epochs: 180 / 120+5 / 25 / 120+5 / 25 / 120+5 (605 in all).
    """

    spec: SpaceSpec
    lr: float = attrs.field(validator=_positive)  # the full-model phase's rate for lr_batch images
    lr_batch: int = attrs.field(validator=_positive)
    global_batch: int = attrs.field(validator=_positive)
    teacher_epochs: int = 180
    kernel_epochs: int = 120
    depth_epochs: tuple[int, int] = (25, 120)
    expand_epochs: tuple[int, int] = (25, 120)
    warmup_epochs: int = 5
    teacher_warmup_epochs: int = 0
    phase_lrs: tuple[float, float, float, float, float] = (3e-2, 2.5e-3, 7.5e-3, 2.5e-3, 7.5e-3)  # per 64 images
    final_lr: float = 0.0
    exp_decay: ExpDecay | None = None
    grad_clip_value: float | None = None

    @property
    def phases(self) -> tuple[Phase, ...]:
        w, lrs = self.warmup_epochs, self.phase_lrs
        return (
            Phase("full", self.teacher_epochs, self.teacher_warmup_epochs, self.lr, self.lr_batch),
            Phase("kernel", self.kernel_epochs + w, w, lrs[0], 64, e_choices=(6,), d_choices=(4,)),
            Phase("depth_1", self.depth_epochs[0], 0, lrs[1], 64, e_choices=(6,), d_choices=(3, 4)),
            Phase("depth_2", self.depth_epochs[1] + w, w, lrs[2], 64, e_choices=(6,), d_choices=(2, 3, 4)),
            Phase("expand_1", self.expand_epochs[0], 0, lrs[3], 64, e_choices=(4, 6)),
            Phase("expand_2", self.expand_epochs[1] + w, w, lrs[4], 64),
        )

    _SUBNETS_PER_STEP = (1, 1, 2, 2, 4, 4)

    def plan(self, progress: Progress, seed: int) -> Plan:
        index, phase, _ = self.phase_at(progress)
        lr = self.lr_at(progress)
        if index == 0:
            return Plan((SubnetTerm(max_arch(self.spec), 1.0, "ce", dropout=True, role="full"),), lr, phase.name, 0)
        space = self._space(phase)
        terms = tuple(
            SubnetTerm(
                uniform_arch(space, term_generator(seed, progress, j)), 1.0, "teacher_kd", dropout=True, role="uniform"
            )
            for j in range(self._SUBNETS_PER_STEP[index])
        )
        reorg = Reorganize(phase.name, index - 4) if index >= 4 else None
        return Plan(terms, lr, phase.name, index, reorganize=reorg)


# --- BigNAS -----------------------------------------------------------------------------------------------------


@attrs.frozen
class BigNASStrategy(_PhasedStrategy):
    """BigNAS's sandwich rule from the first step: the largest subnet (CE with label smoothing, dropout), the smallest
    and ``k − 2`` uniform ones distilling in place from it, all with weight 1; optional gradient clipping by value."""

    spec: SpaceSpec
    total: int = attrs.field(validator=_positive)
    lr: float = attrs.field(validator=_positive)
    lr_batch: int = attrs.field(validator=_positive)
    global_batch: int = attrs.field(validator=_positive)
    warmup_epochs: int = 0
    final_lr: float = 0.0
    exp_decay: ExpDecay | None = None
    k: int = attrs.field(default=4, validator=_check_k)
    subnet_bn_stats: bool = True
    grad_clip_value: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"the sandwich rule needs k >= 2 (largest and smallest); got {self.k}")

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (Phase("sandwich", self.total, self.warmup_epochs, self.lr, self.lr_batch),)

    def plan(self, progress: Progress, seed: int) -> Plan:
        terms = [SubnetTerm(max_arch(self.spec), 1.0, "ce", dropout=True, role="full")]
        terms.append(
            SubnetTerm(min_arch(self.spec), 1.0, "inplace_kd", update_bn_stats=self.subnet_bn_stats, role="min")
        )
        for j in range(2, self.k):
            arch = uniform_arch(self.spec, term_generator(seed, progress, j))
            terms.append(SubnetTerm(arch, 1.0, "inplace_kd", update_bn_stats=self.subnet_bn_stats, role="uniform"))
        return Plan(tuple(terms), self.lr_at(progress), "sandwich", 0)


# --- CompOFA ----------------------------------------------------------------------------------------------------

MBV3_LARGE_KERNELS = (3, 5, 3, 3, 5)  # CompOFA's fixed per-stage kernels (MobileNetV3-Large's)


@attrs.frozen
class CompOFAStrategy(_PhasedStrategy):
    """CompOFA: the full model, then compound subnets (one expand ratio per stage tied to its depth, 2→3, 3→4, 4→6)
    with KD from a frozen full model, 4 per step, in two phases (CompOFA ``train_ofa_net.py --task compound``:
    25 epochs at 0.08 and 120+5 at 0.24 per 2048 images). ``stage_kernels``: CompOFA's fixed kernels per stage
    (``None``: elastic kernels, uniform per block). Default epochs 180 / 25 / 125 (330 in all)."""

    spec: SpaceSpec
    lr: float = attrs.field(validator=_positive)
    lr_batch: int = attrs.field(validator=_positive)
    global_batch: int = attrs.field(validator=_positive)
    teacher_epochs: int = 180
    compound_epochs: tuple[int, int] = (25, 120)
    warmup_epochs: int = 5
    teacher_warmup_epochs: int = 0
    phase_lrs: tuple[float, float] = (0.08, 0.24)  # per 2048 images
    k: int = attrs.field(default=4, validator=_check_k)
    stage_kernels: tuple[int, ...] | None = MBV3_LARGE_KERNELS
    final_lr: float = 0.0
    exp_decay: ExpDecay | None = None
    grad_clip_value: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.stage_kernels is not None:
            if len(self.stage_kernels) != len(self.spec.stages):
                raise ValueError(f"stage_kernels needs {len(self.spec.stages)} entries; got {self.stage_kernels}")
            bad = [k for k in self.stage_kernels if k not in self.spec.ks_choices]
            if bad:
                raise ValueError(f"stage_kernels has {bad}; allowed kernel sizes: {list(self.spec.ks_choices)}")

    @property
    def phases(self) -> tuple[Phase, ...]:
        w = self.warmup_epochs
        return (
            Phase("full", self.teacher_epochs, self.teacher_warmup_epochs, self.lr, self.lr_batch),
            Phase("compound_1", self.compound_epochs[0], 0, self.phase_lrs[0], 2048),
            Phase("compound_2", self.compound_epochs[1] + w, w, self.phase_lrs[1], 2048),
        )

    def _sample(self, generator: torch.Generator) -> Arch:
        arch = compound_arch(self.spec, generator)
        if self.stage_kernels is None:
            return arch
        ks = list(arch.ks)
        for stage, k in zip(self.spec.stages, self.stage_kernels):
            ks[stage.first_block : stage.first_block + stage.max_depth] = [k] * stage.max_depth
        return arch.replace(ks=tuple(ks)).canonical(self.spec)

    def plan(self, progress: Progress, seed: int) -> Plan:
        index, phase, _ = self.phase_at(progress)
        lr = self.lr_at(progress)
        if index == 0:
            return Plan((SubnetTerm(max_arch(self.spec), 1.0, "ce", dropout=True, role="full"),), lr, phase.name, 0)
        terms = tuple(
            SubnetTerm(
                self._sample(term_generator(seed, progress, j)), 1.0, "teacher_kd", dropout=True, role="compound"
            )
            for j in range(self.k)
        )
        return Plan(terms, lr, phase.name, index)


STRATEGIES: dict[str, type] = {
    "deps": DepsStrategy,
    "ofa": OFAStrategy,
    "bignas": BigNASStrategy,
    "compofa": CompOFAStrategy,
}
