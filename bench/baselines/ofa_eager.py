"""The shrinking step as the research code runs it: the baseline of ``bench/test_bench_step.py``.

Written for the benchmark after the structure of OFA's dynamic modules (``ofa/imagenet_classification/elastic_nn/
modules/dynamic_layers.py`` and ``dynamic_op.py``; the same structure is in BigNAS/AttentiveNAS, CompOFA and the DεpS
code): every elastic layer keeps the *active* subnet as module state (``active_out_channel``, ``active_kernel_size``,
``active_expand_ratio``, ``runtime_depth``), set by ``set_active_subnet`` before each forward; each forward slices its
weights with ``.contiguous()`` copies; the kernel transform runs on copies; the step calls ``(w · loss).backward()``
per subnet into ``.grad``; the depthwise conv is PyTorch's own.

The modules here hold *the same* ``nn.Parameter`` objects as a :class:`deps_core.supernet.Supernet` (shared, not
copied), so a baseline step and ``deps_core``'s steps read the same weights and write the same ``.grad``/buffers;
``tests/test_bench_baselines.py`` checks the gradients are equal in float64 before any timing is trusted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bench.baselines._loop import backward_per_term
from deps_core import ops
from deps_core.arch import Arch
from deps_core.distill import LossConfig
from deps_core.spaces.base import mid_channels, se_channels
from deps_core.step import DEFAULT_LOSS
from deps_core.supernet import Supernet

__all__ = ["OFAEagerNet", "eager_step"]


_act = ops.activation  # the same activations as deps_core


class DynamicConv2d(nn.Module):
    """A dense conv whose active in/out channels are module state; the weight is sliced and copied every forward."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None = None, stride: int = 1):
        super().__init__()
        self.weight, self.bias, self.stride = weight, bias, stride
        self.active_out_channel = weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        cin, cout = x.shape[1], self.active_out_channel
        w = self.weight[:cout, :cin].contiguous()
        b = self.bias[:cout].contiguous() if self.bias is not None else None
        k = w.shape[-1]
        return F.conv2d(x, w, b, self.stride, k // 2)


class DynamicSeparableConv2d(nn.Module):
    """Depthwise conv with an elastic kernel: the centre crop (through OFA's transform matrices), copied per forward."""

    def __init__(self, weight: nn.Parameter, matrices: dict[int, nn.Parameter], ks_choices: Sequence[int], stride: int):
        super().__init__()
        self.weight, self.stride = weight, stride
        self.matrices = nn.ParameterDict({str(k): m for k, m in matrices.items()})
        self.ks_choices = sorted(ks_choices)
        self.active_kernel_size = max(ks_choices)

    def active_filter(self, c: int, k: int) -> Tensor:
        k_max = self.weight.shape[-1]
        if not len(self.matrices) or k == k_max:
            s = k_max // 2 - k // 2
            return self.weight[:c, :, s : s + k, s : s + k].contiguous()
        filt = self.weight[:c]
        for small in reversed([c_ for c_ in self.ks_choices if c_ >= k][:-1]):  # e.g. k=3: 5 then 3
            s = filt.shape[-1] // 2 - small // 2
            sub = filt[:, :, s : s + small, s : s + small].contiguous()
            sub = F.linear(sub.view(c, small * small), self.matrices[str(small)])
            filt = sub.view(c, 1, small, small)
        return filt

    def forward(self, x: Tensor) -> Tensor:
        c, k = x.shape[1], self.active_kernel_size
        return F.conv2d(x, self.active_filter(c, k), None, self.stride, k // 2, 1, c)


class DynamicBatchNorm2d(nn.Module):
    """BN on the first C' channels; the affine weights and running statistics are sliced per forward (OFA)."""

    def __init__(self, owner: nn.Module, eps: float, momentum: float):
        super().__init__()
        self.owner, self.eps, self.momentum = owner, eps, momentum

    def forward(self, x: Tensor) -> Tensor:
        c, o = x.shape[1], self.owner
        return F.batch_norm(
            x, o.running_mean[:c], o.running_var[:c], o.weight[:c], o.bias[:c], self.training, self.momentum, self.eps
        )


class DynamicSE(nn.Module):
    def __init__(self, owner: nn.Module):
        super().__init__()
        self.reduce = DynamicConv2d(owner.reduce.weight, owner.reduce.bias)
        self.expand = DynamicConv2d(owner.expand.weight, owner.expand.bias)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        self.reduce.active_out_channel = se_channels(c)
        self.expand.active_out_channel = c
        y = x.mean((2, 3), keepdim=True)
        y = F.hardsigmoid(self.expand(F.relu(self.reduce(y))))
        return x * y


class DynamicMBConv(nn.Module):
    def __init__(self, block: nn.Module, spec, ks_choices: Sequence[int], eps: float, momentum: float, fixed: bool):
        super().__init__()
        self.spec, self.fixed = spec, fixed
        if not fixed:
            self.expand = DynamicConv2d(block.expand.weight)
            self.expand_bn = DynamicBatchNorm2d(block.expand_bn, eps, momentum)
        matrices = {}
        for name, p in block.dw.named_parameters(recurse=False):
            if name.startswith("m"):
                matrices[int(name.split("to")[1])] = p
        self.dw = DynamicSeparableConv2d(block.dw.weight, matrices, ks_choices, spec.stride)
        self.dw_bn = DynamicBatchNorm2d(block.dw_bn, eps, momentum)
        self.se = DynamicSE(block.se) if spec.se else None
        self.project = DynamicConv2d(block.project.weight)
        self.project_bn = DynamicBatchNorm2d(block.project_bn, eps, momentum)
        self.active_expand_ratio = 1

    def forward(self, x: Tensor) -> Tensor:
        act = self.spec.act
        if self.fixed:
            y = x
        else:
            self.expand.active_out_channel = mid_channels(x.shape[1], self.active_expand_ratio)
            y = _act(self.expand_bn(self.expand(x)), act)
        y = _act(self.dw_bn(self.dw(y)), act)
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project(y))
        return x + y if self.spec.residual else y


class OFAEagerNet(nn.Module):
    """OFA-style dynamic network over a :class:`Supernet`'s parameters (shared by reference).

    ``set_active_subnet(arch)`` writes the subnet into the modules; ``forward(x)`` runs whatever is active.
    """

    def __init__(self, supernet: Supernet):
        super().__init__()
        spec, eps, mom = supernet.spec, supernet.spec.bn_eps, supernet.spec.bn_momentum
        self.spec = spec
        self.stem = DynamicConv2d(supernet.stem.conv.weight, stride=spec.stem.stride)
        self.stem_bn = DynamicBatchNorm2d(supernet.stem.bn, eps, mom)
        self.first = DynamicMBConv(supernet.first, spec.first, (spec.first.kernel_size,), eps, mom, fixed=True)
        self.blocks = nn.ModuleList(
            DynamicMBConv(blk, b, spec.ks_choices, eps, mom, fixed=False)
            for blk, b in zip(supernet.blocks, spec.blocks)
        )
        self.head = nn.ModuleList()
        for layer in spec.head_pre_pool + spec.head_post_pool:
            owner = getattr(supernet, layer.name)
            conv = DynamicConv2d(owner.conv.weight, stride=layer.stride)
            bn = DynamicBatchNorm2d(owner.bn, eps, mom) if layer.bn else None
            self.head.append(nn.ModuleList([conv, bn] if bn is not None else [conv]))
        self.classifier_weight = supernet.classifier.weight
        self.classifier_bias = supernet.classifier.bias
        self.dropout = spec.dropout
        self.runtime_depth = [stage.max_depth for stage in spec.stages]
        self.active_dropout = True

    def set_active_subnet(self, arch: Arch, *, dropout: bool = True) -> None:
        for i, block in enumerate(self.blocks):
            block.dw.active_kernel_size = arch.ks[i]
            block.active_expand_ratio = arch.e[i]
        self.runtime_depth = list(arch.d)
        self.active_dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        spec = self.spec
        x = _act(self.stem_bn(self.stem(x)), spec.stem.act)
        x = self.first(x)
        for stage, depth in zip(spec.stages, self.runtime_depth):
            for i in range(stage.first_block, stage.first_block + depth):
                x = self.blocks[i](x)
        pre = len(spec.head_pre_pool)
        for j, layer in enumerate(spec.head_pre_pool + spec.head_post_pool):
            if j == pre:
                x = x.mean((2, 3), keepdim=True)
            mods = self.head[j]
            y = mods[0](x)
            x = _act(mods[1](y) if len(mods) > 1 else y, layer.act)
        if pre == len(self.head):
            x = x.mean((2, 3), keepdim=True)
        x = x.flatten(1)
        if self.training and self.active_dropout and self.dropout > 0:
            x = F.dropout(x, self.dropout, training=True)
        return F.linear(x, self.classifier_weight, self.classifier_bias)


def eager_step(net: OFAEagerNet, terms, images: Tensor, labels: Tensor, loss_config: LossConfig = DEFAULT_LOSS):
    """One step the research-code way: per term, set the subnet, forward, ``(w · loss).backward()`` into ``.grad``."""
    for term in terms:
        if term.loss == "teacher_kd" or not term.update_bn_stats:
            raise ValueError("the eager baseline runs DεpS/OFA-style terms: no external teacher, BN statistics updated")

    def forward(_j, term):
        net.set_active_subnet(term.arch, dropout=term.dropout)
        return net(images)

    return backward_per_term(terms, forward, labels, loss_config)
