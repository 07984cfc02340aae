"""Training progress, learning-rate schedules and DεpS's ε schedules, as pure functions of progress.

- :class:`Progress`: where a run is (epoch, step within the epoch, steps per epoch).
- :class:`CosineLR`: linear warm-up then cosine decay to a floor (OFA ``run_config.py`` ``cosine`` schedule with
  ``warmup_adjust_learning_rate``), evaluated per step.
- :class:`ExponentialLR`: the same warm-up, then the rate times ``decay`` every ``decay_epochs`` (a staircase) until
  it reaches ``floor`` of its peak, where it stays (BigNAS's "exponentially decaying with constant ending"; the DεpS
  code's ``multistep_periodic_constant``: ``lr · gamma`` every N epochs, at least 5 % of the initial rate).
- :func:`epsilon_paper` (DεpS eq. (4), Sec. 4.2: "We start with a small value of ε (=1e-4) and increment it by a
  constant amount to reach 1. Once ε reaches 1, it stays constant") and :func:`epsilon_lr_matched` (the official
  code's ``adjust_beta_value``: the subnets' effective learning rate ε_t·η_t rises linearly from 0 to the learning
  rate at the ramp's end).
"""

from __future__ import annotations

import math

import attrs

__all__ = [
    "Progress",
    "CosineLR",
    "ExponentialLR",
    "ExpDecay",
    "lr_schedule",
    "epsilon_paper",
    "epsilon_lr_matched",
    "EPSILON_FORMS",
]

EPSILON_FORMS = ("paper", "lr_matched", "none")


def _non_negative(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0; got {value}")


@attrs.frozen
class Progress:
    """Position in a run: ``epoch`` (0-based), ``step`` within it, ``steps_per_epoch``."""

    epoch: int = attrs.field(validator=_non_negative)
    step: int = attrs.field(validator=_non_negative)
    steps_per_epoch: int

    def __attrs_post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1; got {self.steps_per_epoch}")
        if self.step >= self.steps_per_epoch:
            raise ValueError(f"step {self.step} is outside an epoch of {self.steps_per_epoch} steps")

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step

    @property
    def epochs(self) -> float:
        """Fractional epochs done before this step (``epoch + step / steps_per_epoch``)."""
        return self.epoch + self.step / self.steps_per_epoch

    def steps_since(self, epoch: float) -> int:
        """Whole steps from the first step at or after fractional epoch ``epoch`` up to this one (negative before)."""
        start = math.ceil(round(epoch * self.steps_per_epoch, 6))  # 145/270·270 must give step 145·N, not one more
        return self.global_step - start


def _check_lengths(total_epochs: int, warmup_epochs: int) -> None:
    if total_epochs < 1 or warmup_epochs >= total_epochs and warmup_epochs > 0:
        got = f"total_epochs={total_epochs}, warmup_epochs={warmup_epochs}"
        raise ValueError(f"need total_epochs >= 1 and warmup_epochs < total_epochs; got {got}")


def _warmup(progress: Progress, warmup_epochs: int, warmup_lr: float, base_lr: float) -> float:
    frac = (progress.global_step + 1) / (warmup_epochs * progress.steps_per_epoch)
    return warmup_lr + frac * (base_lr - warmup_lr)


@attrs.frozen
class CosineLR:
    """Per-step learning rate: linear warm-up from ``warmup_lr`` over ``warmup_epochs``, then cosine from ``base_lr``
    to ``final_lr`` over the remaining ``total_epochs - warmup_epochs``.

    OFA's form (``adjust_learning_rate``/``warmup_adjust_learning_rate``): the cosine runs on ``T_cur = epoch' ·
    steps + step`` over ``T_total = epochs' · steps`` of the post-warm-up part; warm-up uses ``T_cur + 1``.
    """

    base_lr: float = attrs.field(validator=_non_negative)
    total_epochs: int
    warmup_epochs: int = attrs.field(default=0, validator=_non_negative)
    warmup_lr: float = attrs.field(default=0.0, validator=_non_negative)
    final_lr: float = attrs.field(default=0.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        _check_lengths(self.total_epochs, self.warmup_epochs)

    def __call__(self, progress: Progress) -> float:
        n = progress.steps_per_epoch
        if progress.epoch < self.warmup_epochs:
            return _warmup(progress, self.warmup_epochs, self.warmup_lr, self.base_lr)
        t_cur = (progress.epoch - self.warmup_epochs) * n + progress.step
        t_total = (self.total_epochs - self.warmup_epochs) * n
        cos = 0.5 * (1.0 + math.cos(math.pi * min(t_cur, t_total) / t_total))
        return self.final_lr + (self.base_lr - self.final_lr) * cos

    def at_epoch(self, epoch: int, steps_per_epoch: int) -> float:
        """The rate at the first step of ``epoch`` (clamped to the run)."""
        epoch = min(max(epoch, 0), self.total_epochs - 1)
        return self(Progress(epoch, 0, steps_per_epoch))


def _unit_interval(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{attribute.name} must lie in (0, 1]; got {value}")


def _positive_number(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0; got {value}")


@attrs.frozen
class ExpDecay:
    """The shape of :class:`ExponentialLR` after its warm-up: ``× decay`` every ``decay_epochs`` epochs (fractional
    allowed, e.g. EfficientNet's 0.97 every 2.4), never below ``floor`` times the peak rate."""

    decay: float = attrs.field(validator=_unit_interval)
    decay_epochs: float = attrs.field(validator=_positive_number)
    floor: float = attrs.field(default=0.0, validator=[_non_negative, attrs.validators.le(1.0)])


@attrs.frozen
class ExponentialLR:
    """Per-step learning rate: linear warm-up from ``warmup_lr`` over ``warmup_epochs`` (as :class:`CosineLR`), then
    ``base_lr · decay^⌊t / decay_epochs⌋`` with ``t`` the (fractional) epochs since the warm-up, held at
    ``floor · base_lr`` once it gets there. ``total_epochs`` only bounds the warm-up, as in :class:`CosineLR`."""

    base_lr: float = attrs.field(validator=_non_negative)
    total_epochs: int
    shape: ExpDecay
    warmup_epochs: int = attrs.field(default=0, validator=_non_negative)
    warmup_lr: float = attrs.field(default=0.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        _check_lengths(self.total_epochs, self.warmup_epochs)

    def __call__(self, progress: Progress) -> float:
        if progress.epoch < self.warmup_epochs:
            return _warmup(progress, self.warmup_epochs, self.warmup_lr, self.base_lr)
        n = progress.steps_per_epoch
        t_cur = (progress.epoch - self.warmup_epochs) * n + progress.step
        # whole periods done; the rounding keeps 2.4 · 5 = 12 epochs from landing a step short of the boundary
        periods = math.floor(round(t_cur / (self.shape.decay_epochs * n), 9))
        return self.base_lr * max(self.shape.decay**periods, self.shape.floor)


def lr_schedule(
    base_lr: float, total_epochs: int, warmup_epochs: int, final_lr: float, exp_decay: ExpDecay | None
) -> CosineLR | ExponentialLR:
    """The per-step schedule a strategy's segment runs: cosine to ``final_lr`` (capped at ``base_lr``), or
    ``exp_decay``'s staircase when one is given (``final_lr`` unused); both warm up from 0."""
    if exp_decay is not None:
        return ExponentialLR(base_lr, total_epochs, exp_decay, warmup_epochs, 0.0)
    return CosineLR(base_lr, total_epochs, warmup_epochs, 0.0, min(final_lr, base_lr))


def epsilon_paper(steps_into_ramp: int, ramp_steps: int, eps_start: float = 1e-4) -> float:
    """DεpS Sec. 4.2: ε = ``eps_start`` at the ramp's first step, + a constant per step, 1 from the end of the ramp."""
    if steps_into_ramp < 0:
        return 0.0
    if ramp_steps <= 0 or steps_into_ramp >= ramp_steps:
        return 1.0
    return eps_start + (1.0 - eps_start) * steps_into_ramp / ramp_steps


def epsilon_lr_matched(steps_into_ramp: int, ramp_steps: int, lr: float, lr_at_ramp_end: float) -> float:
    """The official code's ε: ``ε_t · lr_t = lr_end · (t + 1) / T`` during the ramp, ε = 1 after it.

    ``lr_at_ramp_end`` is the learning rate at the first step after the ramp (the code's ``lr_dict[teacher_warmup]``).
    """
    if steps_into_ramp < 0:
        return 0.0
    if ramp_steps <= 0 or steps_into_ramp >= ramp_steps:
        return 1.0
    if lr <= 0:
        return 0.0
    return lr_at_ramp_end * (steps_into_ramp + 1) / ramp_steps / lr
