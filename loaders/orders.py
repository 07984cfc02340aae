"""Which samples a rank visits in an epoch, and in which batches: shared by the FFCV and torchvision loaders.

- ``random``: a permutation from ``numpy.random.default_rng([seed, epoch])`` (FFCV's ``Random`` uses
  ``default_rng(seed + epoch)``, which gives seed 1 epoch 0 the order of seed 0 epoch 1).
- ``sequential``: file order (evaluation).
- a hold-out split (:class:`HoldOut`): ``count`` samples drawn by a seeded permutation of the whole set are kept
  out of training (OFA holds out 10,000 ImageNet training images to search on); a loader visits either the rest or
  only the held-out samples, and the split depends on nothing but (number of samples, count, seed).
- distributed sharding as ``torch.utils.data.DistributedSampler`` (``indices[rank::world_size]``), but with rank and
  world size passed explicitly (FFCV reads them from the default process group) and without padding: with
  ``drop_last`` the order is first cut to a multiple of ``world_size`` so all ranks take the same number of steps, and
  no sample is ever visited by two ranks in the same epoch.
"""

from __future__ import annotations

import attrs
import numpy as np

__all__ = ["HoldOut", "batches_of", "epoch_order", "shard"]

ORDERS = ("random", "quasi_random", "sequential")


HOLDOUT_PARTS = ("rest", "held")
_HOLDOUT_STREAM = 0x484F4C44  # a second key so the split never equals an epoch order of the same seed


def _count(_, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"holdout {attribute.name}: {value!r} must be a positive integer")


def _seed(_, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < 2**63:
        raise ValueError(f"holdout {attribute.name}: {value!r} must be an integer in [0, 2**63)")


def _part(_, attribute, value) -> None:
    if value not in HOLDOUT_PARTS:
        raise ValueError(f"holdout {attribute.name}: {value!r} is not one of {HOLDOUT_PARTS}")


@attrs.frozen
class HoldOut:
    """``count`` samples held out of a dataset; a loader given it visits the ``"rest"`` or only the ``"held"`` ones.

    The held-out samples are the first ``count`` of ``numpy.random.default_rng([seed, 0x484F4C44])``'s permutation of
    all sample indices, so a training loader and a search loader given the same ``count`` and ``seed`` (and any
    ``part``) split the same file the same way, on every rank and after a resume.
    """

    count: int = attrs.field(validator=_count)
    seed: int = attrs.field(default=0, validator=_seed)
    part: str = attrs.field(default="rest", validator=_part)

    def held(self, num_samples: int) -> np.ndarray:
        """The held-out sample indices (sorted) of a dataset of ``num_samples``."""
        if self.count >= num_samples:
            raise ValueError(
                f"holdout: {self.count} samples held out of a dataset of {num_samples} leaves none to train on"
            )
        perm = np.random.default_rng([self.seed, _HOLDOUT_STREAM]).permutation(num_samples)
        return np.sort(perm[: self.count]).astype(np.uint64)

    def indices(self, num_samples: int) -> np.ndarray:
        """The sample indices (sorted) of this ``part``."""
        held = self.held(num_samples)
        if self.part == "held":
            return held
        keep = np.ones(num_samples, dtype=bool)
        keep[held.astype(np.int64)] = False
        return np.flatnonzero(keep).astype(np.uint64)


def epoch_order(num_samples: int, order: str, seed: int, epoch: int) -> np.ndarray:
    """The visiting order of all samples in ``epoch`` (``quasi_random`` is FFCV's and handled by the loader)."""
    if order == "random":
        return np.random.default_rng([seed, epoch]).permutation(num_samples).astype(np.uint64)
    if order == "sequential":
        return np.arange(num_samples, dtype=np.uint64)
    raise ValueError(f"order: {order!r} is not one of ('random', 'sequential')")


def shard(order: np.ndarray, rank: int, world_size: int, drop_last: bool) -> np.ndarray:
    """This rank's part of ``order``; disjoint across ranks, equal in length when ``drop_last``."""
    if world_size == 1:
        return order
    if drop_last:
        order = order[: len(order) // world_size * world_size]
    return order[rank::world_size]


def batches_of(indices: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    """Split into batches; the last one is dropped when short and ``drop_last``."""
    n = len(indices) // batch_size * batch_size if drop_last else len(indices)
    return [indices[i : i + batch_size] for i in range(0, n, batch_size)]


def num_batches(num_samples: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> int:
    """``len`` of a loader: the number of batches this rank yields per epoch."""
    if world_size > 1:
        total = num_samples // world_size * world_size if drop_last else num_samples
        mine = len(range(rank, total, world_size))
    else:
        mine = num_samples
    return mine // batch_size if drop_last else -(-mine // batch_size)
