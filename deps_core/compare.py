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

Runs that differ only in their seed (and in how they were logged and where they were written) are repeats of one
experiment: :func:`group_runs` gathers them, and :func:`group_summary` gives each group's mean and spread and its
difference to the first group with a permutation test, so that a difference between methods can be read
against the spread between seeds (a single seed of a short run can differ from the next by more than two methods do).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from deps_core.config import ExperimentConfig
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
    "REPEAT_FIELDS",
    "group_runs",
    "group_configs",
    "group_summary",
    "group_rows",
    "group_bucket_rows",
    "permutation_p",
    "group_styles",
    "group_notes",
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


def _num(v: float | None, fmt: str, unit: str = "") -> str:
    return "-" if v is None else format(v, fmt) + unit


def _p_value(p: float | None) -> str:
    """Three decimals, or two significant digits below 0.001 (12 and 8 runs apart: 2/125,970 = 1.6e-05, not 0.000)."""
    return "-" if p is None else f"{p:.3f}" if p >= 0.001 else f"{p:.2g}"


def compare_rows(runs: dict[str, RunReport]) -> list[list[str]]:
    """:func:`compare_summary` as table rows under :data:`COMPARE_HEADER`."""
    return [
        [
            s["run"],
            s["method"],
            _num(s["epochs"], "d"),
            _num(s["minutes_per_epoch"], ".3g"),
            _num(s["device_hours"], ".4g"),
            _num(s["hours_ratio"], ".2f", "×"),
            si_count(s["train_macs"]),
            _num(s["macs_ratio"], ".2f", "×"),
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


def plot_fronts(
    runs: dict[str, RunReport], path: str | os.PathLike, groups: dict[str, list[str]] | None = None
) -> None:
    """The runs' bucket-best subnets, accuracy against MACs, overlaid, as a PNG at ``path``. With ``groups``
    (:func:`group_runs`) where a group holds several runs, each group has one colour and one legend entry (its name
    and run count)."""

    def label(name: str, r: RunReport) -> str:
        about = [r.method] if r.method not in (name, "-") else []
        if r.cost:
            about.append(f"{r.cost['device_hours']:.3g} device-h")
        return f"{name} ({', '.join(about)})" if about else name

    spaces = sorted({r.space for r in runs.values() if r.space})
    labels = {n: label(n, r) for n, r in runs.items()}
    styles = group_styles({g: [labels[m] for m in members] for g, members in (groups or {}).items()})
    fronts = {labels[n]: r.bucket_results() for n, r in runs.items()}
    plot_pareto(fronts, path, title=", ".join(spaces), styles=styles)


def group_styles(groups: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Per plotted line (the names in ``groups``' lists), matplotlib settings that draw each group in one colour with
    one legend entry (its name and run count); none when no group holds several runs (each line keeps its own)."""
    if not any(len(m) > 1 for m in groups.values()):
        return {}
    styles = {}
    for i, (group, members) in enumerate(groups.items()):
        for j, m in enumerate(members):
            runs = f"{len(members)} run{'s' if len(members) > 1 else ''}"
            styles[m] = {"color": f"C{i % 10}", "alpha": 0.75, "label": f"{group} ({runs})" if j == 0 else "_" + m}
    return styles


# run fields that change neither what is trained nor what is measured: runs whose configs differ only in these are
# repeats of one experiment (the seed is the one that matters)
REPEAT_FIELDS = ("seed", "out_dir", "progress", "tensorboard", "wandb", "log_every", "checkpoint_every")


def _experiment(config: dict[str, Any]) -> dict[str, Any]:
    """The config as this version reads it (a field added since the run was written takes its default, so a run
    predating ``optim.schedule`` groups with one that has it at ``cosine``), less :data:`REPEAT_FIELDS`; a config this
    version cannot read (a later version's field) is compared as written."""
    try:
        config = ExperimentConfig.from_dict(config).to_dict()
    except (ValueError, TypeError):
        pass
    return {s: {k: v for k, v in f.items() if s != "run" or k not in REPEAT_FIELDS} for s, f in config.items()}


def _flat(config: dict[str, Any]) -> dict[str, str]:
    return {f"{s}.{k}": json.dumps(v, sort_keys=True) for s, f in config.items() for k, v in f.items()}


def group_runs(runs: dict[str, RunReport]) -> dict[str, list[str]]:
    """The runs by experiment, in the order of their first run: ``{group name: [run names]}``
    (:func:`group_configs` of the runs' configs)."""
    return group_configs({name: r.config for name, r in runs.items()})


def group_configs(configs: dict[str, dict[str, Any] | None]) -> dict[str, list[str]]:
    """Runs (``{run name: its config as a dict, or None}``) by experiment, in the order of their first run:
    ``{group name: [run names]}``. Runs whose configs agree but for :data:`REPEAT_FIELDS` (the seed) form one group;
    a run without a config is a group of its own. A group is named by its method, and where two groups share a
    method, by the config fields in which the groups differ too (``bignas method.epochs=6``); where that does not tell
    them apart, by its first run's name."""
    keyed: dict[str, list[str]] = {}
    experiments: dict[str, dict[str, Any] | None] = {}
    for name, config in configs.items():
        experiment = _experiment(config) if config else None
        key = json.dumps(experiment, sort_keys=True) if experiment else f"run:{name}"
        keyed.setdefault(key, []).append(name)
        experiments.setdefault(key, experiment)
    flats = {key: _flat(c) for key, c in experiments.items() if c is not None}
    fields = sorted({f for flat in flats.values() for f in flat} - {"method.name"})
    method = {key: c["method"]["name"] if c else "-" for key, c in experiments.items()}
    labels = {}
    for key, members in keyed.items():
        same_method = [k for k in keyed if method[k] == method[key]]
        if key not in flats or len(same_method) == 1:
            labels[key] = method[key] if key in flats else members[0]
            continue
        own = [f for f in fields if len({flats[k].get(f) for k in same_method if k in flats}) > 1]
        shown = {f: json.loads(flats[key][f]) if f in flats[key] else "-" for f in own}  # strings unquoted
        labels[key] = " ".join(
            [method[key]] + [f"{f}={v if isinstance(v, str) else json.dumps(v)}" for f, v in shown.items()]
        )
    if len(set(labels.values())) < len(labels):
        labels = {key: members[0] for key, members in keyed.items()}
    return {labels[key]: members for key, members in keyed.items()}


def permutation_p(
    a: Sequence[float], b: Sequence[float], max_splits: int = 200_000, samples: int = 100_000, seed: int = 0
) -> float | None:
    """Two-sided permutation test of a difference in means: the fraction of the ways to split ``a + b`` into groups
    of their sizes whose difference in means is at least the observed one (in size). ``None`` when either group has
    fewer than 2 values. With 4 and 4 values the smallest possible p is 2/70 ≈ 0.029.

    Exact (every split enumerated) up to ``max_splits`` splits (10 and 10 values: 184,756). Beyond, from ``samples``
    splits drawn at random by a generator seeded with ``seed`` (so the same values give the same p), counting the
    observed split as one of them: ``(hits + 1) / (samples + 1)``, never 0, within about ``2·sqrt(p/samples)`` of the
    exact value (12 and 12 values: 2,704,156 splits; 0.03 s). ``samples=0`` gives ``None`` there instead."""
    if len(a) < 2 or len(b) < 2:
        return None
    values, n, total = list(a) + list(b), len(a), sum(a) + sum(b)
    observed = abs(sum(a) / n - sum(b) / len(b))
    tol = 1e-12 * max(1.0, max(abs(v) for v in values))
    splits = math.comb(len(values), n)
    if splits <= max_splits:
        hits = 0
        for chosen in itertools.combinations(range(len(values)), n):
            s = sum(values[i] for i in chosen)
            hits += abs(s / n - (total - s) / len(b)) >= observed - tol
        return hits / splits
    if samples <= 0:
        return None
    rng, v, hits, done = np.random.default_rng(seed), np.asarray(values, dtype=np.float64), 0, 0
    while done < samples:
        rows = min(samples - done, 10_000)
        chosen = np.argpartition(rng.random((rows, len(v))), n - 1, axis=1)[:, :n]  # n random indices per row
        s = v[chosen].sum(axis=1)
        hits += int((np.abs(s / n - (total - s) / len(b)) >= observed - tol).sum())
        done += rows
    return (hits + 1) / (samples + 1)


def _stats(values: list[float]) -> dict[str, float | None]:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if len(known) == len(values) and known else None


def group_summary(runs: dict[str, RunReport], groups: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Per group of :func:`group_runs` (or the given ``{name: [run names]}``): its runs and seeds, the mean pareto
    accuracy's mean, sample standard deviation (``None`` for one run), minimum and maximum, the difference of its mean
    to the first group's with the standard error of that difference (Welch's, ``None`` unless both groups have two
    runs or more) and :func:`permutation_p`; the means of the training MACs, device-hours, epochs and the largest and
    smallest subnet's top-1, and the ratios of the cost means to the first group's (``None`` where a report does not
    say)."""
    groups = group_runs(runs) if groups is None else groups
    summaries = {s["run"]: s for s in compare_summary(runs)}
    out = []
    first: dict[str, Any] | None = None
    for name, members in groups.items():
        rows = [summaries[m] for m in members]
        mpa = [s["mean_pareto_accuracy"] for s in rows]
        g: dict[str, Any] = {
            "group": name,
            "runs": list(members),
            "seeds": [(runs[m].config or {}).get("run", {}).get("seed") for m in members],
            "method": runs[members[0]].method,
            "epochs": _mean([s["epochs"] for s in rows]),
            "train_macs": _mean([s["train_macs"] for s in rows]),
            "device_hours": _mean([s["device_hours"] for s in rows]),
            "mean_pareto_accuracy": _stats(mpa),
            "largest_top1": _mean([s["largest_top1"] for s in rows]),
            "smallest_top1": _mean([s["smallest_top1"] for s in rows]),
        }
        if first is None:
            first, ref = g, mpa
        g["macs_ratio"] = _ratio(g["train_macs"], first["train_macs"])
        g["hours_ratio"] = _ratio(g["device_hours"], first["device_hours"])
        g["delta"] = g["mean_pareto_accuracy"]["mean"] - first["mean_pareto_accuracy"]["mean"]
        both = len(mpa) > 1 and len(ref) > 1 and g is not first
        g["delta_se"] = (
            math.sqrt(statistics.variance(mpa) / len(mpa) + statistics.variance(ref) / len(ref)) if both else None
        )
        g["p_permutation"] = permutation_p(mpa, ref) if g is not first else None
        out.append(g)
    return out


GROUP_HEADER = [
    "group",
    "runs",
    "seeds",
    "epochs",
    "train MACs",
    "× MACs",
    "device-hours",
    "× hours",
    "mean pareto %",
    "min-max %",
    "Δ pp",
    "p",
    "largest %",
    "smallest %",
]


def group_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    """:func:`group_summary` as table rows under :data:`GROUP_HEADER`: mean pareto accuracy as mean ± sd, its
    difference to the first group as Δ ± its standard error, ``p`` the permutation test's."""
    rows = []
    for i, g in enumerate(summary):
        m = g["mean_pareto_accuracy"]
        spread = "" if m["sd"] is None else f" ± {100 * m['sd']:.2f}"
        delta = (
            ""
            if i == 0
            else f"{100 * g['delta']:+.2f}" + ("" if g["delta_se"] is None else f" ± {100 * g['delta_se']:.2f}")
        )
        rows.append(
            [
                g["group"],
                str(len(g["runs"])),
                ",".join("-" if s is None else str(s) for s in g["seeds"]),
                _num(g["epochs"], ".3g"),
                si_count(g["train_macs"]),
                _num(g["macs_ratio"], ".2f", "×"),
                _num(g["device_hours"], ".4g"),
                _num(g["hours_ratio"], ".2f", "×"),
                f"{100 * m['mean']:.2f}{spread}",
                f"{100 * m['min']:.2f}-{100 * m['max']:.2f}",
                delta or "-",
                _p_value(g["p_permutation"]),
                _pct(g["largest_top1"]),
                _pct(g["smallest_top1"]),
            ]
        )
    return rows


def group_bucket_rows(
    runs: dict[str, RunReport], groups: dict[str, list[str]]
) -> tuple[list[str], list[list[str]]] | None:
    """``(header, rows)``: per group, the mean over its runs of the best top-1 in each MAC bucket (over the runs that
    have a subnet there, their count in brackets where that is not all of them); ``None`` when the runs' buckets
    differ (see :func:`bucket_summary`)."""
    summary = bucket_summary(runs)
    if summary is None:
        return None
    header = ["group"] + [f"{lo / 1e6:.4g}-{hi / 1e6:.4g}" for lo, hi in summary["ranges"]]
    rows = []
    for name, members in groups.items():
        cells = []
        for i in range(len(summary["ranges"])):
            known = [summary["top1"][m][i] for m in members if summary["top1"][m][i] is not None]
            cell = _pct(statistics.fmean(known)) if known else "-"
            cells.append(cell if len(known) in (0, len(members)) else f"{cell} ({len(known)})")
        rows.append([name] + cells)
    return header, rows


def group_notes(summary: list[dict[str, Any]]) -> list[str]:
    """What limits the reading of :func:`group_summary`, one line each: a group of one run beside groups of several
    (its spread is unknown), a seed repeated within a group."""
    notes = []
    if any(len(g["runs"]) > 1 for g in summary):
        for g in summary:
            if len(g["runs"]) == 1:
                notes.append(
                    f"{g['group']} has one run: how far its mean pareto accuracy moves with the seed is unknown"
                )
    for g in summary:
        repeated = sorted({s for s in g["seeds"] if s is not None and g["seeds"].count(s) > 1})
        if repeated:
            notes.append(
                f"{g['group']} repeats run.seed {', '.join(map(str, repeated))}: such runs differ only where the "
                "device, the thread count or the library versions change the order of floating-point sums"
            )
    return notes
