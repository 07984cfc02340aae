"""The static-equivalent of a shrinking step: the same subnets pre-extracted as ordinary networks.

Each term's subnet is extracted once (:func:`deps_core.export.extract_subnet`: own dense weights, kernel transform
folded in) and the step runs forward + ``(w · loss).backward()`` on each. This is the work of the step with weight
sharing made free (no slicing, no accumulation into shared tensors); the shrinking step's time over this one is the
overhead of weight sharing.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from bench.baselines._loop import backward_per_term
from deps_core.distill import LossConfig
from deps_core.export import StaticSubnet, extract_subnet
from deps_core.step import DEFAULT_LOSS
from deps_core.strategies import SubnetTerm
from deps_core.supernet import Supernet

__all__ = ["StaticSubnets", "static_step"]


class StaticSubnets:
    """The static networks of ``terms`` (in order), on the supernet's device and dtype, in training mode."""

    def __init__(self, supernet: Supernet, terms: Sequence[SubnetTerm], memory_format=None):
        self.terms = tuple(terms)
        self.nets: list[StaticSubnet] = []
        for term in self.terms:
            net = extract_subnet(supernet, term.arch).train()
            if not term.dropout:
                net.dropout.p = 0.0
            if memory_format is not None:
                net = net.to(memory_format=memory_format)
            self.nets.append(net)

    def zero_grad(self) -> None:
        for net in self.nets:
            net.zero_grad(set_to_none=True)


def static_step(subnets: StaticSubnets, images: Tensor, labels: Tensor, loss_config: LossConfig = DEFAULT_LOSS):
    """Forward + weighted backward of every static subnet on the batch (in-place KD targets from the full one)."""
    return backward_per_term(subnets.terms, lambda j, _term: subnets.nets[j](images), labels, loss_config)
