"""An MLP accuracy predictor over subnet encodings (OFA, Cai et al., ICLR 2020, Sec. 3.3;
``ofa/nas/accuracy_predictor/``).

- :class:`ArchEncoder` — OFA's ``MobileNetArchEncoder`` features: for every block position a one-hot kernel size and
  a one-hot expand ratio (all zeros when the stage's depth skips the block), then — where this module departs from
  OFA, whose encoder leaves depth implicit in the zero blocks — a one-hot depth per stage, then a one-hot resolution
  when the search covers more than one.
- :class:`AccuracyPredictor` — OFA's ``AccuracyPredictor``: three hidden layers of 400 units with ReLU, a bias-free
  linear output, plus a constant ``base_acc`` (the mean accuracy of the training archs), so the network learns the
  deviation from the mean.
- :func:`fit_predictor` — a seeded train/validation split (OFA: 4/5 and 1/5), Adam on the mean squared error, and a
  report of the RMSE on both parts beside the RMSE of the constant ``base_acc`` on the validation part.

Accuracies are fractions in [0, 1]. Every random draw comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn as nn
from torch import Tensor

from deps_core.arch import Arch
from deps_core.spaces.base import SpaceSpec

__all__ = ["ArchEncoder", "AccuracyPredictor", "fit_predictor", "PREDICTOR_FORMAT"]

PREDICTOR_FORMAT = "deps.accuracy_predictor/1"


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _stages(values: Any) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    return tuple((int(first), int(depth), _ints(choices)) for first, depth, choices in values)


@attrs.frozen
class ArchEncoder:
    """Fixed-length 0/1 features of an arch of one space. ``stages``: ``(first_block, max_depth, d_choices)`` each."""

    space: str
    ks_choices: tuple[int, ...] = attrs.field(converter=_ints)
    e_choices: tuple[int, ...] = attrs.field(converter=_ints)
    stages: tuple[tuple[int, int, tuple[int, ...]], ...] = attrs.field(converter=_stages)
    resolutions: tuple[int, ...] = attrs.field(converter=_ints)

    @classmethod
    def for_space(cls, spec: SpaceSpec, resolutions: Sequence[int] | None = None) -> ArchEncoder:
        """The encoder of ``spec``'s choices; ``resolutions`` the searched ones (default: the default resolution)."""
        res = tuple(sorted({int(r) for r in resolutions})) if resolutions else (spec.default_resolution,)
        bad = [r for r in res if r not in spec.resolutions]
        if bad:
            raise ValueError(f"resolutions {bad} are not in {spec.name}'s {list(spec.resolutions)}")
        stages = tuple((s.first_block, s.max_depth, s.d_choices) for s in spec.stages)
        return cls(spec.name, spec.ks_choices, spec.e_choices, stages, res)

    @property
    def n_blocks(self) -> int:
        return sum(depth for _, depth, _ in self.stages)

    @property
    def n_dim(self) -> int:
        per_block = len(self.ks_choices) + len(self.e_choices)
        res = len(self.resolutions) if len(self.resolutions) > 1 else 0
        return self.n_blocks * per_block + sum(len(c) for _, _, c in self.stages) + res

    def check(self, arch: Arch) -> None:
        if arch.space != self.space:
            raise ValueError(f"the predictor encodes archs of space {self.space!r}; got an arch of {arch.space!r}")
        if arch.resolution not in self.resolutions:
            raise ValueError(f"the predictor encodes resolutions {list(self.resolutions)}; got {arch.resolution}")

    def encode(self, arch: Arch) -> Tensor:
        """``[n_dim]`` float32 features of ``arch``."""
        self.check(arch)
        nk, ne = len(self.ks_choices), len(self.e_choices)
        x = torch.zeros(self.n_dim)
        try:
            for (first, _, _), depth in zip(self.stages, arch.d):
                for i in range(first, first + depth):
                    x[i * (nk + ne) + self.ks_choices.index(arch.ks[i])] = 1
                    x[i * (nk + ne) + nk + self.e_choices.index(arch.e[i])] = 1
            offset = self.n_blocks * (nk + ne)
            for (_, _, choices), depth in zip(self.stages, arch.d):
                x[offset + choices.index(depth)] = 1
                offset += len(choices)
        except ValueError:
            raise ValueError(f"{arch} uses a choice outside the predictor's space {self.to_dict()}") from None
        if len(self.resolutions) > 1:
            x[offset + self.resolutions.index(arch.resolution)] = 1
        return x

    def encode_many(self, archs: Sequence[Arch]) -> Tensor:
        """``[N, n_dim]``."""
        return torch.stack([self.encode(a) for a in archs]) if archs else torch.zeros(0, self.n_dim)

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "ks_choices": list(self.ks_choices),
            "e_choices": list(self.e_choices),
            "stages": [[f, d, list(c)] for f, d, c in self.stages],
            "resolutions": list(self.resolutions),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchEncoder:
        return cls(d["space"], d["ks_choices"], d["e_choices"], d["stages"], d["resolutions"])


class AccuracyPredictor(nn.Module):
    """``acc(arch) = base_acc + MLP(encode(arch))``; ``n_layers`` hidden ReLU layers of ``hidden`` units."""

    def __init__(
        self,
        encoder: ArchEncoder,
        *,
        hidden: int = 400,
        n_layers: int = 3,
        base_acc: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if hidden < 1 or n_layers < 1:
            raise ValueError(f"hidden and n_layers must be >= 1; got {hidden}, {n_layers}")
        self.encoder, self.hidden, self.n_layers = encoder, hidden, n_layers
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers += [nn.Linear(encoder.n_dim if i == 0 else hidden, hidden), nn.ReLU()]
        layers.append(nn.Linear(hidden, 1, bias=False))
        self.layers = nn.Sequential(*layers)
        self.register_buffer("base_acc", torch.tensor(float(base_acc)))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default ``nn.Linear`` init (``U(±1/sqrt(fan_in))``), drawn from ``generator``."""
        for m in self.layers:
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.uniform_(-bound, bound, generator=generator)
                if m.bias is not None:
                    m.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, n_dim]`` features → ``[N]`` accuracies."""
        return self.layers(x).squeeze(-1) + self.base_acc

    @torch.no_grad()
    def predict(self, archs: Sequence[Arch]) -> Tensor:
        """``[N]`` predicted accuracies of ``archs``."""
        device = self.base_acc.device
        return self(self.encoder.encode_many(archs).to(device))

    def save(self, path: str | os.PathLike, *, report: dict[str, Any] | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": PREDICTOR_FORMAT,
                "encoder": self.encoder.to_dict(),
                "hidden": self.hidden,
                "n_layers": self.n_layers,
                "state_dict": {k: v.cpu() for k, v in self.state_dict().items()},
                "report": report or {},
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, spec: SpaceSpec | None = None) -> AccuracyPredictor:
        """Read a saved predictor; with ``spec``, refuse one trained on another space or other choices."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"accuracy predictor not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path} is not a readable accuracy predictor ({type(err).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != PREDICTOR_FORMAT:
            raise ValueError(f"{path} is not an accuracy predictor (format {PREDICTOR_FORMAT!r})")
        encoder = ArchEncoder.from_dict(state["encoder"])
        if spec is not None:
            if encoder.space != spec.name:
                raise ValueError(f"{path} predicts archs of space {encoder.space!r}, not {spec.name!r}")
            expected = ArchEncoder.for_space(spec, encoder.resolutions)
            if expected != encoder:
                raise ValueError(
                    f"{path} was trained on other choices of {spec.name} ({encoder.to_dict()}) than the supernet's "
                    f"({expected.to_dict()})"
                )
        net = cls(encoder, hidden=int(state["hidden"]), n_layers=int(state["n_layers"]))
        net.load_state_dict(state["state_dict"])
        net.report = dict(state.get("report") or {})
        return net.eval()


def _rmse(pred: Tensor, target: Tensor) -> float:
    return float(torch.sqrt(torch.mean((pred - target) ** 2))) if len(target) else float("nan")


def fit_predictor(
    archs: Sequence[Arch],
    accuracies: Sequence[float],
    encoder: ArchEncoder,
    *,
    generator: torch.Generator,
    val_fraction: float = 0.2,
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    hidden: int = 400,
    n_layers: int = 3,
    progress: bool = False,
) -> tuple[AccuracyPredictor, dict[str, Any]]:
    """Train a predictor on ``(arch, accuracy)`` pairs; returns it and ``{n_train, n_val, train_rmse, val_rmse,
    baseline_val_rmse}`` (``baseline``: always predicting the training mean ``base_acc``).

    Small batches and a little weight decay: on a few hundred archs the MLP otherwise fits the training part exactly
    and generalizes worse (a 300-arch synthetic test: validation RMSE 0.55 of the baseline's with batch 128 and no
    decay, 0.27 with batch 32 and decay 1e-4).
    """
    if len(archs) != len(accuracies):
        raise ValueError(f"{len(archs)} archs but {len(accuracies)} accuracies")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    n = len(archs)
    n_val = int(round(val_fraction * n))
    if n - n_val < 2:
        raise ValueError(f"fitting a predictor needs at least 2 training archs; got {n} archs, {n_val} held out")
    if val_fraction > 0 and n_val == 0:
        raise ValueError(
            f"val_fraction={val_fraction} of {n} archs holds out none: give more archs, or val_fraction=0 to fit "
            "without a validation RMSE"
        )
    x = encoder.encode_many(archs)
    y = torch.tensor([float(a) for a in accuracies])
    perm = torch.randperm(n, generator=generator)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    base = float(y_train.mean())
    net = AccuracyPredictor(encoder, hidden=hidden, n_layers=n_layers, base_acc=base, generator=generator)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    from tqdm import tqdm

    net.train()
    for _ in tqdm(range(epochs), desc="fitting the accuracy predictor", disable=not progress, dynamic_ncols=True):
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = torch.mean((net(x_train[idx]) - y_train[idx]) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        report = {
            "n_train": len(train_idx),
            "n_val": n_val,
            "base_acc": base,
            "train_rmse": _rmse(net(x_train), y_train),
            "val_rmse": _rmse(net(x_val), y_val),
            "baseline_val_rmse": _rmse(torch.full_like(y_val, base), y_val),
        }
    net.report = report
    return net, report
