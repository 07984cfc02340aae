"""Static subnets: a plain ``nn.Module`` (ordinary convs, BN, linear) holding copies of one subnet's weights.

``extract_subnet(supernet, arch)`` returns the network and ``subnet_config(supernet, arch)`` its JSON-able config;
``build_static(config)`` rebuilds the same network without the supernet (then load the state dict). In eval mode the
static network computes what ``supernet(x, arch)`` computes; the kernel transform is folded into the copied kernels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from deps_core import ops
from deps_core.arch import Arch
from deps_core.checkpoint import state_dict_mismatch
from deps_core.spaces.base import mid_channels, se_channels
from deps_core.supernet import Supernet

__all__ = [
    "StaticSubnet",
    "subnet_config",
    "build_static",
    "extract_subnet",
    "export_static",
    "load_static",
    "CONFIG_FORMAT",
]

CONFIG_FORMAT = "deps.static_subnet/1"


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "h_swish": nn.Hardswish(), "none": nn.Identity()}[name]


class _ConvBNAct(nn.Sequential):
    def __init__(
        self, cin: int, cout: int, k: int, stride: int, groups: int, bn: bool, act: str, eps: float, momentum: float
    ):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        if bn:
            self.bn = nn.BatchNorm2d(cout, eps=eps, momentum=momentum)
        if act != "none":
            self.act = _act(act)


class _SE(nn.Module):
    def __init__(self, c: int, mid: int):
        super().__init__()
        self.reduce = nn.Conv2d(c, mid, 1)
        self.expand = nn.Conv2d(mid, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        return ops.squeeze_excite(x, self.reduce.weight, self.reduce.bias, self.expand.weight, self.expand.bias)


class _MBConv(nn.Module):
    def __init__(self, c: dict[str, Any], eps: float, momentum: float):
        super().__init__()
        cin, mid, cout, act = c["cin"], c["mid"], c["cout"], c["act"]
        self.residual = bool(c["residual"])
        self.expand = _ConvBNAct(cin, mid, 1, 1, 1, True, act, eps, momentum) if c["expand"] else None
        self.dw = _ConvBNAct(mid, mid, c["k"], c["stride"], mid, True, act, eps, momentum)
        self.se = _SE(mid, c["se_mid"]) if c["se_mid"] else None
        self.project = _ConvBNAct(mid, cout, 1, 1, 1, True, "none", eps, momentum)

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class StaticSubnet(nn.Module):
    """A subnet as an ordinary network; build with :func:`build_static` or :func:`extract_subnet`."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        _validate_config(config)
        self.config = config
        eps, momentum = config["bn"]["eps"], config["bn"]["momentum"]
        s = config["stem"]
        self.stem = _ConvBNAct(3, s["cout"], s["k"], s["stride"], 1, s["bn"], s["act"], eps, momentum)
        self.blocks = nn.ModuleList(_MBConv(b, eps, momentum) for b in config["blocks"])
        self.head_pre_pool = nn.ModuleList(
            _ConvBNAct(h["cin"], h["cout"], h["k"], h["stride"], 1, h["bn"], h["act"], eps, momentum)
            for h in config["head_pre_pool"]
        )
        self.head_post_pool = nn.ModuleList(
            _ConvBNAct(h["cin"], h["cout"], h["k"], 1, 1, h["bn"], h["act"], eps, momentum)
            for h in config["head_post_pool"]
        )
        self.dropout = nn.Dropout(config["dropout"])
        self.classifier = nn.Linear(config["classifier"]["cin"], config["classifier"]["cout"])

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        for layer in self.head_pre_pool:
            x = layer(x)
        x = ops.global_pool(x)
        for layer in self.head_post_pool:
            x = layer(x)
        return self.classifier(self.dropout(x.flatten(1)))


_CONFIG_KEYS = {
    "format",
    "arch",
    "num_classes",
    "bn",
    "dropout",
    "stem",
    "blocks",
    "head_pre_pool",
    "head_post_pool",
    "classifier",
}


def _validate_config(config: dict[str, Any]) -> None:
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"not a static-subnet config: expected format {CONFIG_FORMAT!r}, got {got!r}")
    missing = _CONFIG_KEYS - set(config)
    if missing:
        raise ValueError(f"static-subnet config lacks the keys {sorted(missing)}")


def subnet_config(supernet: Supernet, arch: Arch) -> dict[str, Any]:
    """The JSON-able description of the static network of ``arch`` (enough to rebuild it without the supernet)."""
    supernet.check(arch)
    spec = supernet.spec
    f = spec.first
    blocks = [
        dict(
            cin=f.cin,
            mid=f.cin,
            cout=f.cout,
            k=f.kernel_size,
            stride=f.stride,
            act=f.act,
            expand=False,
            se_mid=se_channels(f.cin) if f.se else None,
            residual=f.residual,
        )
    ]
    for i in arch.active_blocks(spec):
        b = spec.blocks[i]
        mid = mid_channels(b.cin, arch.e[i])
        blocks.append(
            dict(
                cin=b.cin,
                mid=mid,
                cout=b.cout,
                k=arch.ks[i],
                stride=b.stride,
                act=b.act,
                expand=True,
                se_mid=se_channels(mid) if b.se else None,
                residual=b.residual,
            )
        )
    head_pre, cin = [], spec.stages[-1].width
    for layer in spec.head_pre_pool:
        head_pre.append(
            dict(
                name=layer.name,
                cin=cin,
                cout=layer.cout,
                k=layer.kernel_size,
                stride=layer.stride,
                bn=layer.bn,
                act=layer.act,
            )
        )
        cin = layer.cout
    head_post = []
    for layer in spec.head_post_pool:
        head_post.append(
            dict(name=layer.name, cin=cin, cout=layer.cout, k=layer.kernel_size, stride=1, bn=layer.bn, act=layer.act)
        )
        cin = layer.cout
    return {
        "format": CONFIG_FORMAT,
        "arch": arch.to_dict(),
        "num_classes": supernet.num_classes,
        "bn": {"eps": spec.bn_eps, "momentum": spec.bn_momentum},
        "dropout": spec.dropout,
        "stem": dict(
            cout=spec.stem.cout, k=spec.stem.kernel_size, stride=spec.stem.stride, bn=spec.stem.bn, act=spec.stem.act
        ),
        "blocks": blocks,
        "head_pre_pool": head_pre,
        "head_post_pool": head_post,
        "classifier": {"cin": cin, "cout": supernet.num_classes},
    }


def build_static(config: dict[str, Any]) -> StaticSubnet:
    """A freshly initialised static network from a config of :func:`subnet_config` (load its state dict next)."""
    return StaticSubnet(config)


def _copy_bn(dst: nn.BatchNorm2d, views: dict[str, Tensor], bufs: dict[str, Tensor], prefix: str) -> None:
    dst.weight.copy_(views[prefix + "weight"])
    dst.bias.copy_(views[prefix + "bias"])
    dst.running_mean.copy_(bufs[prefix + "running_mean"])
    dst.running_var.copy_(bufs[prefix + "running_var"])


def _copy_se(dst: _SE, views: dict[str, Tensor], prefix: str) -> None:
    dst.reduce.weight.copy_(views[prefix + "se.reduce.weight"])
    dst.reduce.bias.copy_(views[prefix + "se.reduce.bias"])
    dst.expand.weight.copy_(views[prefix + "se.expand.weight"])
    dst.expand.bias.copy_(views[prefix + "se.expand.bias"])


@torch.no_grad()
def extract_subnet(supernet: Supernet, arch: Arch) -> StaticSubnet:
    """The static network of ``arch`` with copies of its weights and BN statistics (kernel transform folded in)."""
    config = subnet_config(supernet, arch)
    param = next(supernet.parameters())
    net = StaticSubnet(config).to(device=param.device, dtype=param.dtype)
    views, bufs = supernet.active_params(arch), supernet.active_buffers(arch)
    views = {k: v.detach() for k, v in views.items()}
    spec = supernet.spec
    net.stem.conv.weight.copy_(views["stem.conv.weight"])
    _copy_bn(net.stem.bn, views, bufs, "stem.bn.")
    first = net.blocks[0]
    first.dw.conv.weight.copy_(views["first.dw.weight"])
    _copy_bn(first.dw.bn, views, bufs, "first.dw_bn.")
    if first.se is not None:
        _copy_se(first.se, views, "first.")
    first.project.conv.weight.copy_(views["first.project.weight"])
    _copy_bn(first.project.bn, views, bufs, "first.project_bn.")
    for block, i in zip(net.blocks[1:], arch.active_blocks(spec)):
        p, k = f"blocks.{i}.", arch.ks[i]
        block.expand.conv.weight.copy_(views[p + "expand.weight"])
        _copy_bn(block.expand.bn, views, bufs, p + "expand_bn.")
        block.dw.conv.weight.copy_(supernet.depthwise_kernel(views, i, k))
        _copy_bn(block.dw.bn, views, bufs, p + "dw_bn.")
        if block.se is not None:
            _copy_se(block.se, views, p)
        block.project.conv.weight.copy_(views[p + "project.weight"])
        _copy_bn(block.project.bn, views, bufs, p + "project_bn.")
    for layer, h in zip(net.head_pre_pool, spec.head_pre_pool):
        layer.conv.weight.copy_(views[f"{h.name}.conv.weight"])
        if h.bn:
            _copy_bn(layer.bn, views, bufs, f"{h.name}.bn.")
    for layer, h in zip(net.head_post_pool, spec.head_post_pool):
        layer.conv.weight.copy_(views[f"{h.name}.conv.weight"])
        if h.bn:
            _copy_bn(layer.bn, views, bufs, f"{h.name}.bn.")
    net.classifier.weight.copy_(views["classifier.weight"])
    net.classifier.bias.copy_(views["classifier.bias"])
    return net.train(supernet.training)


def export_static(
    supernet: Supernet, arch: Arch, out_dir: str | os.PathLike, *, formats: list[str] | None = None
) -> list[Path]:
    """Write the static network of ``arch``: ``subnet.pt`` (state dict) + ``subnet.json`` (config + arch) for
    ``"torch"``, ``subnet.onnx`` (batch axis dynamic, input ``images`` at the arch's resolution) for ``"onnx"``."""
    formats = formats or ["torch"]
    bad = sorted(set(formats) - {"torch", "onnx"})
    if bad:
        raise ValueError(f"export formats must be 'torch' and/or 'onnx'; got {bad}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = extract_subnet(supernet, arch).eval()
    written = []
    if "torch" in formats:
        torch.save(net.state_dict(), out / "subnet.pt")
        (out / "subnet.json").write_text(json.dumps(net.config, indent=1) + "\n")
        written += [out / "subnet.pt", out / "subnet.json"]
    if "onnx" in formats:
        x = torch.randn(1, 3, arch.resolution, arch.resolution, device=next(net.parameters()).device)
        torch.onnx.export(
            net,
            (x,),
            str(out / "subnet.onnx"),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
        written.append(out / "subnet.onnx")
    return written


def load_static(directory: str | os.PathLike) -> StaticSubnet:
    """Rebuild an exported static network from ``subnet.json`` + ``subnet.pt`` (no supernet needed)."""
    d = Path(directory)
    for name in ("subnet.json", "subnet.pt"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"exported subnet incomplete: {d / name} is missing")
    try:
        config = json.loads((d / "subnet.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{d / 'subnet.json'} is not a JSON file: {err}") from None
    net = build_static(config)
    try:
        state = torch.load(d / "subnet.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged or foreign file
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{d / 'subnet.pt'} is truncated, corrupt or not a state dict ({type(err).__name__}: {first})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{d / 'subnet.pt'} holds a {type(state).__name__}, not a state dict")
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise ValueError(
            f"{d / 'subnet.pt'} does not fit the network {d / 'subnet.json'} describes "
            f"({state_dict_mismatch(net.state_dict(), state)}); were the two files written by one deps export?"
        ) from None
    return net.eval()
