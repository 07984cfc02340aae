"""One training step of once-for-all training, functional: DεpS eq. (4) over a plan's terms.

For each term ``(arch, w, loss)`` of the plan, the gradient of that subnet's loss with respect to the *active slices*
of the shared weights is computed with ``torch.func.vjp`` (views sliced outside the transform, so no full-size zero
gradients) and added as ``w · g`` into the full-size accumulator:

    G = Σ_j w_j ∇L_j = ∇L_full + ε_t · Σ_{subnets} ∇L_subnet          (DεpS eq. (4))

The BN running statistics of each subnet's active channels move during its forward, as in OFA. The full model's
logits (detached) are the targets of the later terms' in-place distillation (IKD). :func:`autograd_step` is the same
step written the usual way (``(w · loss).backward()`` per term into ``.grad``): the reference the functional step is
tested against, and the baseline it is benchmarked against.

Why ``vjp`` and not ``torch.func.grad``: ``grad`` always runs the backward with ``create_graph=True`` (so that
transforms nest), and recording the backward costs 5 % of a CPU step here (``bench/test_bench_grad_engine.py``,
bench/RESULTS.md); ``vjp``'s pullback lets the step say ``create_graph=False``, as nothing differentiates it again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import torch
from torch import Tensor
from torch.func import vjp

from deps_core import ops
from deps_core.accumulate import GradAccumulator
from deps_core.distill import LossConfig, term_loss
from deps_core.strategies import SubnetTerm
from deps_core.supernet import Supernet

DEFAULT_LOSS = LossConfig()

__all__ = ["StepResult", "functional_step", "autograd_step", "detached_state", "grad_and_value_once"]


@attrs.frozen
class StepResult:
    """Per-term losses (detached scalars, in plan order) and the full model's detached logits (``None`` if absent)."""

    losses: tuple[Tensor, ...]
    full_logits: Tensor | None


def _targets(term: SubnetTerm, full_logits: Tensor | None, teacher_logits: Tensor | None) -> Tensor | None:
    if term.loss == "inplace_kd":
        if full_logits is None:
            raise ValueError(f"term {term.role} ({term.arch}) distils in place but no full-model term precedes it")
        return full_logits
    if term.loss == "teacher_kd" and teacher_logits is None:
        raise ValueError(f"term {term.role} ({term.arch}) needs an external teacher's logits")
    return teacher_logits


def grad_and_value_once(loss_fn, views: dict[str, Tensor]) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
    """``(grads, (loss, aux))`` of ``loss_fn(views) -> (scalar loss, aux)``: ``torch.func.grad_and_value(loss_fn,
    has_aux=True)(views)`` without recording the backward (``torch.func.vjp``, pullback with ``create_graph=False``),
    so the result cannot be differentiated again."""
    loss, pullback, aux = vjp(loss_fn, views, has_aux=True)
    (grads,) = pullback(torch.ones_like(loss), retain_graph=False, create_graph=False)
    return grads, (loss, aux)


def functional_step(
    supernet: Supernet,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    accumulator: GradAccumulator,
    terms: Sequence[SubnetTerm],
    images: Tensor,
    labels: Tensor,
    *,
    loss_config: LossConfig = DEFAULT_LOSS,
    teacher_logits: Tensor | None = None,
    dw_backend: str = "auto",
    fuse_dw_grad: bool = False,
    fuse_dw_bn_act: bool = False,
) -> StepResult:
    """Accumulate ``Σ_j w_j ∇L_j`` over ``terms`` into ``accumulator`` (which the caller zeroes per step).

    ``params``/``buffers``: the supernet's full tensors by name (``params`` detached: gradients come only from
    ``torch.func.vjp``); BN running statistics in ``buffers`` are updated in place. ``images`` [N, 3, H, W], ``labels``
    [N]. ``teacher_logits`` [N, C]: an external teacher's, for ``teacher_kd`` terms.
    ``fuse_dw_grad`` (Triton depthwise backend only): the depthwise weights convolved as they are (not through the
    kernel transform) are not differentiated by ``torch.func``; the Triton weight-gradient kernel adds ``w_j · ∇``
    straight into their accumulator views instead.
    ``fuse_dw_bn_act`` (Triton depthwise backend only): each depthwise conv, BN and activation as one op
    (``deps_kernels.dwconv_bn_act``).
    """
    for flag, on in (("fuse_dw_grad", fuse_dw_grad), ("fuse_dw_bn_act", fuse_dw_bn_act)):
        if on and ops.resolve_depthwise_backend(dw_backend, images) != "triton":
            raise ValueError(f"{flag} needs the Triton depthwise backend; dw_backend={dw_backend!r} is torch here")
    accumulator.check(params)
    full_logits: Tensor | None = None
    losses = []
    for term in terms:
        arch = term.arch
        slices = supernet.param_slices(arch)
        views = supernet.active_params(arch, params)
        sinks = accumulator.sinks(supernet.direct_depthwise_weights(arch), slices) if fuse_dw_grad else {}
        fixed = {n: views.pop(n) for n in sinks}  # not differentiated: the kernel adds their gradient into `sinks`
        bufs = supernet.active_buffers(arch, buffers)
        target = _targets(term, full_logits, teacher_logits)
        dropout_p = supernet.spec.dropout if term.dropout else 0.0

        def loss_fn(
            v: dict[str, Tensor],
            arch=arch,
            bufs=bufs,
            term=term,
            target=target,
            dropout_p=dropout_p,
            fixed=fixed,
            sinks=sinks,
        ):
            logits = supernet.functional_forward(
                v | fixed,
                bufs,
                images,
                arch,
                training=True,
                dropout_p=dropout_p,
                update_bn_stats=term.update_bn_stats,
                dw_backend=dw_backend,
                dw_grad_sinks=sinks,
                dw_grad_scale=term.weight,
                fuse_dw_bn_act=fuse_dw_bn_act,
            )
            loss = term_loss(term.loss, logits, labels, target, loss_config)
            return loss, logits.detach()

        grads, (loss, logits) = grad_and_value_once(loss_fn, views)
        accumulator.add_(grads, slices, term.weight)
        if term.role == "full":
            full_logits = logits
        losses.append(loss.detach())
    return StepResult(tuple(losses), full_logits)


def autograd_step(
    supernet: Supernet,
    terms: Sequence[SubnetTerm],
    images: Tensor,
    labels: Tensor,
    *,
    loss_config: LossConfig = DEFAULT_LOSS,
    teacher_logits: Tensor | None = None,
    dw_backend: str = "auto",
) -> StepResult:
    """The same step with plain autograd: ``(w · loss).backward()`` per term into the parameters' ``.grad``."""
    full_logits: Tensor | None = None
    losses = []
    for term in terms:
        target = _targets(term, full_logits, teacher_logits)
        logits = supernet.functional_forward(
            supernet.active_params(term.arch),
            supernet.active_buffers(term.arch),
            images,
            term.arch,
            training=True,
            dropout_p=supernet.spec.dropout if term.dropout else 0.0,
            update_bn_stats=term.update_bn_stats,
            dw_backend=dw_backend,
        )
        loss = term_loss(term.loss, logits, labels, target, loss_config)
        (term.weight * loss).backward()
        if term.role == "full":
            full_logits = logits.detach()
        losses.append(loss.detach())
    return StepResult(tuple(losses), full_logits)


@torch.no_grad()
def detached_state(supernet: Supernet) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(params, buffers)`` for :func:`functional_step`: the supernet's tensors, detached (same storage)."""
    return {k: v.detach() for k, v in supernet.named_parameters()}, dict(supernet.named_buffers())
