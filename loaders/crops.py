"""Crop boxes, computed in NumPy for a whole batch from the images' sizes, shared by the FFCV and torchvision loaders.

A box is ``(top, left, height, width)`` in the stored image's pixels; the decoder crops it and resizes it to the output
size. Computing boxes outside the decoder makes the two loaders crop identically and makes the randomness explicit:

- :func:`random_resized_crop_boxes` follows torchvision's ``RandomResizedCrop.get_params`` (10 tries of a scale in
  ``scale`` of the area and a log-uniform aspect ratio in ``ratio``, then a central fallback clamped to ``ratio``) with
  the uniforms drawn from :func:`deps_loaders.seeding.sample_uniforms` instead of the global torch RNG.
- :func:`center_crop_boxes` maps torchvision's evaluation transform ``Resize(floor(size / ratio))`` followed by
  ``CenterCrop(size)`` (ratio 224/256 for ImageNet) back to the stored image, so "resize the shorter side, then take the
  centre" is done in one crop-and-resize. FFCV's own ``CenterCropRGBImageDecoder`` truncates the crop side and floors
  the offsets instead, which shifts the crop by up to a pixel and shrinks it.
"""

from __future__ import annotations

import math

import numpy as np
from deps_loaders.seeding import STREAM_CROP, STREAM_FLIP, sample_uniforms

__all__ = ["PARAM_COLUMNS", "STATUS", "center_crop_boxes", "flips", "random_resized_crop_boxes", "resize_size"]

# A sample's decode parameters as the FFCV decoder reads them: box (top, left, height, width), flip (0/1), and the
# libjpeg-turbo status the decoder writes back.
PARAM_COLUMNS = 6
STATUS = 5

_TRIES = 10  # torchvision's RandomResizedCrop.get_params


def random_resized_crop_boxes(
    heights: np.ndarray,
    widths: np.ndarray,
    *,
    seed: int,
    epoch: int,
    indices: np.ndarray,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Boxes ``(n, 4)`` int64 of torchvision's RandomResizedCrop for images of the given sizes.

    Sample ``k`` uses the uniforms of ``(seed, epoch, indices[k])``: the same image gets the same crop in an epoch
    whatever batch, rank or worker it lands in.
    """
    h = np.asarray(heights, dtype=np.float64)
    w = np.asarray(widths, dtype=np.float64)
    u = sample_uniforms(seed, epoch, indices, STREAM_CROP, 4 * _TRIES).reshape(len(h), _TRIES, 4)
    area = (h * w)[:, None]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    cw = np.round(np.sqrt(target * aspect))  # np.round rounds half to even, as Python's round() in torchvision
    ch = np.round(np.sqrt(target / aspect))
    ok = (cw > 0) & (cw <= w[:, None]) & (ch > 0) & (ch <= h[:, None])
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(len(h)), first]
    rows = np.arange(len(h))
    bh, bw = ch[rows, first], cw[rows, first]
    top = np.floor(u[rows, first, 2] * (h - bh + 1))
    left = np.floor(u[rows, first, 3] * (w - bw + 1))

    # torchvision's fallback: the largest central crop whose aspect ratio is clamped into `ratio`
    in_ratio = w / h
    fw = np.where(in_ratio < ratio[0], w, np.where(in_ratio > ratio[1], np.round(h * ratio[1]), w))
    fh = np.where(in_ratio < ratio[0], np.round(w / ratio[0]), h)
    ftop, fleft = (h - fh) // 2, (w - fw) // 2
    boxes = np.stack(
        [np.where(found, top, ftop), np.where(found, left, fleft), np.where(found, bh, fh), np.where(found, bw, fw)],
        axis=1,
    )
    return boxes.astype(np.int64)


def resize_size(size: int, ratio: float) -> int:
    """The shorter side torchvision's evaluation transform resizes to before the centre crop (timm's rounding)."""
    return int(math.floor(size / ratio + 1e-9))


def center_crop_boxes(heights: np.ndarray, widths: np.ndarray, *, size: int, ratio: float = 224 / 256) -> np.ndarray:
    """Boxes ``(n, 4)`` int64 of ``Resize(resize_size(size, ratio)) + CenterCrop(size)`` in stored-image pixels."""
    h = np.asarray(heights, dtype=np.float64)
    w = np.asarray(widths, dtype=np.float64)
    s = resize_size(size, ratio)
    # torchvision.transforms.v2.functional._compute_resized_output_size: the longer side is truncated
    short, long_ = np.minimum(h, w), np.maximum(h, w)
    new_long = np.floor(s * long_ / short)
    rh = np.where(h <= w, s, new_long)
    rw = np.where(h <= w, new_long, s)
    crop_h = crop_w = size
    top_r = np.round((rh - crop_h) / 2.0)  # CenterCrop: int(round((H - crop) / 2))
    left_r = np.round((rw - crop_w) / 2.0)
    sy, sx = rh / h, rw / w
    top = np.round(top_r / sy)
    left = np.round(left_r / sx)
    bottom = np.minimum(np.round((top_r + crop_h) / sy), h)
    right = np.minimum(np.round((left_r + crop_w) / sx), w)
    top, left = np.maximum(top, 0), np.maximum(left, 0)
    boxes = np.stack([top, left, np.maximum(bottom - top, 1), np.maximum(right - left, 1)], axis=1)
    return boxes.astype(np.int64)


def flips(seed: int, epoch: int, indices: np.ndarray, p: float = 0.5) -> np.ndarray:
    """Horizontal-flip decisions ``(n,)`` bool with probability ``p``, a pure function of (seed, epoch, index)."""
    return sample_uniforms(seed, epoch, indices, STREAM_FLIP, 1)[:, 0] < p
