"""Counter-based randomness: every random draw of the loaders is a pure function of its coordinates.

FFCV's crops and flips draw from per-thread numba RNGs that cannot be seeded (libffcv/ffcv issues #164, #300, #392),
so two identical runs differ and a resumed run cannot replay its data. Here a draw is a hash of (seed, epoch, sample
index, stream) for per-sample decisions and of (seed, epoch, step, stream) for per-batch ones, so the result does not
depend on worker count, thread scheduling, batch composition, rank or whether the epoch was resumed mid-way.

The hash is SplitMix64's finalizer (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA
2014), applied in a chain to combine the coordinates; it passes BigCrush when used as a counter-based generator.
"""

from __future__ import annotations

import numpy as np

__all__ = ["batch_seed", "mix64", "sample_uniforms"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # odd constant of SplitMix64's Weyl sequence
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Streams keep independent decisions about the same sample uncorrelated.
STREAM_CROP = 1
STREAM_FLIP = 2
STREAM_RESOLUTION = 3
STREAM_AUGMENT = 4
STREAM_ORDER = 5


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def _key(*coords: np.ndarray | int) -> np.ndarray:
    key = np.zeros((), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in coords:
            c = np.asarray(c).astype(np.int64).astype(np.uint64)  # two's complement: negative seeds are distinct too
            key = mix64(key + _GOLDEN + mix64(c + _GOLDEN))
    return key


def sample_uniforms(seed: int, epoch: int, indices: np.ndarray, stream: int, count: int) -> np.ndarray:
    """Uniform floats in [0, 1), shape ``(len(indices), count)``, a pure function of (seed, epoch, index, stream)."""
    base = _key(seed, epoch, stream, np.asarray(indices, dtype=np.int64))[:, None]
    with np.errstate(over="ignore"):
        bits = mix64(base + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def batch_seed(seed: int, epoch: int, step: int, stream: int) -> int:
    """A 63-bit seed for one batch's draws, a pure function of (seed, epoch, step, stream)."""
    return int(_key(seed, epoch, step, stream) >> np.uint64(1))
