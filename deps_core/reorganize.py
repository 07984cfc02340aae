"""Channel re-organization: OFA's importance sorting of each block's hidden channels (Cai et al., ICLR 2020, Sec. 3.2
"elastic width"; ``DynamicMBConvLayer.re_organize_middle_weights``).

A hidden channel's importance is the L1 norm of its column of the project conv. Channels are sorted by importance,
most important first, so that the first ``mid(e)`` channels a small expand ratio keeps are the most important ones;
with ``expand_stage > 0`` the channels beyond each smaller width of an earlier stage stay behind it (OFA's protected
ranges). Squeeze-excite's own hidden channels are sorted by the L1 norm of their expand-conv columns.

The permutation is applied consistently to every tensor indexed by those channels — weights, BN statistics, and,
unlike the research code, the optimizer's per-parameter state (SGD momentum, Adam moments), so the next update
continues where the last one left off. It does not change what the largest subnet computes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from deps_core.spaces.base import mid_channels
from deps_core.supernet import Block, Supernet

__all__ = ["reorganize_channels", "channel_permutations", "apply_permutations", "channel_order"]


def channel_order(importance: Tensor, widths_desc: list[int], expand_stage: int) -> Tensor:
    """OFA's order: descending importance, channels past each of the ``expand_stage + 1`` widths kept behind it.

    ``widths_desc``: the hidden widths of the expand choices, largest first.
    """
    importance = importance.clone().to(torch.float64)
    if expand_stage > 0:
        right, base = len(importance), -len(widths_desc) * 1e5
        for i in range(expand_stage + 1):
            left = widths_desc[i]
            importance[left:right] += base
            base += 1e5
            right = left
    return torch.argsort(importance, descending=True, stable=True)


def _permute(t: Tensor, idx: Tensor, dim: int) -> None:
    t.copy_(t.index_select(dim, idx))


def _permute_param(p: torch.nn.Parameter, idx: Tensor, dim: int, optimizers: Iterable[torch.optim.Optimizer]) -> None:
    _permute(p.data, idx, dim)
    for opt in optimizers:
        for value in opt.state.get(p, {}).values():
            if isinstance(value, Tensor) and value.shape == p.shape:
                _permute(value, idx, dim)


def _permute_bn(bn, idx: Tensor, optimizers) -> None:
    _permute_param(bn.weight, idx, 0, optimizers)
    _permute_param(bn.bias, idx, 0, optimizers)
    _permute(bn.running_mean, idx, 0)
    _permute(bn.running_var, idx, 0)


@torch.no_grad()
def channel_permutations(supernet: Supernet, *, expand_stage: int = 0) -> dict[int, tuple[Tensor, Tensor | None]]:
    """Per elastic block: the order of its hidden channels and, with squeeze-excite, of the SE hidden channels."""
    spec = supernet.spec
    if not 0 <= expand_stage < len(spec.e_choices):
        raise ValueError(f"expand_stage must lie in [0, {len(spec.e_choices) - 1}]; got {expand_stage}")
    perms = {}
    for b, block in zip(spec.blocks, supernet.blocks):
        widths = [mid_channels(b.cin, e) for e in sorted(spec.e_choices, reverse=True)]
        importance = block.project.weight.abs().sum(dim=(0, 2, 3))
        idx = channel_order(importance, widths, expand_stage).to(importance.device)
        se_idx = None
        if b.se:  # the SE importance sums over the hidden channels, so their order does not change it
            se_idx = torch.argsort(block.se.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True, stable=True)
        perms[b.index] = (idx, se_idx)
    return perms


@torch.no_grad()
def apply_permutations(
    supernet: Supernet,
    perms: dict[int, tuple[Tensor, Tensor | None]],
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> None:
    """Reorder every tensor indexed by each block's hidden (and SE hidden) channels, optimizer state included."""
    optimizers = list(optimizers)
    for index, (idx, se_idx) in perms.items():
        block: Block = supernet.blocks[index]
        _permute_param(block.expand.weight, idx, 0, optimizers)
        _permute_bn(block.expand_bn, idx, optimizers)
        _permute_param(block.dw.weight, idx, 0, optimizers)
        _permute_bn(block.dw_bn, idx, optimizers)
        if se_idx is not None:
            se = block.se
            _permute_param(se.reduce.weight, idx, 1, optimizers)
            _permute_param(se.expand.weight, idx, 0, optimizers)
            _permute_param(se.expand.bias, idx, 0, optimizers)
            _permute_param(se.reduce.weight, se_idx, 0, optimizers)
            _permute_param(se.reduce.bias, se_idx, 0, optimizers)
            _permute_param(se.expand.weight, se_idx, 1, optimizers)
        _permute_param(block.project.weight, idx, 1, optimizers)


def reorganize_channels(
    supernet: Supernet,
    optimizers: Iterable[torch.optim.Optimizer] = (),
    *,
    expand_stage: int = 0,
) -> dict[int, tuple[Tensor, Tensor | None]]:
    """Sort every elastic block's hidden channels by importance, in place; returns the permutations applied.

    ``optimizers``: their per-parameter state tensors shaped like a permuted parameter are permuted with it.
    ``expand_stage``: OFA's ``expand_ratio_stage`` (the DεpS recipe uses ``len(e_choices) - 2``).
    """
    perms = channel_permutations(supernet, expand_stage=expand_stage)
    apply_permutations(supernet, perms, optimizers)
    return perms
