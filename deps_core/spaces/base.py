"""The structure of a MobileNet-style elastic supernet as a frozen value.

A :class:`SpaceSpec` holds everything that fixes the shapes of a supernet: the stem, a fixed first block, the elastic
stages (width, number of blocks, stride, activation, squeeze-excite), the head, the choice sets for kernel size,
expand ratio and depth, and the BN constants. The rules that turn a width multiplier into channel counts follow OFA
(Cai et al., ICLR 2020; ``ofa/utils/pytorch_modules.py``: ``make_divisible`` with divisor 8, ``SEModule`` with
reduction 4 and its hidden width ``make_divisible(C // 4, 8)``; an MBConv's hidden width is
``make_divisible(round(C_in · e), 8)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from deps_core.arch import Arch

__all__ = ["make_divisible", "ConvSpec", "FixedBlockSpec", "StageSpec", "BlockSpec", "SpaceSpec", "ACTIVATIONS"]

ACTIVATIONS = ("relu", "relu6", "h_swish", "none")
CHANNEL_DIVISIBLE = 8
SE_REDUCTION = 4


def make_divisible(v: float, divisor: int = CHANNEL_DIVISIBLE, min_val: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never going down by more than 10% (TF-slim's rule)."""
    min_val = divisor if min_val is None else min_val
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def mid_channels(cin: int, expand: int) -> int:
    """Hidden width of an inverted-residual block (OFA ``DynamicMBConvLayer.active_middle_channel``)."""
    return make_divisible(round(cin * expand))


def se_channels(c: int) -> int:
    """Hidden width of squeeze-excite on ``c`` channels (OFA ``SEModule``)."""
    return make_divisible(c // SE_REDUCTION)


def _check_act(_inst: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in ACTIVATIONS:
        raise ValueError(f"{attribute.name} must be one of {ACTIVATIONS}; got {value!r}")


@attrs.frozen
class ConvSpec:
    """A plain conv (+ optional BN) + activation: the stem and the head layers. ``name`` is its parameter prefix."""

    name: str
    cout: int
    kernel_size: int = 1
    stride: int = 1
    bn: bool = True
    act: str = attrs.field(default="relu", validator=_check_act)


@attrs.frozen
class FixedBlockSpec:
    """The first inverted-residual block (expand ratio 1, not elastic)."""

    cin: int
    cout: int
    kernel_size: int
    stride: int
    act: str = attrs.field(validator=_check_act)
    se: bool = False

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


@attrs.frozen
class StageSpec:
    """An elastic stage: ``max_depth`` blocks of output width ``width``; the first has stride ``stride``."""

    width: int
    max_depth: int
    stride: int
    act: str = attrs.field(validator=_check_act)
    se: bool
    d_choices: tuple[int, ...] = attrs.field(converter=tuple)
    first_block: int  # index of the stage's first block in the per-block lists

    def __attrs_post_init__(self) -> None:
        bad = [d for d in self.d_choices if not 1 <= d <= self.max_depth]
        if not self.d_choices or bad:
            raise ValueError(f"stage depth choices {self.d_choices} must lie in 1..{self.max_depth}")


@attrs.frozen
class BlockSpec:
    """One elastic block position: fixed in/out width and stride, elastic kernel and hidden width."""

    index: int
    stage: int
    cin: int
    cout: int
    stride: int
    act: str
    se: bool
    max_mid: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout

    @property
    def prefix(self) -> str:
        return f"blocks.{self.index}"


def _sorted_unique(values: Sequence[int]) -> tuple[int, ...]:
    return tuple(sorted({int(v) for v in values}))


@attrs.frozen
class SpaceSpec:
    """A whole elastic space. Build one with a registered builder (``deps_core.spaces``), not by hand."""

    name: str
    family: str  # "mbv3" or "proxyless": which registered layout an Arch of this space follows
    width_mult: float
    stem: ConvSpec
    first: FixedBlockSpec
    stages: tuple[StageSpec, ...] = attrs.field(converter=tuple)
    head_pre_pool: tuple[ConvSpec, ...] = attrs.field(converter=tuple)
    head_post_pool: tuple[ConvSpec, ...] = attrs.field(converter=tuple)
    ks_choices: tuple[int, ...] = attrs.field(converter=_sorted_unique)
    e_choices: tuple[int, ...] = attrs.field(converter=_sorted_unique)
    resolutions: tuple[int, ...] = attrs.field(converter=_sorted_unique)
    default_resolution: int
    bn_eps: float
    bn_momentum: float
    dropout: float

    def __attrs_post_init__(self) -> None:
        if any(k % 2 == 0 or k < 1 for k in self.ks_choices):
            raise ValueError(f"kernel sizes must be odd and positive; got {self.ks_choices}")
        if any(e < 1 for e in self.e_choices):
            raise ValueError(f"expand ratios must be >= 1; got {self.e_choices}")
        if self.default_resolution not in self.resolutions:
            raise ValueError(f"default resolution {self.default_resolution} is not in {self.resolutions}")

    # --- derived structure -------------------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return sum(s.max_depth for s in self.stages)

    @cached_property
    def blocks(self) -> tuple[BlockSpec, ...]:
        out, cin = [], self.first.cout
        for si, stage in enumerate(self.stages):
            for j in range(stage.max_depth):
                out.append(
                    BlockSpec(
                        index=len(out),
                        stage=si,
                        cin=cin,
                        cout=stage.width,
                        stride=stage.stride if j == 0 else 1,
                        act=stage.act,
                        se=stage.se,
                        max_mid=mid_channels(cin, max(self.e_choices)),
                    )
                )
                cin = stage.width
        return tuple(out)

    @property
    def feature_width(self) -> int:
        """Width entering the classifier."""
        convs = self.head_pre_pool + self.head_post_pool
        return convs[-1].cout if convs else self.stages[-1].width

    @property
    def d_choices(self) -> tuple[int, ...]:
        return _sorted_unique(d for s in self.stages for d in s.d_choices)

    # --- validation ---------------------------------------------------------------------------------------------
    def check(self, arch: Arch) -> None:
        """Raise ``ValueError`` naming the field and the allowed values if ``arch`` is not a subnet of this space."""
        if arch.space != self.name:
            raise ValueError(
                f"arch belongs to space {arch.space!r}, not {self.name!r}; "
                f"use arch.replace(space={self.name!r}) if the layouts match"
            )
        n = self.n_blocks
        for field, values, choices in (("ks", arch.ks, self.ks_choices), ("e", arch.e, self.e_choices)):
            if len(values) != n:
                raise ValueError(f"arch.{field} needs {n} entries (one per block of {self.name}); got {len(values)}")
            bad = sorted({v for v in values if v not in choices})
            if bad:
                raise ValueError(f"arch.{field} has {bad}; allowed values in {self.name}: {list(choices)}")
        if len(arch.d) != len(self.stages):
            raise ValueError(
                f"arch.d needs {len(self.stages)} entries (one per stage of {self.name}); got {len(arch.d)}"
            )
        for i, (d, stage) in enumerate(zip(arch.d, self.stages)):
            if d not in stage.d_choices:
                raise ValueError(
                    f"arch.d[{i}] = {d}; allowed depths for stage {i} of {self.name}: {list(stage.d_choices)}"
                )
        if arch.resolution not in self.resolutions:
            raise ValueError(
                f"arch.resolution = {arch.resolution}; allowed resolutions in {self.name}: {list(self.resolutions)}"
            )

    def restricted(
        self,
        *,
        ks_choices: Sequence[int] | None = None,
        e_choices: Sequence[int] | None = None,
        d_choices: Sequence[int] | None = None,
        resolutions: Sequence[int] | None = None,
        default_resolution: int | None = None,
    ) -> SpaceSpec:
        """This space with fewer choices (e.g. DεpS's fixed kernel 7): each list must be a subset of the current one."""
        changes: dict = {}
        for field, new in (("ks_choices", ks_choices), ("e_choices", e_choices), ("resolutions", resolutions)):
            if new is None:
                continue
            new = _sorted_unique(new)
            allowed = getattr(self, field)
            if not new or not set(new) <= set(allowed):
                raise ValueError(f"{field} must be a non-empty subset of {list(allowed)}; got {list(new)}")
            changes[field] = new
        if d_choices is not None:
            new = _sorted_unique(d_choices)
            if not new or not set(new) <= set(self.d_choices):
                raise ValueError(f"d_choices must be a non-empty subset of {list(self.d_choices)}; got {list(new)}")
            stages = []
            for s in self.stages:
                keep = tuple(d for d in new if d in s.d_choices) or s.d_choices
                stages.append(attrs.evolve(s, d_choices=keep))
            changes["stages"] = tuple(stages)
        if default_resolution is not None:
            changes["default_resolution"] = int(default_resolution)
        elif "resolutions" in changes and self.default_resolution not in changes["resolutions"]:
            changes["default_resolution"] = max(changes["resolutions"])
        return attrs.evolve(self, **changes)
