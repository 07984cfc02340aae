"""Which samples a rank visits in an epoch, and in which batches: shared by the FFCV and torchvision loaders.

- ``random``: a permutation from ``numpy.random.default_rng([seed, epoch])`` (FFCV's ``Random`` uses
  ``default_rng(seed + epoch)``, which gives seed 1 epoch 0 the order of seed 0 epoch 1).
- ``sequential``: file order (evaluation).
- distributed sharding as ``torch.utils.data.DistributedSampler`` (``indices[rank::world_size]``), but with rank and
  world size passed explicitly (FFCV reads them from the default process group) and without padding: with
  ``drop_last`` the order is first cut to a multiple of ``world_size`` so all ranks take the same number of steps, and
  no sample is ever visited by two ranks in the same epoch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["batches_of", "epoch_order", "shard"]

ORDERS = ("random", "quasi_random", "sequential")


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
