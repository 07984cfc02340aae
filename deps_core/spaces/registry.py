"""The space registry (timm's ``register_model``/``create_model``/``list_models`` pattern).

A space is registered as a builder ``fn(**kw) -> SpaceSpec``; ``create_supernet(name, ...)`` builds the spec and the
supernet on it. The registry is filled once, when the space modules are imported, and only read afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from deps_core.spaces.base import SpaceSpec

__all__ = ["register_space", "list_spaces", "space_spec", "create_supernet"]

_BUILDERS: dict[str, Callable[..., SpaceSpec]] = {}


def register_space(name: str) -> Callable[[Callable[..., SpaceSpec]], Callable[..., SpaceSpec]]:
    """Decorator: register ``fn(**kw) -> SpaceSpec`` under ``name`` (an error if the name is taken)."""

    def wrap(fn: Callable[..., SpaceSpec]) -> Callable[..., SpaceSpec]:
        if name in _BUILDERS:
            raise ValueError(f"space {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn

    return wrap


def list_spaces() -> list[str]:
    """Names of all registered spaces, sorted."""
    return sorted(_BUILDERS)


def _builder(name: str) -> Callable[..., SpaceSpec]:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown space {name!r}; registered spaces: {list_spaces()}") from None


@cache
def _default_spec(name: str) -> SpaceSpec:
    return _builder(name)()


def space_spec(name: str, **kw: Any) -> SpaceSpec:
    """The spec of a registered space; keyword arguments go to its builder (e.g. ``width_mult``, ``ks_choices``)."""
    if not kw:
        return _default_spec(name)
    spec = _builder(name)(**kw)
    if spec.name != name:
        raise ValueError(f"builder of {name!r} returned a spec named {spec.name!r}")
    return spec


def create_supernet(name: str, num_classes: int = 1000, **kw: Any):
    """Build the supernet of a registered space.

    Keywords that shape the space (``width_mult``, ``ks_choices``, ``e_choices``, ``d_choices``, ``resolutions``,
    ``bn_momentum``, ``bn_eps``, ``dropout``) go to the space builder; the rest (``kernel_transform``, ``generator``,
    ``zero_init_residual``) go to :class:`deps_core.supernet.Supernet`.
    """
    from deps_core.supernet import Supernet

    net_keys = {"kernel_transform", "generator", "zero_init_residual"}
    net_kw = {k: v for k, v in kw.items() if k in net_keys}
    spec_kw = {k: v for k, v in kw.items() if k not in net_keys}
    return Supernet(space_spec(name, **spec_kw), num_classes=num_classes, **net_kw)
