"""Losses of one subnet term: cross-entropy with label smoothing and the two kinds of distillation.

- ``ce``: cross-entropy with label smoothing ε_ls (0.1): targets ``(1 - ε_ls)·onehot + ε_ls / C`` (OFA
  ``cross_entropy_with_label_smoothing``, the same as ``F.cross_entropy(label_smoothing=ε_ls)``).
- ``inplace_kd``: in-place distillation from the full model's soft predictions on the same batch,
  ``T² · CE(softmax(t / T), log_softmax(s / T))`` (DεpS code ``cross_entropy_loss_with_soft_target`` scaled by
  ``T²``; Yu & Huang 2019 in-place distillation; T = 1 by default).
- ``teacher_kd``: OFA's progressive-shrinking loss with an external frozen teacher,
  ``CE_ls(s, y) + kd_ratio · CE(softmax(t), log_softmax(s))``.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSS_KINDS", "LossConfig", "soft_cross_entropy", "term_loss", "FrozenTeacher"]

LOSS_KINDS = ("ce", "inplace_kd", "teacher_kd")


def _in_range(lo: float, hi: float):
    def check(_inst: object, attribute: attrs.Attribute, value: float) -> None:
        if not lo <= value <= hi:
            raise ValueError(f"{attribute.name} must lie in [{lo}, {hi}]; got {value}")

    return check


@attrs.frozen
class LossConfig:
    label_smoothing: float = attrs.field(default=0.1, validator=_in_range(0.0, 1.0))
    kd_temperature: float = attrs.field(default=1.0, validator=_in_range(1e-3, 1e3))
    kd_ratio: float = attrs.field(default=1.0, validator=_in_range(0.0, 1e3))


def soft_cross_entropy(logits: Tensor, soft_target: Tensor) -> Tensor:
    """``mean_n Σ_c -p_nc · log_softmax(logits)_nc`` for a probability target ``p`` [N, C]."""
    return -(soft_target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def term_loss(kind: str, logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, config: LossConfig) -> Tensor:
    """The scalar loss of one term. ``teacher_logits`` (detached) are required by the two distillation kinds.

    Computed in at least float32: under autocast the logits are bf16, and whether softmax and the sums run in bf16
    depends on the device's autocast rules (CUDA's promote them to float32, the CPU's leave the distillation loss in
    bf16, where ``log_softmax`` keeps about 3 significant digits)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if kind == "ce":
        return F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    if teacher_logits is None:
        raise ValueError(f"loss {kind!r} needs teacher logits (the full model's, or an external teacher's)")
    if kind == "inplace_kd":
        t = config.kd_temperature
        target = F.softmax(teacher_logits.detach().to(logits.dtype) / t, dim=1)
        return (t * t) * soft_cross_entropy(logits / t, target)
    if kind == "teacher_kd":
        target = F.softmax(teacher_logits.detach().to(logits.dtype), dim=1)
        ce = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
        return ce + config.kd_ratio * soft_cross_entropy(logits, target)
    raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")


class FrozenTeacher:
    """A frozen copy of a supernet's largest subnet, the external teacher of OFA / CompOFA distillation.

    OFA takes the trained full model and runs it with BN in training mode under ``no_grad`` (``teacher_model.train()``
    in ``progressive_shrinking.train_one_epoch``): its soft labels use the batch's statistics. That is the default
    here (``bn="batch"``), without moving any stored statistics; ``bn="running"`` uses the copied running statistics.
    """

    def __init__(self, supernet, *, bn: str = "batch"):
        if bn not in ("batch", "running"):
            raise ValueError(f"bn must be 'batch' or 'running'; got {bn!r}")
        self.supernet = supernet
        self.arch = supernet.max_arch()
        self.bn = bn
        with torch.no_grad():
            self.params = {k: v.detach().clone() for k, v in supernet.active_params(self.arch).items()}
            self.buffers = {k: v.detach().clone() for k, v in supernet.active_buffers(self.arch).items()}

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """Logits ``[N, C]`` of the frozen full model on ``images``."""
        return self.supernet.functional_forward(
            self.params, self.buffers, images, self.arch, training=self.bn == "batch", update_bn_stats=False
        )

    def state_dict(self) -> dict[str, Tensor]:
        return {
            **{f"params.{k}": v for k, v in self.params.items()},
            **{f"buffers.{k}": v for k, v in self.buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        expected = {f"params.{k}" for k in self.params} | {f"buffers.{k}" for k in self.buffers}
        if set(state) != expected:
            raise ValueError(f"teacher state does not match this supernet: {sorted(set(state) ^ expected)[:6]}")
        for k, v in state.items():
            kind, name = k.split(".", 1)
            getattr(self, kind)[name].copy_(v)
