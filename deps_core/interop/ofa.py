"""OFA state dicts (``OFAMobileNetV3`` / ``OFAProxylessNASNets`` of mit-han-lab/once-for-all, also written by the DεpS
code) to and from our supernet.

OFA names the same tensors differently (``blocks.{i+1}.conv.inverted_bottleneck.conv.conv.weight`` for our
``blocks.{i}.expand.weight``, ``...depth_conv.conv.7to5_matrix`` for ``...dw.m7to5``, its fixed first block is its
``blocks.0``). Loading accepts the usual wrappers of published checkpoints: a ``{"state_dict": ...}`` dict, a
``module.`` prefix (DataParallel / DDP) and the older ``mobile_inverted_conv`` spelling of ``conv``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import torch
from torch import Tensor

from deps_core.supernet import Supernet

__all__ = ["ofa_key_map", "to_ofa_state_dict", "load_ofa_state_dict", "normalize_ofa_keys"]

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(ours: str, theirs: str) -> dict[str, str]:
    return {f"{ours}.{k}": f"{theirs}.{k}" for k in _BN_KEYS}


def ofa_key_map(supernet: Supernet) -> dict[str, str]:
    """Our state-dict key → OFA's, for every entry of ``supernet.state_dict()``."""
    spec = supernet.spec
    out = {"stem.conv.weight": "first_conv.conv.weight", **_bn("stem.bn", "first_conv.bn")}
    first = "blocks.0.conv"
    out["first.dw.weight"] = f"{first}.depth_conv.conv.weight"
    out |= _bn("first.dw_bn", f"{first}.depth_conv.bn")
    if spec.first.se:
        for part in ("reduce", "expand"):
            for t in ("weight", "bias"):
                out[f"first.se.{part}.{t}"] = f"{first}.depth_conv.se.fc.{part}.{t}"
    out["first.project.weight"] = f"{first}.point_linear.conv.weight"
    out |= _bn("first.project_bn", f"{first}.point_linear.bn")
    for b in spec.blocks:
        ours, theirs = f"blocks.{b.index}", f"blocks.{b.index + 1}.conv"
        out[f"{ours}.expand.weight"] = f"{theirs}.inverted_bottleneck.conv.conv.weight"
        out |= _bn(f"{ours}.expand_bn", f"{theirs}.inverted_bottleneck.bn.bn")
        out[f"{ours}.dw.weight"] = f"{theirs}.depth_conv.conv.conv.weight"
        for name, _ in supernet.blocks[b.index].dw.named_parameters():
            if name.startswith("m"):  # m7to5 -> 7to5_matrix
                out[f"{ours}.dw.{name}"] = f"{theirs}.depth_conv.conv.{name[1:]}_matrix"
        out |= _bn(f"{ours}.dw_bn", f"{theirs}.depth_conv.bn.bn")
        if b.se:
            for part in ("reduce", "expand"):
                for t in ("weight", "bias"):
                    out[f"{ours}.se.{part}.{t}"] = f"{theirs}.depth_conv.se.fc.{part}.{t}"
        out[f"{ours}.project.weight"] = f"{theirs}.point_linear.conv.conv.weight"
        out |= _bn(f"{ours}.project_bn", f"{theirs}.point_linear.bn.bn")
    for layer in spec.head_pre_pool + spec.head_post_pool:
        theirs = f"{layer.name}_layer"
        out[f"{layer.name}.conv.weight"] = f"{theirs}.conv.weight"
        if layer.bn:
            out |= _bn(f"{layer.name}.bn", f"{theirs}.bn")
    out["classifier.weight"] = "classifier.linear.weight"
    out["classifier.bias"] = "classifier.linear.bias"
    expected = set(supernet.state_dict())
    if set(out) != expected:  # the map is derived from the spec; a mismatch is a bug here, not bad input
        raise RuntimeError(f"OFA key map out of sync with the supernet: {sorted(set(out) ^ expected)[:8]}")
    return out


def normalize_ofa_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Unwrap ``{"state_dict": ...}``, drop a ``module.`` prefix, spell ``mobile_inverted_conv`` as ``conv``."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        out[key.replace(".mobile_inverted_conv.", ".conv.")] = value
    return out


def to_ofa_state_dict(supernet: Supernet) -> dict[str, Tensor]:
    """Our supernet's state dict under OFA's key names (loads into the matching ``OFAMobileNetV3`` etc.)."""
    ours = supernet.state_dict()
    return {theirs: ours[k].detach().clone() for k, theirs in ofa_key_map(supernet).items()}


def _read(source: Mapping[str, Tensor] | str | os.PathLike) -> Mapping[str, Tensor]:
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"OFA checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's several-line advice, condensed to what holds here
        raise ValueError(
            f"cannot read OFA checkpoint {path} with a weights-only load: it is damaged, not a PyTorch file, or holds "
            "objects other than tensors; a file you trust can be read with torch.load(path, weights_only=False) "
            "and its state dict passed to load_ofa_state_dict"
        ) from None
    except Exception as err:  # a truncated archive: name it
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot read OFA checkpoint {path}: {type(err).__name__}: {first}") from None


@torch.no_grad()
def load_ofa_state_dict(supernet: Supernet, source: Mapping[str, Tensor] | str | os.PathLike) -> None:
    """Load an OFA-format state dict (or a checkpoint file holding one) into ``supernet``, in place.

    Every key must match and every shape agree; otherwise ``ValueError`` lists the missing, unexpected and
    mis-shaped keys and nothing is changed.
    """
    state = normalize_ofa_keys(_read(source))
    key_map = ofa_key_map(supernet)
    ours = supernet.state_dict()
    theirs_expected = {v: k for k, v in key_map.items()}
    missing = sorted(k for k in theirs_expected if k not in state)
    unexpected = sorted(k for k in state if k not in theirs_expected)
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs supernet {tuple(ours[theirs_expected[k]].shape)}"
        for k in theirs_expected
        if k in state and tuple(state[k].shape) != tuple(ours[theirs_expected[k]].shape)
    )
    if missing or unexpected or shapes:
        lines = [f"OFA state dict does not fit {supernet.spec.name} ({supernet.num_classes} classes):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
                lines.append(f"  {title}: {shown}")
        if any(k.endswith("_matrix") for k in missing) and not unexpected:
            lines.append(
                "  (the checkpoint has no kernel-transform matrices: build the supernet with kernel_transform=False)"
            )
        if any(k.endswith("_matrix") for k in unexpected) and not missing:
            lines.append(
                "  (the checkpoint has kernel-transform matrices: build the supernet with kernel_transform=True)"
            )
        raise ValueError("\n".join(lines))
    for theirs, ours_key in theirs_expected.items():
        ours[ours_key].copy_(state[theirs])
