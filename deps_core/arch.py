"""Subnet architectures as plain values, and the samplers that draw them.

An :class:`Arch` names one subnet of a space: a kernel size and an expand ratio per elastic block, a depth per elastic
stage, and an input resolution. It is immutable, hashable and made of Python ints only, so it can key caches, be a
static argument under ``torch.func``/``torch.compile``, and round-trip through JSON.

Lists follow OFA's convention (Cai et al., ICLR 2020, ``OFAMobileNetV3.set_active_subnet``): ``ks`` and ``e`` have an
entry for every block of the supernet, stage by stage, including blocks a shallow stage skips; those entries are kept
but ignored, and :meth:`Arch.canonical` sets them to the largest choice so that equal subnets compare equal.

Samplers (OFA Sec. 3.2 uniform sampling; BigNAS's sandwich rule; CompOFA's compound coupling; a size-tilted sampler
that reaches every part of the MAC range, for evaluation) take an explicit
``torch.Generator`` and return new values; nothing global is read or written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch

if TYPE_CHECKING:
    from deps_core.spaces.base import SpaceSpec

__all__ = [
    "Arch",
    "max_arch",
    "min_arch",
    "uniform_arch",
    "sized_arch",
    "compound_arch",
    "sandwich_archs",
    "COMPOUND_EXPAND",
]


def _int_tuple(values: Any) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"expected a sequence of ints, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise TypeError(f"expected ints, got {v!r} in {values!r}")
        out.append(int(v))
    return tuple(out)


@attrs.frozen(cache_hash=True)
class Arch:
    """One subnet: ``ks``/``e`` per block (OFA list convention), ``d`` per elastic stage, input ``resolution``.

    Validated against the registered space named by ``space`` when constructed: a wrong length or a value outside the
    space raises ``ValueError`` naming the field and its allowed values.
    """

    space: str
    ks: tuple[int, ...] = attrs.field(converter=_int_tuple)
    e: tuple[int, ...] = attrs.field(converter=_int_tuple)
    d: tuple[int, ...] = attrs.field(converter=_int_tuple)
    resolution: int = attrs.field(converter=int)

    def __attrs_post_init__(self) -> None:
        from deps_core.spaces.registry import space_spec

        space_spec(self.space).check(self)

    # --- views -------------------------------------------------------------------------------------------------
    def active_blocks(self, spec: SpaceSpec | None = None) -> list[int]:
        """Indices (into ``ks``/``e``) of the blocks this subnet runs."""
        spec = spec if spec is not None else self._spec()
        out = []
        for stage, depth in zip(spec.stages, self.d):
            out.extend(range(stage.first_block, stage.first_block + depth))
        return out

    def canonical(self, spec: SpaceSpec | None = None) -> Arch:
        """The same subnet with skipped blocks' ``ks``/``e`` set to the largest choice (equal subnets compare equal).

        ``spec``: the (possibly restricted) space whose largest choices fill the skipped entries (default: the
        registered space)."""
        spec = spec if spec is not None else self._spec()
        active = set(self.active_blocks(spec))
        ks = tuple(k if i in active else max(spec.ks_choices) for i, k in enumerate(self.ks))
        e = tuple(x if i in active else max(spec.e_choices) for i, x in enumerate(self.e))
        return attrs.evolve(self, ks=ks, e=e)

    def replace(self, **changes: Any) -> Arch:
        return attrs.evolve(self, **changes)

    def _spec(self) -> SpaceSpec:
        from deps_core.spaces.registry import space_spec

        return space_spec(self.space)

    # --- serialisation -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "ks": list(self.ks),
            "e": list(self.e),
            "d": list(self.d),
            "resolution": self.resolution,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arch:
        expected = {"space", "ks", "e", "d", "resolution"}
        if not isinstance(data, dict) or set(data) != expected:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"an arch dict has exactly the keys {sorted(expected)}; got {got}")
        return cls(data["space"], data["ks"], data["e"], data["d"], data["resolution"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Arch:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not a JSON arch: {err}") from None
        return cls.from_dict(data)

    # --- OFA interop -------------------------------------------------------------------------------------------
    @classmethod
    def from_ofa(
        cls,
        ks: Sequence[int],
        e: Sequence[int],
        d: Sequence[int],
        *,
        space: str = "ofa_mbv3_w1.0",
        resolution: int | None = None,
    ) -> Arch:
        """From OFA's ``set_active_subnet(ks=[..], e=[..], d=[..])`` lists (``ks``/``e`` for every block).

        As in OFA, a stage's depth is clipped to its number of blocks (``runtime_depth = min(len(stage), d)``): OFA's
        ProxylessNAS space samples a depth for its last, one-block stage too.
        """
        from deps_core.spaces.registry import space_spec

        spec = space_spec(space)
        d = list(d)
        if len(d) == len(spec.stages):
            d = [min(int(x), s.max_depth) if isinstance(x, int) else x for x, s in zip(d, spec.stages)]
        return cls(space, ks, e, d, spec.default_resolution if resolution is None else resolution)

    def to_ofa(self) -> dict[str, Any]:
        """OFA's dict: ``{"ks": [...], "e": [...], "d": [...], "image_size": r}``."""
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "image_size": self.resolution}

    def __str__(self) -> str:
        spec = self._spec()
        parts = []
        for stage, depth in zip(spec.stages, self.d):
            blocks = range(stage.first_block, stage.first_block + depth)
            parts.append(",".join(f"k{self.ks[i]}e{self.e[i]}" for i in blocks))
        return f"{self.space}@{self.resolution}[" + " | ".join(parts) + "]"


# --- samplers ---------------------------------------------------------------------------------------------------


def _resolution(spec: SpaceSpec, resolutions: Sequence[int] | None, generator: torch.Generator | None) -> int:
    if resolutions is None:
        return spec.default_resolution
    if len(resolutions) == 0:
        raise ValueError("resolutions must be a non-empty list of allowed resolutions (or None for the default)")
    if generator is None:
        return int(max(resolutions))
    return int(resolutions[int(torch.randint(len(resolutions), (), generator=generator))])


def _pick(choices: Sequence[int], n: int, generator: torch.Generator) -> tuple[int, ...]:
    idx = torch.randint(len(choices), (n,), generator=generator).tolist()
    return tuple(int(choices[i]) for i in idx)


def max_arch(spec: SpaceSpec, *, resolution: int | None = None) -> Arch:
    """The largest subnet (the "full model" of DεpS): largest kernel, expand and depth everywhere."""
    return Arch(
        spec.name,
        (max(spec.ks_choices),) * spec.n_blocks,
        (max(spec.e_choices),) * spec.n_blocks,
        tuple(max(s.d_choices) for s in spec.stages),
        spec.default_resolution if resolution is None else resolution,
    )


def min_arch(spec: SpaceSpec, *, resolution: int | None = None) -> Arch:
    """The smallest subnet: smallest kernel, expand and depth everywhere (ignored entries at the largest choice)."""
    return Arch(
        spec.name,
        (min(spec.ks_choices),) * spec.n_blocks,
        (min(spec.e_choices),) * spec.n_blocks,
        tuple(min(s.d_choices) for s in spec.stages),
        spec.default_resolution if resolution is None else resolution,
    ).canonical(spec)


def uniform_arch(spec: SpaceSpec, generator: torch.Generator, *, resolutions: Sequence[int] | None = None) -> Arch:
    """OFA's uniform sampling: each block's kernel and expand, each stage's depth, uniform over its choices."""
    ks = _pick(spec.ks_choices, spec.n_blocks, generator)
    e = _pick(spec.e_choices, spec.n_blocks, generator)
    d = tuple(_pick(s.d_choices, 1, generator)[0] for s in spec.stages)
    return Arch(spec.name, ks, e, d, _resolution(spec, resolutions, generator)).canonical(spec)


def _pick_tilted(choices: Sequence[int], n: int, size: float, generator: torch.Generator) -> tuple[int, ...]:
    """``n`` draws whose index into the sorted ``choices`` is Binomial(len - 1, ``size``)."""
    choices = sorted(choices)
    if len(choices) == 1:
        return (int(choices[0]),) * n
    idx = (torch.rand(n, len(choices) - 1, generator=generator) < size).sum(1).tolist()
    return tuple(int(choices[i]) for i in idx)


def sized_arch(
    spec: SpaceSpec, generator: torch.Generator, size: float, *, resolutions: Sequence[int] | None = None
) -> Arch:
    """A random subnet tilted towards ``size`` in [0, 1]: each block's kernel and expand and each stage's depth take
    the ``i``-th smallest of their ``m`` choices with probability Binomial(m - 1, ``size``) at ``i``.

    ``size`` 0 gives the smallest subnet and 1 the largest; 0.5 is close to uniform sampling. Uniform sampling puts
    almost every subnet in the middle of the MAC range (its MACs add up many independent choices: 200 uniform
    OFA-MBV3 subnets all fall in the lower four of six MAC buckets), so :func:`deps_core.evaluate.bucket_archs` draws
    ``size`` uniformly and keeps subnets per MAC bucket.
    """
    if not 0.0 <= size <= 1.0:
        raise ValueError(f"size must lie in [0, 1]; got {size}")
    ks = _pick_tilted(spec.ks_choices, spec.n_blocks, size, generator)
    e = _pick_tilted(spec.e_choices, spec.n_blocks, size, generator)
    d = tuple(_pick_tilted(s.d_choices, 1, size, generator)[0] for s in spec.stages)
    return Arch(spec.name, ks, e, d, _resolution(spec, resolutions, generator)).canonical(spec)


# CompOFA (Sahni et al., ICLR 2021): width grows with depth, one expand ratio per stage.
COMPOUND_EXPAND = {2: 3, 3: 4, 4: 6}


def compound_arch(
    spec: SpaceSpec,
    generator: torch.Generator,
    *,
    expand_for_depth: dict[int, int] | None = None,
    resolutions: Sequence[int] | None = None,
) -> Arch:
    """CompOFA's compound sampling: a uniform depth per stage and the expand ratio tied to it (2→3, 3→4, 4→6).

    Kernel sizes stay uniform per block over the space's choices (CompOFA fixes them by restricting the space).
    """
    mapping = COMPOUND_EXPAND if expand_for_depth is None else expand_for_depth
    missing = [d for s in spec.stages for d in s.d_choices if d not in mapping]
    if missing:
        raise ValueError(f"expand_for_depth has no entry for depths {sorted(set(missing))}; it maps {mapping}")
    ks = _pick(spec.ks_choices, spec.n_blocks, generator)
    d = tuple(_pick(s.d_choices, 1, generator)[0] for s in spec.stages)
    e = [max(spec.e_choices)] * spec.n_blocks
    for stage, depth in zip(spec.stages, d):
        for i in range(stage.first_block, stage.first_block + stage.max_depth):
            e[i] = mapping[depth]
    return Arch(spec.name, ks, e, d, _resolution(spec, resolutions, generator)).canonical(spec)


def sandwich_archs(
    spec: SpaceSpec, generator: torch.Generator, n: int, *, resolutions: Sequence[int] | None = None
) -> list[Arch]:
    """BigNAS's sandwich rule: the max subnet, the min subnet, then ``n - 2`` uniform ones (``n >= 2``)."""
    if n < 2:
        raise ValueError(f"the sandwich rule needs n >= 2 subnets (max and min); got n={n}")
    res_max = max(resolutions) if resolutions else None
    res_min = min(resolutions) if resolutions else None
    return [max_arch(spec, resolution=res_max), min_arch(spec, resolution=res_min)] + [
        uniform_arch(spec, generator, resolutions=resolutions) for _ in range(n - 2)
    ]
