"""Training resolution: fixed, elastic per batch (OFA), or progressive per epoch (ffcv-imagenet).

- Elastic (OFA, Cai et al. 2020, Sec. 3.2: each batch at a resolution sampled from 128–224 in steps of 4): the
  resolution of a batch is a pure function of (seed, epoch, step), so every rank picks the same one without
  communicating. Images are decoded at the largest size and resized on the device; decoding a JPEG costs about the
  same whatever the output size, so nothing is lost by decoding large. OFA instead wrote the size into a class
  attribute (``MyRandomResizedCrop.ACTIVE_SIZE``) that loader workers read; nothing is written here.
- Progressive (ffcv-imagenet ``get_resolution``): the decoder's output size is a function of the epoch, interpolated
  linearly from ``min_res`` to ``max_res`` between ``start_ramp`` and ``end_ramp`` and rounded to a multiple of
  ``step`` (32 there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs
import numpy as np
from deps_loaders.seeding import STREAM_RESOLUTION, batch_seed

__all__ = [
    "ElasticResolution",
    "FixedResolution",
    "ProgressiveResolution",
    "Resolution",
    "as_resolution",
]


@runtime_checkable
class Resolution(Protocol):
    def decode_size(self, epoch: int) -> int:
        """The side the decoder outputs during ``epoch``."""

    def at(self, seed: int, epoch: int, step: int) -> int:
        """The side of the batch at ``step`` of ``epoch``."""


def _check_size(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{field}: invalid resolution {value!r}; expected a positive integer")
    return int(value)


@attrs.frozen
class FixedResolution:
    size: int = attrs.field(converter=lambda v: _check_size("size", v))

    def decode_size(self, epoch: int) -> int:
        return self.size

    def at(self, seed: int, epoch: int, step: int) -> int:
        return self.size


def _sizes(value: Sequence[int]) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"sizes: invalid resolution list {value!r}; expected a non-empty list of positive integers")
    return tuple(_check_size(f"sizes (in {list(value)!r})", v) for v in value)


@attrs.frozen
class ElasticResolution:
    """One size per batch, drawn uniformly from ``sizes`` as a pure function of (seed, epoch, step)."""

    sizes: tuple[int, ...] = attrs.field(converter=_sizes)

    @classmethod
    def ofa(cls) -> ElasticResolution:
        """OFA's ImageNet list: 128 to 224 in steps of 4."""
        return cls(tuple(range(128, 225, 4)))

    def decode_size(self, epoch: int) -> int:
        return max(self.sizes)

    def at(self, seed: int, epoch: int, step: int) -> int:
        return self.sizes[batch_seed(seed, epoch, step, STREAM_RESOLUTION) % len(self.sizes)]


@attrs.frozen
class ProgressiveResolution:
    """ffcv-imagenet's progressive resizing: ``min_res`` until ``start_ramp``, ``max_res`` from ``end_ramp``."""

    min_res: int = attrs.field(converter=lambda v: _check_size("min_res", v))
    max_res: int = attrs.field(converter=lambda v: _check_size("max_res", v))
    start_ramp: int = attrs.field()
    end_ramp: int = attrs.field()
    step: int = attrs.field(default=32, converter=lambda v: _check_size("step", v))

    def __attrs_post_init__(self) -> None:
        if self.min_res > self.max_res:
            raise ValueError(f"min_res: {self.min_res} is larger than max_res {self.max_res}")
        if not 0 <= self.start_ramp <= self.end_ramp:
            raise ValueError(
                f"start_ramp/end_ramp: need 0 <= start_ramp <= end_ramp, got {self.start_ramp}, {self.end_ramp}"
            )

    def decode_size(self, epoch: int) -> int:
        if epoch <= self.start_ramp:
            return self.min_res
        if epoch >= self.end_ramp:
            return self.max_res
        interp = np.interp(epoch, [self.start_ramp, self.end_ramp], [self.min_res, self.max_res])
        return int(np.round(interp / self.step)) * self.step

    def at(self, seed: int, epoch: int, step: int) -> int:
        return self.decode_size(epoch)


def as_resolution(value: int | Sequence[int] | Resolution) -> Resolution:
    """An int is fixed, a list is elastic; a :class:`Resolution` passes through. Invalid values raise ValueError."""
    if isinstance(value, FixedResolution | ElasticResolution | ProgressiveResolution):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return FixedResolution(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return ElasticResolution(value)
    if isinstance(value, Resolution):
        return value
    raise ValueError(f"resolution: invalid value {value!r}; expected an int, a list of ints or a Resolution")
