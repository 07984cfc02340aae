"""TensorFlow's RMSProp, the optimizer of BigNAS's (and EfficientNet's) ImageNet recipe, as a torch optimizer.

``torch.optim.RMSprop`` differs from ``tf.compat.v1.train.RMSPropOptimizer`` in three ways that matter at the recipe's
``eps = 1e-3``: TF adds ε under the square root (``g / sqrt(ms + ε)``, torch ``g / (sqrt(ms) + ε)``), starts the mean
square at 1 (torch at 0, so torch's first steps are ``1 / sqrt(1 - decay)`` ≈ 3.2 times a unit step), and keeps the
learning rate inside the momentum buffer (a rate change affects only later gradients). :class:`RMSpropTF` is TF's
form, per parameter::

    g   = grad + weight_decay · p              (coupled L2, as the recipes' loss term)
    ms  = decay · ms + (1 − decay) · g²        (ms starts at 1)
    mom = momentum · mom + lr · g / sqrt(ms + eps)
    p   = p − mom

A parameter without a gradient is left alone, its state too (as in torch's optimizers).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["RMSpropTF"]


class RMSpropTF(torch.optim.Optimizer):
    """TF1 RMSProp with momentum (see the module's docstring). Defaults: BigNAS/EfficientNet's ImageNet values."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        *,
        decay: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
    ):
        if lr < 0:
            raise ValueError(f"lr must be >= 0; got {lr}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1); got {decay}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1); got {momentum}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0; got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
        defaults = dict(lr=lr, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
            grads = [p.grad for p in params]
            state = [self.state[p] for p in params]
            for p, s in zip(params, state):
                if not s:
                    s["mean_square"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    s["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            ms = [s["mean_square"] for s in state]
            mom = [s["momentum_buffer"] for s in state]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            torch._foreach_mul_(ms, group["decay"])
            torch._foreach_addcmul_(ms, grads, grads, value=1.0 - group["decay"])
            denom = torch._foreach_add(ms, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_mul_(mom, group["momentum"])
            torch._foreach_addcdiv_(mom, grads, denom, value=group["lr"])
            torch._foreach_sub_(params, mom)
        return loss
