"""Finished runs side by side: their Pareto fronts against what their training cost.

This is the DεpS paper's comparison (the same or a better accuracy/MACs front at less training cost than OFA and
BigNAS) as one table and one plot. A run is read from its ``report.json``: a ``deps train`` run directory's (the front
of the final evaluation, the training cost, the config), or a ``deps eval`` output directory's (a front evaluated
again, e.g. with more subnets, with the checkpoint's config and training cost beside it).

Cost is given twice: device-hours (what the paper reports; they depend on the device and, on a shared machine, on
its load) and training MACs (every term's forward and backward on every image, the teacher's forward: a count no
device changes). The first run given is the reference of the ratios. Mean pareto accuracy is an area over the
supernet's MAC range (:func:`deps_core.evaluate.mean_pareto_accuracy`), so it compares runs of one space; where the
ranges, the evaluation data or the devices differ, :func:`compare_notes` says so rather than hiding it in a ratio.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from deps_core.evaluate import ArchResult, plot_pareto

__all__ = [
    "RunReport",
    "read_run_report",
    "run_names",
    "compare_summary",
    "compare_rows",
    "bucket_summary",
    "bucket_rows",
    "compare_notes",
    "plot_fronts",
    "si_count",
]

# the data fields that decide what a final evaluation measured (the val split, its size and resolution, the classes)
EVAL_DATA_FIELDS = (
    "source",
    "val",
    "num_classes",
    "val_resolution",
    "synthetic_classes",
    "synthetic_resolution",
    "synthetic_val_size",
)


@attrs.frozen
class RunReport:
    """What a run's ``report.json`` says about its front and its cost (``None`` where the file does not say)."""

    path: Path
    pareto: dict[str, Any]  # report_to_json's form: macs_range, buckets, mean_pareto_accuracy, max, min
    config: dict[str, Any] | None
    cost: dict[str, Any] | None
    epochs: int | None  # epochs trained

    @property
    def method(self) -> str:
        return self.config["method"]["name"] if self.config else "-"

    @property
    def space(self) -> str | None:
        return self.config["model"]["space"] if self.config else None

    def bucket_results(self) -> list[dict[str, Any]]:
        """The buckets with their best subnet as :class:`~deps_core.evaluate.ArchResult` (for the plot)."""
        return [b | {"best": ArchResult.from_dict(b["best"])} for b in self.pareto["buckets"]]


def read_run_report(path: str | os.PathLike) -> RunReport:
    """The report of a ``deps train`` run directory or a ``deps eval`` output directory; ``ValueError`` naming the
    problem when there is none or it holds no Pareto front."""
    folder = Path(path)
    file = folder / "report.json"
    if not file.is_file():
        raise ValueError(f"{folder}: no report.json (not a finished deps train run, nor a deps eval output)")
    try:
        report = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not JSON: {err}") from None
    if not isinstance(report, dict):
        raise ValueError(f"{file} is not a deps report")
    if "buckets" in report:  # deps eval's
        pareto, epochs = report, report.get("trained_epochs")
    elif "pareto" in report:  # deps train's
        pareto, epochs = report["pareto"], len(report.get("history", [])) or None
    elif "cost" in report:
        raise ValueError(
            f"{folder}: its report has no Pareto front (the run's final evaluation did not run, run.eval_archs=0?); "
            f"`deps eval --checkpoint {folder}` evaluates it into {folder / 'eval'}"
        )
    else:
        raise ValueError(f"{file} is not a deps report")
    if not pareto.get("buckets"):
        raise ValueError(f"{file}: its Pareto front has no subnet")
    return RunReport(folder, pareto, report.get("config"), report.get("cost"), epochs)


def run_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short names for runs: their folder names, or the whole paths where those repeat (``runs/a/eval``,
    ``runs/b/eval``); ``ValueError`` when a path is given twice."""
    names = [Path(p).name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise ValueError(f"a run is given twice: {[str(p) for p in paths]}")
    return names


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _top1(result: dict[str, Any] | None) -> float | None:
    return None if result is None else result["top1"]


def si_count(v: float | None) -> str:
    """``4.32T`` for 4.32e12 (prefixes M to E); ``-`` for ``None``."""
    if v is None:
        return "-"
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if v >= scale:
            return f"{v / scale:.3g}{prefix}"
    return f"{v:.3g}"


def _ratio(v: float | None, ref: float | None) -> float | None:
    return v / ref if v is not None and ref else None


def compare_summary(runs: dict[str, RunReport]) -> list[dict[str, Any]]:
    """Per run, the figures of :func:`compare_rows` as numbers (``None`` where the report does not say): method,
    epochs, minutes of training per epoch (wall time, the paper's "average time per epoch"), device-hours and
    training MACs with their ratios to the first run's, mean pareto accuracy and its difference to the first run's,
    the largest and the smallest subnet's top-1 (accuracies as fractions)."""

    def cost(r: RunReport, key: str) -> float | None:
        return (r.cost or {}).get(key)

    first = next(iter(runs.values()))
    ref_hours, ref_macs = cost(first, "device_hours"), cost(first, "train_macs")
    ref_mpa = first.pareto["mean_pareto_accuracy"]
    out = []
    for name, r in runs.items():
        hours, macs, seconds = cost(r, "device_hours"), cost(r, "train_macs"), cost(r, "train_seconds")
        mpa = r.pareto["mean_pareto_accuracy"]
        out.append(
            {
                "run": name,
                "path": str(r.path),
                "method": r.method,
                "epochs": r.epochs,
                "minutes_per_epoch": seconds / 60 / r.epochs if seconds is not None and r.epochs else None,
                "device_hours": hours,
                "hours_ratio": _ratio(hours, ref_hours),
                "train_macs": macs,
                "macs_ratio": _ratio(macs, ref_macs),
                "mean_pareto_accuracy": mpa,
                "mean_pareto_delta": mpa - ref_mpa,
                "largest_top1": _top1(r.pareto.get("max")),
                "smallest_top1": _top1(r.pareto.get("min")),
            }
        )
    return out


def compare_rows(runs: dict[str, RunReport]) -> list[list[str]]:
    """:func:`compare_summary` as table rows under :data:`COMPARE_HEADER`."""

    def num(v: float | None, fmt: str, unit: str = "") -> str:
        return "-" if v is None else format(v, fmt) + unit

    return [
        [
            s["run"],
            s["method"],
            num(s["epochs"], "d"),
            num(s["minutes_per_epoch"], ".3g"),
            num(s["device_hours"], ".4g"),
            num(s["hours_ratio"], ".2f", "×"),
            si_count(s["train_macs"]),
            num(s["macs_ratio"], ".2f", "×"),
            _pct(s["mean_pareto_accuracy"]),
            f"{100 * s['mean_pareto_delta']:+.2f}",
            _pct(s["largest_top1"]),
            _pct(s["smallest_top1"]),
        ]
        for s in compare_summary(runs)
    ]


COMPARE_HEADER = [
    "run",
    "method",
    "epochs",
    "min/epoch",
    "device-hours",
    "× hours",
    "train MACs",
    "× MACs",
    "mean pareto %",
    "Δ pp",
    "largest %",
    "smallest %",
]


def _bucket_count(pareto: dict[str, Any]) -> int:
    lo, hi = pareto["macs_range"]
    b = pareto["buckets"][0]
    return round((hi - lo) / (b["hi"] - b["lo"]))


def bucket_summary(runs: dict[str, RunReport]) -> dict[str, Any] | None:
    """``{"ranges": [(lo, hi) MACs per bucket], "top1": {run: [best top-1 or None per bucket]}}``, or ``None`` when the
    runs' MAC ranges or bucket counts differ (their buckets are not the same intervals)."""
    first = next(iter(runs.values())).pareto
    n = _bucket_count(first)
    if any(r.pareto["macs_range"] != first["macs_range"] or _bucket_count(r.pareto) != n for r in runs.values()):
        return None
    lo, hi = first["macs_range"]
    width = (hi - lo) / n
    top1 = {}
    for name, r in runs.items():
        best = {b["bucket"]: b["best"]["top1"] for b in r.pareto["buckets"]}
        top1[name] = [best.get(i) for i in range(n)]
    return {"ranges": [(lo + i * width, lo + (i + 1) * width) for i in range(n)], "top1": top1}


def bucket_rows(runs: dict[str, RunReport]) -> tuple[list[str], list[list[str]]] | None:
    """``(header, rows)``: :func:`bucket_summary` as a table (MMACs ranges; ``-`` where a bucket had no subnet)."""
    summary = bucket_summary(runs)
    if summary is None:
        return None
    header = ["run"] + [f"{lo / 1e6:.4g}-{hi / 1e6:.4g}" for lo, hi in summary["ranges"]]
    return header, [[name] + [_pct(v) for v in top1] for name, top1 in summary["top1"].items()]


def compare_notes(runs: dict[str, RunReport]) -> list[str]:
    """What makes the runs' figures not directly comparable, one line each (none when nothing does)."""
    notes = []
    ranges = {name: tuple(r.pareto["macs_range"]) for name, r in runs.items()}
    if len(set(ranges.values())) > 1:
        listed = ", ".join(f"{n}: {lo / 1e6:.4g}-{hi / 1e6:.4g} MMACs" for n, (lo, hi) in ranges.items())
        notes.append(f"mean pareto accuracy is an area over each run's own MAC range, and these differ ({listed})")
    configs = {name: r.config for name, r in runs.items() if r.config}
    if len(configs) < len(runs):
        missing = [n for n in runs if n not in configs]
        notes.append(f"no config in the report of {', '.join(missing)}: its method and data are unknown")
    if configs:
        first_name, first = next(iter(configs.items()))
        for name, config in configs.items():
            fields = [f for f in EVAL_DATA_FIELDS if config["data"].get(f) != first["data"].get(f)]
            if fields:
                what = ", ".join(f"data.{f} {config['data'].get(f)!r} (not {first['data'].get(f)!r})" for f in fields)
                notes.append(f"{name} was evaluated on other data than {first_name}: {what}")
    devices = {name: (r.cost or {}).get("device_name") for name, r in runs.items()}
    named = {n: d for n, d in devices.items() if d}
    if len(set(named.values())) > 1:
        listed = ", ".join(f"{n}: {d}" for n, d in named.items())
        notes.append(f"device-hours of different devices ({listed})")
    if len(named) < len(devices) and len(runs) > 1:
        unknown = [n for n, d in devices.items() if not d]
        notes.append(f"the device of {', '.join(unknown)} is not recorded: compare its device-hours with care")
    return notes


def plot_fronts(runs: dict[str, RunReport], path: str | os.PathLike) -> None:
    """The runs' bucket-best subnets, accuracy against MACs, overlaid, as a PNG at ``path``."""

    def label(name: str, r: RunReport) -> str:
        about = [r.method] if r.method not in (name, "-") else []
        if r.cost:
            about.append(f"{r.cost['device_hours']:.3g} device-h")
        return f"{name} ({', '.join(about)})" if about else name

    spaces = sorted({r.space for r in runs.values() if r.space})
    plot_pareto({label(n, r): r.bucket_results() for n, r in runs.items()}, path, title=", ".join(spaces))
