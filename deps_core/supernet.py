"""The elastic supernet: shared weights in full-size tensors, and a forward that takes the subnet as an argument.

``supernet(x, arch)`` runs the subnet ``arch``; nothing on the module changes when another subnet runs. The same
computation is exposed in functional form for ``torch.func``:

    views = supernet.active_params(arch, params)     # dict name -> view of the active slice of each shared tensor
    bufs = supernet.active_buffers(arch, buffers)    # BN running statistics of the active channels (views)
    logits = supernet.functional_forward(views, bufs, x, arch, training=True, dropout_p=0.1)

Differentiating ``functional_forward`` with respect to ``views`` gives gradients the size of the active slices (no
full-size zero tensors), which a gradient accumulator adds into the full-size buffers.

Active slices (OFA, Cai et al. ICLR 2020, ``DynamicMBConvLayer``): the first ``mid = make_divisible(round(C_in·e), 8)``
hidden channels of a block's expand conv, BN, depthwise conv, SE and project conv; the centre ``k×k`` taps of the
depthwise kernel (through the kernel-transform matrices when enabled); the first ``d`` blocks of each stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from deps_core import ops
from deps_core.arch import Arch, max_arch, min_arch
from deps_core.spaces.base import SpaceSpec, mid_channels, se_channels

__all__ = ["Supernet", "BN_BUFFERS"]

BN_BUFFERS = ("running_mean", "running_var")
_FULL = ()  # slice tuple meaning "the whole tensor"


# --- parameter holders (state-dict names only; the computation is functional) ----------------------------------


class ConvWeight(nn.Module):
    def __init__(self, cout: int, cin: int, k: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k))
        self.bias = nn.Parameter(torch.empty(cout)) if bias else None


class BNParams(nn.Module):
    """Affine weights and running statistics of one BN layer (``num_batches_tracked`` kept for state-dict interop;
    the momentum is always set, so it is never read)."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))


class DepthwiseWeight(nn.Module):
    """The full ``[C, 1, K_max, K_max]`` depthwise kernel and, when enabled, the kernel-transform matrices
    ``m{big}to{small}``."""

    def __init__(self, c: int, ks_choices: tuple[int, ...], kernel_transform: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c, 1, max(ks_choices), max(ks_choices)))
        if kernel_transform:
            for big, small in _transform_pairs(ks_choices):
                self.register_parameter(f"m{big}to{small}", nn.Parameter(torch.eye(small * small)))


class SEParams(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.reduce = ConvWeight(se_channels(c), c, 1, bias=True)
        self.expand = ConvWeight(c, se_channels(c), 1, bias=True)


class Block(nn.Module):
    """Weights of one inverted-residual block at its largest size."""

    def __init__(
        self, cin: int, mid: int, cout: int, ks_choices: tuple[int, ...], se: bool, expand: bool, transform: bool
    ):
        super().__init__()
        if expand:
            self.expand = ConvWeight(mid, cin, 1)
            self.expand_bn = BNParams(mid)
        self.dw = DepthwiseWeight(mid, ks_choices, transform)
        self.dw_bn = BNParams(mid)
        if se:
            self.se = SEParams(mid)
        self.project = ConvWeight(cout, mid, 1)
        self.project_bn = BNParams(cout)


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, bn: bool):
        super().__init__()
        self.conv = ConvWeight(cout, cin, k)
        if bn:
            self.bn = BNParams(cout)


class Linear(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin))
        self.bias = nn.Parameter(torch.empty(cout))


def _transform_pairs(ks_choices: tuple[int, ...]) -> list[tuple[int, int]]:
    ks = sorted(ks_choices)
    return [(ks[i + 1], ks[i]) for i in range(len(ks) - 1)]


# --- the supernet ------------------------------------------------------------------------------------------------


class Supernet(nn.Module):
    """An elastic MobileNet supernet on a :class:`SpaceSpec`; run a subnet with ``supernet(x, arch)``.

    ``kernel_transform``: learn OFA's kernel-transform matrices (smaller kernels = transformed centres of larger
    ones); off, a smaller kernel is the plain centre crop. With a single kernel choice there is nothing to transform.
    ``generator``: the RNG for the initial weights (OFA's ``he_fout`` init); ``None`` uses torch's default RNG.
    ``zero_init_residual``: start the last BN scale of every residual block at 0 (BigNAS §3.1, AttentiveNAS's
    ``zero_residual_block_bn_weights``), so each residual block is the identity at initialization and the initial
    network is the same at every depth; OFA and DεpS leave it at 1.
    """

    def __init__(
        self,
        spec: SpaceSpec,
        num_classes: int = 1000,
        *,
        kernel_transform: bool = True,
        generator: torch.Generator | None = None,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
        self.spec = spec
        self.num_classes = num_classes
        self.kernel_transform = bool(kernel_transform) and len(spec.ks_choices) > 1
        self.zero_init_residual = bool(zero_init_residual)
        ks = spec.ks_choices

        self.stem = ConvBN(3, spec.stem.cout, spec.stem.kernel_size, spec.stem.bn)
        f = spec.first
        self.first = Block(f.cin, f.cin, f.cout, (f.kernel_size,), f.se, expand=False, transform=False)
        self.blocks = nn.ModuleList(
            Block(b.cin, b.max_mid, b.cout, ks, b.se, expand=True, transform=self.kernel_transform) for b in spec.blocks
        )
        cin = spec.stages[-1].width
        for layer in spec.head_pre_pool + spec.head_post_pool:
            self.add_module(layer.name, ConvBN(cin, layer.cout, layer.kernel_size, layer.bn))
            cin = layer.cout
        self.classifier = Linear(cin, num_classes)
        self.reset_parameters(generator)

    # --- init ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """OFA's ``init_models(net, "he_fout")``: conv ``N(0, 2 / (k² · C_out))``, BN (1, 0), linear
        ``U(±1/sqrt(C_in))``, biases 0, transform matrices the identity; with ``zero_init_residual`` the residual
        blocks' ``project_bn`` scales 0."""
        for module in self.modules():
            if isinstance(module, ConvWeight):
                cout, _, k, _ = module.weight.shape
                module.weight.normal_(0.0, math.sqrt(2.0 / (k * k * cout)), generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, DepthwiseWeight):
                c, _, k, _ = module.weight.shape
                module.weight.normal_(0.0, math.sqrt(2.0 / (k * k * c)), generator=generator)
                for name, p in module.named_parameters(recurse=False):
                    if name != "weight":
                        p.copy_(torch.eye(p.shape[0]))
            elif isinstance(module, BNParams):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.num_batches_tracked.zero_()
            elif isinstance(module, Linear):
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.zero_()
        if self.zero_init_residual:
            for block in self.residual_blocks():
                block.project_bn.weight.zero_()

    def residual_blocks(self) -> list[Block]:
        """The blocks with an identity shortcut (stride 1, same width in and out), the fixed first one included."""
        pairs = [(self.spec.first, self.first), *zip(self.spec.blocks, self.blocks)]
        return [block for spec, block in pairs if spec.residual]

    # --- archs ----------------------------------------------------------------------------------------------------
    @property
    def space(self) -> str:
        return self.spec.name

    def check(self, arch: Arch) -> None:
        """``ValueError`` naming the field and the allowed values if ``arch`` is not a subnet of this supernet."""
        if not isinstance(arch, Arch):
            raise TypeError(f"expected an Arch, got {type(arch).__name__}")
        self.spec.check(arch)

    def max_arch(self, resolution: int | None = None) -> Arch:
        return max_arch(self.spec, resolution=resolution)

    def min_arch(self, resolution: int | None = None) -> Arch:
        return min_arch(self.spec, resolution=resolution)

    def macs(self, arch: Arch, resolution: int | None = None) -> int:
        """Multiply-accumulates of ``arch`` at its resolution (or ``resolution``), OFA's convention."""
        from deps_core.macs import subnet_macs

        self.check(arch)
        return subnet_macs(self.spec, arch, num_classes=self.num_classes, resolution=resolution)

    # --- slicing ------------------------------------------------------------------------------------------------
    def param_slices(self, arch: Arch) -> dict[str, tuple[slice, ...]]:
        """For every parameter the subnet reads: the index of its active slice (``()`` = the whole tensor)."""
        spec, out = self.spec, {}
        for name, _ in self.stem.named_parameters(prefix="stem"):
            out[name] = _FULL
        for name, _ in self.first.named_parameters(prefix="first"):
            out[name] = _FULL
        ks_max = max(spec.ks_choices)
        for i in arch.active_blocks(spec):
            b, p = spec.blocks[i], f"blocks.{i}"
            k, mid = arch.ks[i], mid_channels(b.cin, arch.e[i])
            m = slice(0, mid)
            out[f"{p}.expand.weight"] = (m,)
            out[f"{p}.expand_bn.weight"] = out[f"{p}.expand_bn.bias"] = (m,)
            src = ops.centre_slice(ks_max, ops.dw_source_size(k, spec.ks_choices, self.kernel_transform))
            out[f"{p}.dw.weight"] = (m, slice(None), src, src)
            if self.kernel_transform and k < ks_max:
                for big, small in _transform_pairs(spec.ks_choices):
                    if small >= k:
                        out[f"{p}.dw.m{big}to{small}"] = _FULL
            out[f"{p}.dw_bn.weight"] = out[f"{p}.dw_bn.bias"] = (m,)
            if b.se:
                s = slice(0, se_channels(mid))
                out[f"{p}.se.reduce.weight"] = (s, m)
                out[f"{p}.se.reduce.bias"] = (s,)
                out[f"{p}.se.expand.weight"] = (m, s)
                out[f"{p}.se.expand.bias"] = (m,)
            out[f"{p}.project.weight"] = (slice(None), m)
            out[f"{p}.project_bn.weight"] = out[f"{p}.project_bn.bias"] = _FULL
        for layer in spec.head_pre_pool + spec.head_post_pool:
            for name, _ in getattr(self, layer.name).named_parameters(prefix=layer.name):
                out[name] = _FULL
        out["classifier.weight"] = out["classifier.bias"] = _FULL
        return out

    def buffer_slices(self, arch: Arch) -> dict[str, tuple[slice, ...]]:
        """For every BN running statistic the subnet reads: the index of its active channels."""
        out = {}
        for pname, idx in self.param_slices(arch).items():
            if pname.endswith("_bn.weight") or pname.endswith(".bn.weight"):
                prefix = pname[: -len("weight")]
                for buf in BN_BUFFERS:
                    out[prefix + buf] = idx
        return out

    def active_params(self, arch: Arch, params: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Views of the active slices of ``params`` (default: this module's parameters, as autograd-tracked views)."""
        self.check(arch)
        params = dict(self.named_parameters()) if params is None else params
        return {name: params[name][idx] if idx else params[name] for name, idx in self.param_slices(arch).items()}

    def active_buffers(self, arch: Arch, buffers: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Views of the active channels of the BN running statistics (updates through them reach the full buffers)."""
        buffers = dict(self.named_buffers()) if buffers is None else buffers
        return {name: buffers[name][idx] if idx else buffers[name] for name, idx in self.buffer_slices(arch).items()}

    # --- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, arch: Arch, *, update_bn_stats: bool = True, dw_backend: str = "auto") -> Tensor:
        """Logits ``[N, num_classes]`` of subnet ``arch`` on ``x`` ``[N, 3, H, W]``.

        Training mode: BN uses batch statistics (and moves the active running statistics unless
        ``update_bn_stats=False``), dropout is the space's rate. Evaluation: stored statistics, no dropout.
        """
        views = self.active_params(arch)
        bufs = self.active_buffers(arch)
        return self.functional_forward(
            views,
            bufs,
            x,
            arch,
            training=self.training,
            dropout_p=self.spec.dropout if self.training else 0.0,
            update_bn_stats=update_bn_stats,
            dw_backend=dw_backend,
        )

    def functional_forward(
        self,
        views: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor],
        x: Tensor,
        arch: Arch,
        *,
        training: bool,
        dropout_p: float = 0.0,
        update_bn_stats: bool = True,
        dw_backend: str = "auto",
        bn_momentum: float | None = None,
        dw_grad_sinks: Mapping[str, Tensor] | None = None,
        dw_grad_scale: float = 1.0,
        fuse_dw_bn_act: bool = False,
    ) -> Tensor:
        """The subnet's forward on explicit active-slice ``views`` and BN ``buffers`` (see :meth:`active_params`).

        ``bn_momentum`` overrides the space's BN momentum for this call (BN recalibration's cumulative average).
        ``dw_grad_sinks`` (Triton backend): for depthwise weights named in :meth:`direct_depthwise_weights`, a buffer
        shaped like the view into which the backward adds ``dw_grad_scale · dL/dview`` (the view then gets no
        gradient); see ``deps_kernels.elastic_dwconv``.
        ``fuse_dw_bn_act`` (Triton backend): each depthwise conv, its BN and activation run as one op
        (``deps_kernels.dwconv_bn_act``; same results, fewer passes over the depthwise output).
        """
        spec = self.spec
        in_channels = views["stem.conv.weight"].shape[1]
        if x.dim() != 4 or x.shape[1] != in_channels or not x.is_floating_point():
            raise ValueError(
                f"input must be a floating-point batch [N, {in_channels}, H, W] (normalised images); "
                f"got shape {tuple(x.shape)} of {x.dtype}"
            )
        eps = spec.bn_eps
        momentum = spec.bn_momentum if bn_momentum is None else bn_momentum
        keep_stats = not training or update_bn_stats
        sinks = dw_grad_sinks or {}

        def bn_args(prefix: str) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
            rm = buffers[prefix + "running_mean"] if keep_stats else None
            rv = buffers[prefix + "running_var"] if keep_stats else None
            return views[prefix + "weight"], views[prefix + "bias"], rm, rv

        def bn(t: Tensor, prefix: str) -> Tensor:
            return ops.batch_norm(t, *bn_args(prefix), training=training, momentum=momentum, eps=eps)

        def dw_bn_act(t: Tensor, name: str, w: Tensor, stride: int, bn_prefix: str, act: str) -> Tensor:
            return ops.depthwise_bn_act(
                t, w, *bn_args(bn_prefix), stride=stride, act=act, training=training, momentum=momentum, eps=eps,
                backend=dw_backend, fused=fuse_dw_bn_act, grad_out=sinks.get(name), grad_scale=dw_grad_scale,
            )  # fmt: skip

        def se(t: Tensor, prefix: str) -> Tensor:
            r, e = prefix + "se.reduce.", prefix + "se.expand."
            return ops.squeeze_excite(t, views[r + "weight"], views[r + "bias"], views[e + "weight"], views[e + "bias"])

        # stem
        x = ops.conv(x, views["stem.conv.weight"], stride=spec.stem.stride)
        x = ops.activation(bn(x, "stem.bn."), spec.stem.act)
        # fixed first block (expand ratio 1)
        f = spec.first
        y = dw_bn_act(x, "first.dw.weight", views["first.dw.weight"], f.stride, "first.dw_bn.", f.act)
        if f.se:
            y = se(y, "first.")
        y = bn(ops.conv(y, views["first.project.weight"]), "first.project_bn.")
        x = x + y if f.residual else y
        # elastic blocks
        for i in arch.active_blocks(spec):
            b, p = spec.blocks[i], f"blocks.{i}."
            y = ops.activation(bn(ops.conv(x, views[p + "expand.weight"]), p + "expand_bn."), b.act)
            name = f"{p}dw.weight"
            w = self.depthwise_kernel(views, i, arch.ks[i])
            if name in sinks and w is not views[name]:
                raise ValueError(f"{name} is convolved through the kernel transform; its gradient cannot be fused")
            y = dw_bn_act(y, name, w, b.stride, p + "dw_bn.", b.act)
            if b.se:
                y = se(y, p)
            y = bn(ops.conv(y, views[p + "project.weight"]), p + "project_bn.")
            x = x + y if b.residual else y
        # head
        for layer in spec.head_pre_pool:
            x = ops.conv(x, views[f"{layer.name}.conv.weight"], stride=layer.stride)
            x = ops.activation(bn(x, f"{layer.name}.bn.") if layer.bn else x, layer.act)
        x = ops.global_pool(x)
        for layer in spec.head_post_pool:
            x = ops.conv(x, views[f"{layer.name}.conv.weight"])
            x = ops.activation(bn(x, f"{layer.name}.bn.") if layer.bn else x, layer.act)
        x = x.flatten(1)
        if dropout_p > 0.0:
            x = torch.nn.functional.dropout(x, dropout_p, training=True)
        return torch.nn.functional.linear(x, views["classifier.weight"], views["classifier.bias"])

    def direct_depthwise_weights(self, arch: Arch) -> list[str]:
        """The depthwise weights ``arch`` convolves with as they are (its active view, not a transformed kernel):
        those whose gradient the Triton kernel can add straight into an accumulator (``dw_grad_sinks``)."""
        ks_max = max(self.spec.ks_choices)
        direct = [i for i in arch.active_blocks(self.spec) if not self.kernel_transform or arch.ks[i] == ks_max]
        return ["first.dw.weight"] + [f"blocks.{i}.dw.weight" for i in direct]

    def depthwise_kernel(self, views: Mapping[str, Tensor], block: int, k: int) -> Tensor:
        """The ``[C', 1, k, k]`` kernel block ``block`` convolves with: the active view, through the kernel transform
        when it is on and ``k`` is not the largest kernel."""
        w = views[f"blocks.{block}.dw.weight"]
        if not self.kernel_transform or k == max(self.spec.ks_choices):
            return w
        pairs = _transform_pairs(self.spec.ks_choices)
        matrices = {small: views[f"blocks.{block}.dw.m{big}to{small}"] for big, small in pairs if small >= k}
        return ops.transform_kernel(w, k, matrices, self.spec.ks_choices)

    def extra_repr(self) -> str:
        return f"space={self.spec.name!r}, num_classes={self.num_classes}, kernel_transform={self.kernel_transform}"
