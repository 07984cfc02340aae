"""The per-term loop both baselines share: forward, loss, ``(w · loss).backward()`` into ``.grad``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from deps_core.distill import LossConfig, term_loss
from deps_core.step import _targets
from deps_core.strategies import SubnetTerm


def backward_per_term(
    terms: Sequence[SubnetTerm],
    forward: Callable[[int, SubnetTerm], Tensor],
    labels: Tensor,
    loss_config: LossConfig,
) -> list[Tensor]:
    """``forward(j, term)`` gives term ``j``'s logits; in-place KD targets are the full model's detached logits."""
    full_logits = None
    losses = []
    for j, term in enumerate(terms):
        logits = forward(j, term)
        loss = term_loss(term.loss, logits, labels, _targets(term, full_logits, None), loss_config)
        (term.weight * loss).backward()
        if term.role == "full":
            full_logits = logits.detach()
        losses.append(loss.detach())
    return losses
