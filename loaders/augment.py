"""Batched on-device augmentations with explicit per-batch randomness, and the transform every loader ends with.

The seed recipe's augmentations, applied to a whole decoded batch on its device with a different draw per image:

- AutoAugment, ImageNet policy (Cubuk et al., CVPR 2019): the 25 sub-policies of torchvision's
  ``AutoAugment(AutoAugmentPolicy.IMAGENET).policies`` with torchvision's magnitude bins (``_augmentation_space``,
  10 bins) and sign flip, each operation applied through ``torchvision.transforms.v2.functional`` to the images that
  drew it. torchvision's own transform applies one draw to a whole batch tensor and draws from the global RNG.
- RandomErasing (Zhong et al., AAAI 2020) with torchvision's parameters: probability ``p`` (0.2 in the recipe), area
  in (0.02, 0.33), aspect in (0.3, 3.3), 10 tries, value 0 on the normalized image.
- Colour distortion: torchvision ``ColorJitter`` brightness/contrast/saturation factors uniform in
  ``[max(0, 1 - s), 1 + s]`` per image, in that fixed order (ColorJitter permutes the order; a fixed one keeps the
  batch a few fused ops).
- MixUp (Zhang et al., ICLR 2018) / CutMix (Yun et al., ICCV 2019) as torchvision v2 ``MixUp``/``CutMix``: one
  ``lam ~ Beta(alpha, alpha)`` per batch, pairing each image with the previous one (``roll(1)``), CutMix's ``lam``
  corrected to the box actually pasted; with both enabled one of them is chosen per batch with probability 1/2 (timm's
  ``switch_prob``). Labels become soft targets ``(B, num_classes)``.

All draws of a batch come from ``numpy.random.default_rng(batch_seed(seed, epoch, step, ...))`` on the host, so the
result is a pure function of (seed, epoch, step) and identical on every device; nothing touches the global torch or
NumPy RNG. Normalization uses torchvision's ImageNet mean and std and is done with torch ops (FFCV's GPU
``NormalizeImage`` needs CuPy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np
import torch
from deps_loaders.resolution import Resolution
from deps_loaders.seeding import STREAM_AUGMENT, batch_seed

# torchvision is imported where it is used (AutoAugment, the elastic resize, the fallback loader): importing it takes
# about 1.7 s (2 CPU cores, 2026-12-08), which every `deps` command and every training process without these paid

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augment",
    "BatchTransform",
    "ColorDistortion",
    "auto_augment",
    "color_distortion",
    "mix_batch",
    "random_erasing",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, on [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

_AUTO_AUGMENT_POLICIES = ("imagenet",)
_BINS = 10  # torchvision AutoAugment's number of magnitude bins


def _probability(field: str):
    def check(_, attribute, value) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{field}: {value!r} is not a probability in [0, 1]")

    return check


def _non_negative(_, attribute, value) -> None:
    if not value >= 0.0:
        raise ValueError(f"{attribute.name}: {value!r} must be >= 0")


@attrs.frozen
class ColorDistortion:
    """Per-image brightness, contrast and saturation jitter (torchvision ColorJitter factors), with probability p."""

    brightness: float = attrs.field(default=0.4, validator=_non_negative)
    contrast: float = attrs.field(default=0.4, validator=_non_negative)
    saturation: float = attrs.field(default=0.4, validator=_non_negative)
    p: float = attrs.field(default=1.0, validator=_probability("p"))


@attrs.frozen
class Augment:
    """Which on-device augmentations a training loader applies after decoding (all off by default)."""

    auto_augment: str | None = attrs.field(default=None)
    color: ColorDistortion | None = None
    random_erasing: float = attrs.field(default=0.0, validator=_probability("random_erasing"))
    mixup_alpha: float = attrs.field(default=0.0, validator=_non_negative)
    cutmix_alpha: float = attrs.field(default=0.0, validator=_non_negative)
    num_classes: int | None = None

    @auto_augment.validator
    def _check_policy(self, attribute, value) -> None:
        if value is not None and value not in _AUTO_AUGMENT_POLICIES:
            raise ValueError(f"auto_augment: {value!r} is not one of {_AUTO_AUGMENT_POLICIES} or None")

    def __attrs_post_init__(self) -> None:
        if self.mixes and (self.num_classes is None or self.num_classes < 2):
            raise ValueError(f"num_classes: mixup/cutmix need the number of classes (>= 2), got {self.num_classes!r}")

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @classmethod
    def recipe(cls, num_classes: int | None = None, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0) -> Augment:
        """The seed recipe: AutoAugment (ImageNet policy), colour distortion, RandomErasing p=0.2; mixing opt-in."""
        return cls(
            auto_augment="imagenet",
            color=ColorDistortion(),
            random_erasing=0.2,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            num_classes=num_classes,
        )


def _magnitude(op: str, bin_: int, height: int, width: int) -> tuple[float, bool]:
    """torchvision ``AutoAugment._augmentation_space`` for 10 bins: (magnitude, signed)."""
    t = bin_ / (_BINS - 1)
    if op in ("ShearX", "ShearY"):
        return 0.3 * t, True
    if op == "TranslateX":
        return 150.0 / 331.0 * width * t, True
    if op == "TranslateY":
        return 150.0 / 331.0 * height * t, True
    if op == "Rotate":
        return 30.0 * t, True
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return 0.9 * t, True
    if op == "Posterize":
        return float(8 - int(round(bin_ / ((_BINS - 1) / 4)))), False
    if op == "Solarize":
        return 255.0 * (1.0 - t), False
    return 0.0, False  # AutoContrast, Equalize, Invert


def _apply_op(img: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One AutoAugment operation on a uint8 batch, as torchvision's ``_apply_op`` (nearest interpolation, fill 0)."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    nearest = InterpolationMode.NEAREST
    if op == "ShearX":
        shear = [math.degrees(math.atan(magnitude)), 0.0]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=nearest, center=[0, 0])
    if op == "ShearY":
        shear = [0.0, math.degrees(math.atan(magnitude))]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=nearest, center=[0, 0])
    if op == "TranslateX":
        return TF.affine(
            img, angle=0.0, translate=[int(magnitude), 0], scale=1.0, shear=[0.0, 0.0], interpolation=nearest
        )
    if op == "TranslateY":
        return TF.affine(
            img, angle=0.0, translate=[0, int(magnitude)], scale=1.0, shear=[0.0, 0.0], interpolation=nearest
        )
    if op == "Rotate":
        return TF.rotate(img, magnitude, interpolation=nearest)
    if op == "Brightness":
        return TF.adjust_brightness(img, 1.0 + magnitude)
    if op == "Color":
        return TF.adjust_saturation(img, 1.0 + magnitude)
    if op == "Contrast":
        return TF.adjust_contrast(img, 1.0 + magnitude)
    if op == "Sharpness":
        return TF.adjust_sharpness(img, 1.0 + magnitude)
    if op == "Posterize":
        return TF.posterize(img, int(magnitude))
    if op == "Solarize":
        return TF.solarize(img, magnitude)
    if op == "AutoContrast":
        return TF.autocontrast(img)
    if op == "Equalize":
        return TF.equalize(img)
    if op == "Invert":
        return TF.invert(img)
    raise ValueError(f"unknown AutoAugment operation {op!r}")


def auto_augment(images: torch.Tensor, rng: np.random.Generator, policy: str = "imagenet") -> torch.Tensor:
    """AutoAugment on a uint8 batch ``(B, 3, H, W)``: a sub-policy, its two coin flips and signs drawn per image."""
    if policy not in _AUTO_AUGMENT_POLICIES:
        raise ValueError(f"policy: {policy!r} is not one of {_AUTO_AUGMENT_POLICIES}")
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    policies = AutoAugment(AutoAugmentPolicy.IMAGENET).policies
    b, _, h, w = images.shape
    chosen = rng.integers(0, len(policies), size=b)
    coins = rng.random((b, 2))
    negative = rng.random((b, 2)) < 0.5
    out = images.clone()
    for slot in range(2):
        groups: dict[tuple[str, float], list[int]] = {}
        for i in range(b):
            op, p, bin_ = policies[chosen[i]][slot]
            if coins[i, slot] >= p:
                continue
            magnitude, signed = _magnitude(op, bin_ or 0, h, w)
            if signed and negative[i, slot]:
                magnitude = -magnitude
            groups.setdefault((op, magnitude), []).append(i)
        for (op, magnitude), members in groups.items():
            idx = torch.as_tensor(members, device=images.device)
            out[idx] = _apply_op(out[idx], op, magnitude)
    return out


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
    return (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).to(x.dtype)


def color_distortion(x: torch.Tensor, cfg: ColorDistortion, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation on a float batch in [0, 1] ``(B, 3, H, W)``, factors drawn per image."""
    b = x.shape[0]
    apply = rng.random(b) < cfg.p

    def factors(strength: float) -> torch.Tensor:
        f = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=b)
        return torch.as_tensor(np.where(apply, f, 1.0), dtype=x.dtype).to(x.device, non_blocking=True).view(b, 1, 1, 1)

    fb, fc, fs = factors(cfg.brightness), factors(cfg.contrast), factors(cfg.saturation)
    x = (x * fb).clamp_(0.0, 1.0)
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * fc + mean).clamp_(0.0, 1.0)
    gray = _grayscale(x)
    return ((x - gray) * fs + gray).clamp_(0.0, 1.0)


def random_erasing(
    x: torch.Tensor,
    p: float,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """torchvision RandomErasing (value 0) per image of a normalized batch ``(B, C, H, W)``."""
    b, _, h, w = x.shape
    tries = 10
    apply = rng.random(b) < p
    u = rng.random((b, tries, 4))
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_r = np.log(ratio)
    aspect = np.exp(log_r[0] + (log_r[1] - log_r[0]) * u[..., 1])
    eh = np.round(np.sqrt(area * aspect))
    ew = np.round(np.sqrt(area / aspect))
    fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
    first = np.argmax(fits, axis=1)
    rows = np.arange(b)
    erase = apply & fits[rows, first]
    eh, ew = eh[rows, first], ew[rows, first]
    top = np.floor(u[rows, first, 2] * (h - eh + 1))
    left = np.floor(u[rows, first, 3] * (w - ew + 1))
    bounds = np.stack([top, top + eh, left, left + ew], axis=1)
    bounds[~erase] = 0  # an empty box
    bounds_t = torch.as_tensor(bounds, dtype=torch.float32).to(x.device, non_blocking=True)
    ys = torch.arange(h, device=x.device, dtype=torch.float32)
    xs = torch.arange(w, device=x.device, dtype=torch.float32)
    in_rows = (ys >= bounds_t[:, 0:1]) & (ys < bounds_t[:, 1:2])
    in_cols = (xs >= bounds_t[:, 2:3]) & (xs < bounds_t[:, 3:4])
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
    return x.masked_fill(mask, 0.0)


def mix_batch(
    x: torch.Tensor, labels: torch.Tensor, augment: Augment, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a batch with its roll by one; returns images and soft labels ``(B, num_classes)``."""
    assert augment.num_classes is not None  # checked by Augment
    target = torch.nn.functional.one_hot(labels, augment.num_classes).to(x.dtype)
    use_cutmix = augment.cutmix_alpha > 0 and (augment.mixup_alpha == 0 or rng.random() < 0.5)
    alpha = augment.cutmix_alpha if use_cutmix else augment.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if use_cutmix:
        _, _, h, w = x.shape
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        r = math.sqrt(1.0 - lam)
        bh, bw = int(r * h), int(r * w)
        y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.roll(1, 0)[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x.mul(lam).add_(x.roll(1, 0), alpha=1.0 - lam)
    return x, target.mul(lam).add_(target.roll(1, 0), alpha=1.0 - lam)


@attrs.frozen
class BatchTransform:
    """Decoded uint8 batch on the device → the model's input: resize, augment, normalize (shared by all loaders).

    ``images`` arrive as ``(B, 3, H, W)`` uint8 at the decode size; the batch's resolution is
    ``resolution.at(seed, epoch, step)`` and all draws are functions of (seed, epoch, step). With ``dtype=torch.uint8``
    the images are returned unnormalized (only resizing and AutoAugment apply).
    """

    resolution: Resolution
    seed: int
    augment: Augment | None = None
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    dtype: torch.dtype = torch.float32
    channels_last: bool = True

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.resolution.at(self.seed, epoch, step)
        fresh = False  # whether `images` is still the loader's buffer, which later batches overwrite
        if images.shape[-2:] != (size, size):
            import torchvision.transforms.v2.functional as TF

            images = TF.resize(images, [size, size], antialias=True)
            fresh = True
        aug = self.augment
        rng = np.random.default_rng(batch_seed(self.seed, epoch, step, STREAM_AUGMENT)) if aug is not None else None
        if aug is not None and aug.auto_augment is not None:
            images = auto_augment(images, rng, aug.auto_augment)
            fresh = True
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.dtype == torch.uint8:  # raw pixels, e.g. to normalize inside the model (checked: no float-only aug)
            images = (
                images.contiguous(memory_format=memory_format) if fresh else images.clone(memory_format=memory_format)
            )
            return images, labels.clone()
        x = images.to(dtype=torch.float32, memory_format=memory_format)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1).to(x.device, non_blocking=True)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1).to(x.device, non_blocking=True)
        if aug is not None and aug.color is not None:
            x = color_distortion(x.mul_(1.0 / 255.0), aug.color, rng).sub_(mean).div_(std)
        else:
            x = x.mul_(1.0 / 255.0).sub_(mean).div_(std)
        if aug is not None and aug.random_erasing > 0:
            x = random_erasing(x, aug.random_erasing, rng)
        labels = labels.clone()  # the loader's buffers are reused for later batches
        if aug is not None and aug.mixes:
            x, labels = mix_batch(x, labels, aug, rng)
        return x.to(dtype=self.dtype, memory_format=memory_format), labels
