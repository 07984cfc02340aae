"""Training curves of a run as one PNG: the full model's accuracy, the training loss per role, and the LR and ε
schedules, over epochs, with the phases (FM-warmup, shrinking, …) shaded.

It shows what DεpS is about: whether the full model's accuracy holds when the subnets join (the end of FM-warmup) and
how ε ramps from ≈0 to 1. ``deps train`` writes it as ``training.png`` next to ``pareto.png``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["training_series", "plot_training", "read_jsonl"]

_PHASE_COLOURS = ("#dbe9f6", "#fde8d0", "#e2f2dc", "#efe1f3", "#f7f3cf")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL log (``steps.jsonl``, ``epochs.jsonl``); a missing file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_series(
    epochs: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]], steps_per_epoch: int
) -> dict[str, Any]:
    """What :func:`plot_training` draws, in epochs on the x axis (a step's point sits at the end of the step, an
    epoch's at the end of the epoch):

    - ``"top1"``: ``{name: (x, y %)}`` for ``val_top1/full`` and ``train_top1/full``;
    - ``"loss"``: ``{role: (x, y)}``, each epoch's mean training loss per term role (``full``, ``min``, ``uniform``…);
    - ``"lr"``, ``"epsilon"``: ``(x, y)`` from the step log;
    - ``"phases"``: ``[(phase, start, end)]``, contiguous spans of the step log's phases.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}")
    top1: dict[str, tuple[list[float], list[float]]] = {}
    for key, name in (("val_top1/full", "validation"), ("train_top1/full", "training")):
        pts = [(e["epoch"] + 1, 100 * e[key]) for e in epochs if e.get(key) is not None]
        if pts:
            top1[name] = ([p[0] for p in pts], [p[1] for p in pts])
    loss: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for e in epochs:
        for key, v in e.items():
            if key.startswith("train_loss/"):
                xs, ys = loss[key[len("train_loss/") :]]
                xs.append(e["epoch"] + 1)
                ys.append(v)
    xs = [(s["global_step"] + 1) / steps_per_epoch for s in steps]
    phases: list[tuple[str, float, float]] = []
    for s, x in zip(steps, xs):
        if phases and phases[-1][0] == s["phase"]:
            phases[-1] = (s["phase"], phases[-1][1], x)
        else:
            phases.append((s["phase"], phases[-1][2] if phases else 0.0, x))
    return {
        "top1": top1,
        "loss": dict(loss),
        "lr": (xs, [s["lr"] for s in steps]),
        "epsilon": (xs, [s["epsilon"] for s in steps]),
        "phases": phases,
    }


def plot_training(
    epochs: Sequence[dict[str, Any]],
    steps: Sequence[dict[str, Any]],
    steps_per_epoch: int,
    path: str | os.PathLike,
    *,
    title: str = "",
) -> dict[str, Any]:
    """Write the curves of ``epochs`` (``epochs.jsonl`` records) and ``steps`` (``steps.jsonl`` records) as a PNG at
    ``path``; returns :func:`training_series`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = training_series(epochs, steps, steps_per_epoch)
    fig, (acc, loss, sched) = plt.subplots(3, 1, figsize=(7, 7.5), dpi=120, sharex=True)
    colours: dict[str, str] = {}
    for phase, start, end in series["phases"]:
        first = phase not in colours  # the legend names each phase once
        colour = colours.setdefault(phase, _PHASE_COLOURS[len(colours) % len(_PHASE_COLOURS)])
        for ax in (acc, loss, sched):
            ax.axvspan(start, end, color=colour, lw=0, label=phase if first and ax is acc else None)
    for name, (x, y) in series["top1"].items():
        acc.plot(x, y, marker="o", ms=3, label=f"full model, {name}")
    acc.set_ylabel("top-1 (%)")
    acc.legend(fontsize=8, loc="lower right")
    for role, (x, y) in series["loss"].items():
        loss.plot(x, y, marker="o", ms=3, label=role)
    loss.set_ylabel("training loss")
    if series["loss"]:
        loss.legend(fontsize=8, title="term", title_fontsize=8)
    x, y = series["lr"]
    sched.plot(x, y, color="tab:blue", label="lr")
    sched.set_ylabel("learning rate", color="tab:blue")
    eps = sched.twinx()
    x, y = series["epsilon"]
    eps.plot(x, y, color="tab:red", label="ε")
    eps.set_ylabel("ε (subnet weight)", color="tab:red")
    eps.set_ylim(-0.05, 1.05)
    sched.set_xlabel("epoch")
    for ax in (acc, loss, sched):
        ax.grid(alpha=0.3)
    if title:
        acc.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return series
