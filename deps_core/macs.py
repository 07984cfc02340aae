"""Analytic multiply-accumulates of a subnet, OFA's convention (``ofa/utils/flops_counter.py``).

Counted: every convolution (``C_out · H_out · W_out · C_in/groups · k²``, the squeeze-excite 1×1 convs on the pooled
map included) and the classifier (``C_in · C_out``). Not counted: BN, activations, pooling, residual adds, biases,
the kernel transform (a per-weight cost, not per-image). A 'same'-padded conv with an odd kernel and stride s maps
H to ``ceil(H / s)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deps_core.arch import Arch
from deps_core.spaces.base import SpaceSpec, mid_channels, se_channels

if TYPE_CHECKING:
    from deps_core.supernet import Supernet

__all__ = ["macs", "subnet_macs"]


def _out(h: int, stride: int) -> int:
    return -(-h // stride)


def subnet_macs(spec: SpaceSpec, arch: Arch, *, num_classes: int = 1000, resolution: int | None = None) -> int:
    """MACs of ``arch`` on ``spec`` for one ``resolution``² image (default: the arch's resolution)."""
    h = arch.resolution if resolution is None else int(resolution)
    if h < 1:
        raise ValueError(f"resolution must be a positive int; got {resolution!r}")
    total = 0
    # stem
    h = _out(h, spec.stem.stride)
    total += spec.stem.cout * h * h * 3 * spec.stem.kernel_size**2
    # first block: depthwise + project (expand ratio 1)
    f = spec.first
    h1 = _out(h, f.stride)
    total += f.cin * h1 * h1 * f.kernel_size**2 + f.cout * h1 * h1 * f.cin
    if f.se:
        total += 2 * f.cin * se_channels(f.cin)
    h = h1
    for i in arch.active_blocks(spec):
        b = spec.blocks[i]
        mid, k = mid_channels(b.cin, arch.e[i]), arch.ks[i]
        total += mid * h * h * b.cin  # expand 1×1, at the input resolution
        h = _out(h, b.stride)
        total += mid * h * h * k * k  # depthwise
        if b.se:
            total += 2 * mid * se_channels(mid)
        total += b.cout * h * h * mid  # project 1×1
    cin = spec.stages[-1].width
    for layer in spec.head_pre_pool:
        h = _out(h, layer.stride)
        total += layer.cout * h * h * cin * layer.kernel_size**2
        cin = layer.cout
    for layer in spec.head_post_pool:
        total += layer.cout * cin * layer.kernel_size**2
        cin = layer.cout
    return total + cin * num_classes


def macs(
    space: str | SpaceSpec | Supernet | Arch,
    arch: Arch | None = None,
    resolution: int | None = None,
    *,
    num_classes: int | None = None,
) -> int:
    """MACs of a subnet, two ways:

    - ``macs(arch)``: on the registered default of ``arch.space`` with 1000 classes;
    - ``macs(space, arch, resolution)``: on a space name, a :class:`SpaceSpec` or a supernet (which knows its width
      and class count).
    """
    from deps_core.spaces.registry import space_spec
    from deps_core.supernet import Supernet

    if isinstance(space, Arch):
        if arch is not None:
            raise TypeError("macs(arch) takes the arch alone; use macs(space, arch, resolution) for a given space")
        arch, spec = space, space_spec(space.space)
        classes = 1000
    elif isinstance(space, Supernet):
        spec, classes = space.spec, space.num_classes
    elif isinstance(space, SpaceSpec):
        spec, classes = space, 1000
    elif isinstance(space, str):
        spec, classes = space_spec(space), 1000
    else:
        raise TypeError(f"macs() takes an Arch, or a space (name, SpaceSpec or Supernet) and an Arch; got {space!r}")
    if arch is None:
        raise TypeError("macs(space, arch, resolution) needs an arch")
    spec.check(arch)
    return subnet_macs(spec, arch, num_classes=classes if num_classes is None else num_classes, resolution=resolution)
