"""OFA's ProxylessNAS (GPU) space (``ofa/.../networks/ofa_proxyless.py``), registered at width 1.3.

Stem 3×3 s2 conv (32·w, ReLU6); a fixed MBConv1 block (→ 16·w, 3×3, no residual); six elastic stages with widths 24,
40, 80, 96, 192, 320 (·w) and strides 2, 2, 2, 1, 2, 1: the first five have four blocks and depth {2, 3, 4}, the last
one block (depth fixed at 1, kernel and expand still elastic); ReLU6 throughout, no squeeze-excite; head: 1×1 feature
mix to 1280·w (BN, ReLU6), global pool, dropout, linear. BN momentum 0.1, eps 1e-3; dropout 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence

from deps_core.spaces.base import ConvSpec, FixedBlockSpec, SpaceSpec, StageSpec, make_divisible
from deps_core.spaces.ofa_mbv3 import IMAGENET_RESOLUTIONS
from deps_core.spaces.registry import register_space

__all__ = ["proxyless_space"]

_BASE_WIDTHS = (32, 16, 24, 40, 80, 96, 192, 320, 1280)
_STRIDES = (2, 2, 2, 1, 2, 1)


def proxyless_space(
    name: str,
    *,
    width_mult: float = 1.3,
    resolutions: Sequence[int] = IMAGENET_RESOLUTIONS,
    default_resolution: int = 224,
    ks_choices: Sequence[int] | None = None,
    e_choices: Sequence[int] | None = None,
    d_choices: Sequence[int] | None = None,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-3,
    dropout: float = 0.1,
) -> SpaceSpec:
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0; got {width_mult}")
    w = [make_divisible(b * width_mult) for b in _BASE_WIDTHS]
    stages, first_block = [], 0
    for i, (width, stride) in enumerate(zip(w[2:8], _STRIDES)):
        depth, choices = (4, (2, 3, 4)) if i < 5 else (1, (1,))
        stages.append(StageSpec(width, depth, stride, "relu6", False, choices, first_block))
        first_block += depth
    spec = SpaceSpec(
        name=name,
        family="proxyless",
        width_mult=width_mult,
        stem=ConvSpec("stem", w[0], kernel_size=3, stride=2, bn=True, act="relu6"),
        first=FixedBlockSpec(cin=w[0], cout=w[1], kernel_size=3, stride=1, act="relu6", se=False),
        stages=tuple(stages),
        head_pre_pool=(ConvSpec("feature_mix", w[8], bn=True, act="relu6"),),
        head_post_pool=(),
        ks_choices=(3, 5, 7),
        e_choices=(3, 4, 6),
        resolutions=resolutions,
        default_resolution=default_resolution,
        bn_eps=bn_eps,
        bn_momentum=bn_momentum,
        dropout=dropout,
    )
    return spec.restricted(ks_choices=ks_choices, e_choices=e_choices, d_choices=d_choices)


@register_space("ofa_proxyless_w1.3")
def ofa_proxyless_w13(**kw) -> SpaceSpec:
    return proxyless_space("ofa_proxyless_w1.3", **{"width_mult": 1.3} | kw)
