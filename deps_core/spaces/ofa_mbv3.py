"""OFA's MobileNetV3 space (Cai et al., ICLR 2020; ``ofa/.../networks/ofa_mbv3.py``) and its 32×32 variant.

Stem 3×3 s2 conv (16·w, h-swish); a fixed MBConv1 block (16·w → 16·w, 3×3, ReLU, residual); five elastic stages of
four blocks with widths 24, 40, 80, 112, 160 (·w), strides 2, 2, 2, 1, 2, ReLU in the first two stages and h-swish
after, squeeze-excite in stages 1, 3 and 4 (0-based); kernel {3, 5, 7}, expand {3, 4, 6}, depth {2, 3, 4}; head: 1×1
expand to 960·w (BN, h-swish), global pool, 1×1 feature mix to 1280·w (no BN, h-swish), dropout, linear. BN momentum
0.1, eps 1e-5; dropout 0.1.

``ofa_mbv3_32`` is the DεpS code's CIFAR variant (``ofa_mbv3_32.py``): stride 1 in the stem and the first elastic
stage, so a 32×32 input ends at 4×4.
"""

from __future__ import annotations

from collections.abc import Sequence

from deps_core.spaces.base import ConvSpec, FixedBlockSpec, SpaceSpec, StageSpec, make_divisible
from deps_core.spaces.registry import register_space

__all__ = ["mbv3_space"]

_BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
_ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
_SE = (False, True, False, True, True)
IMAGENET_RESOLUTIONS = tuple(range(128, 225, 4))  # OFA's elastic resolution list
SMALL_RESOLUTIONS = tuple(range(24, 65, 4))


def mbv3_space(
    name: str,
    *,
    width_mult: float = 1.0,
    stem_stride: int = 2,
    stage_strides: Sequence[int] = (2, 2, 2, 1, 2),
    resolutions: Sequence[int] = IMAGENET_RESOLUTIONS,
    default_resolution: int = 224,
    ks_choices: Sequence[int] | None = None,
    e_choices: Sequence[int] | None = None,
    d_choices: Sequence[int] | None = None,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    dropout: float = 0.1,
) -> SpaceSpec:
    """Build an OFA-MobileNetV3 spec; the choice keywords restrict the default {3,5,7} × {3,4,6} × {2,3,4}."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0; got {width_mult}")
    w = [make_divisible(b * width_mult) for b in _BASE_WIDTHS]
    stages, first_block = [], 0
    for width, stride, act, se in zip(w[2:7], stage_strides, _ACTS, _SE):
        stages.append(StageSpec(width, 4, stride, act, se, (2, 3, 4), first_block))
        first_block += 4
    spec = SpaceSpec(
        name=name,
        family="mbv3",
        width_mult=width_mult,
        stem=ConvSpec("stem", w[0], kernel_size=3, stride=stem_stride, bn=True, act="h_swish"),
        first=FixedBlockSpec(cin=w[0], cout=w[1], kernel_size=3, stride=1, act="relu", se=False),
        stages=tuple(stages),
        head_pre_pool=(ConvSpec("final_expand", w[7], bn=True, act="h_swish"),),
        head_post_pool=(ConvSpec("feature_mix", w[8], bn=False, act="h_swish"),),
        ks_choices=(3, 5, 7),
        e_choices=(3, 4, 6),
        resolutions=resolutions,
        default_resolution=default_resolution,
        bn_eps=bn_eps,
        bn_momentum=bn_momentum,
        dropout=dropout,
    )
    return spec.restricted(ks_choices=ks_choices, e_choices=e_choices, d_choices=d_choices)


@register_space("ofa_mbv3_w1.0")
def ofa_mbv3_w10(**kw) -> SpaceSpec:
    return mbv3_space("ofa_mbv3_w1.0", **{"width_mult": 1.0} | kw)


@register_space("ofa_mbv3_w1.2")
def ofa_mbv3_w12(**kw) -> SpaceSpec:
    return mbv3_space("ofa_mbv3_w1.2", **{"width_mult": 1.2} | kw)


@register_space("ofa_mbv3_32")
def ofa_mbv3_32(**kw) -> SpaceSpec:
    defaults = dict(stem_stride=1, stage_strides=(1, 2, 2, 1, 2), resolutions=SMALL_RESOLUTIONS, default_resolution=32)
    return mbv3_space("ofa_mbv3_32", **defaults | kw)
