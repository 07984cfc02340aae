"""Training curves of a run as one PNG: the full model's accuracy, the training loss per role, and the LR and ε
schedules, over epochs, with the phases (FM-warmup, shrinking, …) shaded.

It shows what DεpS is about: whether the full model's accuracy holds when the subnets join (the end of FM-warmup) and
how ε ramps from ≈0 to 1. ``deps train`` writes it as ``training.png`` next to ``pareto.png``. :func:`plot_runs`
(``deps curves``) overlays several runs' full-model curves against epochs or device-hours: DεpS against OFA or BigNAS
at the same training cost, the paper's comparison.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "training_series",
    "plot_training",
    "read_jsonl",
    "read_run_epochs",
    "read_run_config",
    "compare_series",
    "plot_runs",
]

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
    series = training_series(epochs, steps, steps_per_epoch)
    fig, (acc, loss, sched) = _figure(3, height=7.5)
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
    _save(fig, (acc, loss, sched), path, title)
    return series


def _figure(rows: int, *, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, 1, figsize=(7, height), dpi=120, sharex=True)


def _save(fig, axes, path: str | os.PathLike, title: str) -> None:
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


X_AXES = ("epoch", "device-hours")


def read_run_epochs(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The epoch records of the run in ``run_dir`` (its ``epochs.jsonl``); ``ValueError`` when there are none."""
    path = Path(run_dir) / "epochs.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no epochs.jsonl (not a deps train run directory?)")
    try:
        records = read_jsonl(path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a JSONL log: {err}") from None
    if not records:
        raise ValueError(f"{run_dir}: no finished epoch yet")
    return records


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The config the run in ``run_dir`` was started with (its ``config.json``, as a dict), or ``None`` when it has
    no readable one (then it is compared as a run of its own)."""
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) and isinstance(config.get("method"), dict) else None


def compare_series(runs: dict[str, Sequence[dict[str, Any]]], x: str = "epoch") -> dict[str, dict[str, Any]]:
    """Per run: ``"x"`` (epochs done, or the device-hours spent by the end of each epoch), ``"val_top1"`` and
    ``"train_loss"`` of the full model (``None`` where an epoch has none), and a summary row (``"epochs"``,
    ``"device_hours"``, ``"final_val_top1"``, ``"best_val_top1"``)."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {list(X_AXES)}; got {x!r}")
    out = {}
    for name, epochs in runs.items():
        hours = [e.get("cost", {}).get("device_hours", float("nan")) for e in epochs]
        xs = [e["epoch"] + 1 for e in epochs] if x == "epoch" else hours
        val = [100 * e["val_top1/full"] if e.get("val_top1/full") is not None else None for e in epochs]
        done = [v for v in val if v is not None]
        out[name] = {
            "x": xs,
            "val_top1": val,
            "train_loss": [e.get("train_loss/full") for e in epochs],
            "epochs": epochs[-1]["epoch"] + 1,
            "device_hours": hours[-1],
            "final_val_top1": done[-1] if done else None,
            "best_val_top1": max(done) if done else None,
        }
    return out


def plot_runs(
    runs: dict[str, Sequence[dict[str, Any]]],
    path: str | os.PathLike,
    *,
    x: str = "epoch",
    title: str = "",
    styles: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The full model's validation top-1 and training loss of each run (``epochs.jsonl`` records), overlaid against
    ``x`` (``"epoch"`` or ``"device-hours"``), as a PNG at ``path``; returns :func:`compare_series`. ``styles``: per
    run, matplotlib line settings that replace the defaults (:func:`deps_core.compare.group_styles`: one colour and
    one legend entry per group of repeats)."""
    series = compare_series(runs, x)
    fig, (acc, loss) = _figure(2, height=6)
    for name, s in series.items():
        style = {"marker": "o", "ms": 3, "label": name} | (styles or {}).get(name, {})
        for ax, key in ((acc, "val_top1"), (loss, "train_loss")):
            pts = [(a, b) for a, b in zip(s["x"], s[key]) if b is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], **style)
    acc.set_ylabel("full model, validation top-1 (%)")
    loss.set_ylabel("full model, training loss")
    loss.set_xlabel(x)
    acc.legend(fontsize=8)
    _save(fig, (acc, loss), path, title)
    return series
