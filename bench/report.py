"""Markdown tables for bench/RESULTS.md from pytest-benchmark's JSON (``--benchmark-json``).

    python bench/report.py step.json                                # print the tables
    python bench/report.py step.json --update bench/RESULTS.md      # replace the section between its markers

One table per benchmark group: a row per provider (``extra_info["provider"]``, else the test's parameter) with the
median, the interquartile range and the rounds, and the ratio of each median to the reference row's (``deps`` when
present, else ``--reference``, else the first row): "× ref" > 1 means slower than the reference. A benchmark whose
rounds ran several providers in turn (``extra_info["interleaved"]``: provider → its time per round) gives a row per
provider, its ratio the median of the per-round ratios to the first of them (drift between rounds cancels). Rows whose
``extra_info`` carries ``k`` with one provider also get a least-squares line ``t = a + b·k`` with its R² (the
"step time linear in k" goal) and, with ``plan_mmacs``, a line in the plan's MACs; a ``gbps`` entry is shown as
achieved bandwidth. The heading of each section names the machine, date and versions from the JSON, so a table never
loses where it was measured.

With ``--update FILE --section NAME`` the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in FILE
is replaced (the markers are appended at the end when absent); the rest of the file is kept as written by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["load", "group_tables", "linear_fit", "render", "update_section", "main"]

REFERENCE = "deps"
SHOWN_EXTRA = ("terms", "plan_mmacs", "step_mmacs", "mac_ratio", "gbps", "roofline", "peak_mib")


class ReportError(ValueError):
    pass


def load(path: str | Path) -> dict[str, Any]:
    """A pytest-benchmark JSON file; ``ReportError`` naming the file if it is missing or not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file (write one with pytest --benchmark-json={path})") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{path}: not a pytest-benchmark result (no 'benchmarks' list)")
    return data


def _provider(bench: dict[str, Any]) -> str:
    extra = bench.get("extra_info") or {}
    if "provider" in extra and "k" in extra and extra.get("phase") == "k_sweep":
        return f"{extra['provider']} k={extra['k']}"
    if "provider" in extra:
        return str(extra["provider"])
    return str(bench.get("param") or bench.get("name"))


def _ops(bench: dict[str, Any]) -> int:
    """Passes per timed call (``extra_info["ops_per_call"]``, default 1): every time shown is per pass."""
    ops = (bench.get("extra_info") or {}).get("ops_per_call", 1)
    if not isinstance(ops, int) or ops < 1:
        raise ReportError(f"{bench.get('name')}: ops_per_call must be a positive integer; got {ops!r}")
    return ops


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b·x``: returns ``(a, b, R²)``."""
    n = len(xs)
    if n < 2:
        raise ReportError("a linear fit needs at least two points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def _fmt_time(seconds: float) -> str:
    if abs(seconds) >= 1.0:
        return f"{seconds:,.3f} s"
    if abs(seconds) >= 1e-3:
        return f"{seconds * 1e3:,.2f} ms"
    return f"{seconds * 1e6:,.1f} µs"


def _interleaved_rows(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """A benchmark whose timed round ran several providers in turn (``extra_info["interleaved"]``: provider → its
    time in each round): a row per provider, its ratio the median of its per-round ratios to the first provider's;
    ``extra_info["per_provider"]`` (provider → extra fields) adds each row's own fields."""
    times = bench["extra_info"]["interleaved"]
    if not isinstance(times, dict) or not times:
        raise ReportError(f"{bench.get('name')}: extra_info['interleaved'] must map providers to their round times")
    if not all(isinstance(t, list) and t for t in times.values()) or len({len(t) for t in times.values()}) != 1:
        raise ReportError(f"{bench.get('name')}: extra_info['interleaved'] needs one time per round for every provider")
    per_provider = bench["extra_info"].get("per_provider") or {}
    extra = {k: v for k, v in bench["extra_info"].items() if k not in ("interleaved", "provider", "per_provider")}
    first = list(times.values())[0]
    rows = []
    for provider, t in times.items():
        q1, med, q3 = statistics.quantiles(t, n=4, method="inclusive") if len(t) > 1 else (t[0],) * 3
        ratio = statistics.median(a / b for a, b in zip(t, first))
        own = {**extra, **per_provider.get(provider, {})}
        rows.append(
            {"provider": provider, "median": med, "iqr": q3 - q1, "rounds": len(t), "extra": own, "ratio": ratio}
        )
    return rows


def group_tables(data: dict[str, Any], reference: str | None = None) -> list[dict[str, Any]]:
    """Per group: rows (provider, median, iqr, rounds, ratio to the reference, extras) and an optional k-fit."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench.get("group") or bench["name"], []).append(bench)
    out = []
    for name, benches in groups.items():
        rows = []
        for b in benches:
            extra = b.get("extra_info") or {}
            if "interleaved" in extra:
                rows += _interleaved_rows(b)
                continue
            rows.append(
                {
                    "provider": _provider(b),
                    "median": b["stats"]["median"] / _ops(b),
                    "iqr": b["stats"].get("iqr", 0.0) / _ops(b),
                    "rounds": b["stats"]["rounds"],
                    "extra": extra,
                }
            )
        names = [r["provider"] for r in rows]
        ref = next((n for n in (REFERENCE, reference) if n in names), names[0])
        ref_median = rows[names.index(ref)]["median"]
        for r in rows:
            r["ratio"] = r.get("ratio", r["median"] / ref_median)
        table: dict[str, Any] = {"group": name, "reference": ref, "rows": rows, "fit": None, "mac_fit": None}
        ks = [r["extra"].get("k") for r in rows]
        providers = {r["extra"].get("provider") for r in rows}
        if len(rows) > 2 and all(isinstance(k, int | float) for k in ks) and len(providers) == 1:
            table["fit"] = linear_fit([float(k) for k in ks], [r["median"] for r in rows])
            macs = [r["extra"].get("plan_mmacs") for r in rows]
            if all(isinstance(m, int | float) for m in macs):  # sampled subnets differ in size: time vs work too
                table["mac_fit"] = linear_fit([float(m) for m in macs], [r["median"] for r in rows])
        out.append(table)
    return out


def _heading(data: dict[str, Any]) -> str:
    machine = data.get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw") or machine.get("processor") or "?"
    devices = sorted(
        {str(b["extra_info"]["device"]) for b in data["benchmarks"] if (b.get("extra_info") or {}).get("device")}
    )
    torch_v = sorted({str(b["extra_info"]["torch"]) for b in data["benchmarks"] if "torch" in b.get("extra_info", {})})
    date = str(data.get("datetime", "?"))[:16].replace("T", " ")
    parts = [
        f"date {date} UTC",
        f"machine {machine.get('node', '?')} ({cpu}, {(machine.get('cpu') or {}).get('count', '?')} CPUs)",
    ]
    if devices:
        parts.append("device " + ", ".join(devices))
    parts.append(f"Python {machine.get('python_version', '?')}")
    if torch_v:
        parts.append("torch " + ", ".join(torch_v))
    commit = (data.get("commit_info") or {}).get("id")
    if commit:
        parts.append(f"commit {commit[:8]}" + (" (dirty)" if data["commit_info"].get("dirty") else ""))
    return "; ".join(parts)


def render(data: dict[str, Any], reference: str | None = None, rerun: str | None = None) -> str:
    """The Markdown section for one JSON file."""
    lines = [f"*{_heading(data)}*", ""]
    if rerun:
        lines += [f"Rerun: `{rerun}`", ""]
    for table in group_tables(data, reference):
        extras = [k for k in SHOWN_EXTRA if any(k in r["extra"] for r in table["rows"])]
        lines.append(f"**{table['group']}**")
        lines.append("")
        header = ["provider", "median", "IQR", "rounds", f"× {table['reference']}", *extras]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for r in table["rows"]:
            cells = [
                r["provider"],
                _fmt_time(r["median"]),
                _fmt_time(r["iqr"]),
                str(r["rounds"]),
                f"{r['ratio']:.2f}×",
                *(str(r["extra"].get(k, "")) for k in extras),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if table["fit"] is not None:
            a, b, r2 = table["fit"]
            lines += ["", f"Linear in k: t ≈ {_fmt_time(a)} + {_fmt_time(b)} · k, R² = {r2:.4f}"]
            if table["mac_fit"] is not None:
                a, b, r2 = table["mac_fit"]
                lines += [
                    "",
                    f"Linear in the plan's MACs: t ≈ {_fmt_time(a)} + {_fmt_time(b * 100)} per 100 MMACs, "
                    f"R² = {r2:.4f}",
                ]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


DWCONV_GOALS = {"speedup": 1.5, "roofline": 0.6}  # the kernels issue: fwd+bwd ≥ 1.5× cuDNN's best, ≥ 60 % of copy BW


def dwconv_summary(data: dict[str, Any], copy_gbps: float | None = None) -> list[dict[str, Any]]:
    """One row per (dtype, pass, layer, K) of ``bench/test_bench_dwconv.py``: per-pass medians of ours and torch in
    each layout, ``speedup`` = torch's best layout / ours' best layout, ours' best GB/s (minimal bytes, each activation
    read and written once) and, with the device's measured copy bandwidth, its share of it (``roofline``)."""
    cells: dict[tuple, dict[str, Any]] = {}
    for b in data["benchmarks"]:
        e = b.get("extra_info") or {}
        if e.get("subject") != "dwconv":
            continue
        key = (e["dtype"], e["pass_"], e["layer"], e["kernel"])
        row = cells.setdefault(key, {"dtype": key[0], "pass": key[1], "layer": key[2], "k": key[3], "times": {}})
        row["times"][(e["provider"], e["layout"])] = b["stats"]["median"] / _ops(b)
        row["bytes"] = e["minimal_bytes"]
    rows = []
    for row in cells.values():
        ours = {lay: t for (p, lay), t in row["times"].items() if p == "ours"}
        torch_ = {lay: t for (p, lay), t in row["times"].items() if p == "torch"}
        if not ours or not torch_:
            continue
        best_ours, best_torch = min(ours, key=ours.get), min(torch_, key=torch_.get)
        gbps = row["bytes"] / ours[best_ours] / 1e9
        row.update(
            ours=ours,
            torch=torch_,
            best_ours=best_ours,
            best_torch=best_torch,
            speedup=torch_[best_torch] / ours[best_ours],
            gbps=gbps,
            roofline=gbps / copy_gbps if copy_gbps else None,
        )
        rows.append(row)
    order = {"fwd": 0, "bwd": 1, "fwd_bwd": 2}
    rows.sort(key=lambda r: (r["dtype"], order.get(r["pass"], 9), r["layer"], r["k"]))
    return rows


PREDICTION_HW = {"sms": 132, "clock_ghz": 1.98}  # bench/inspect_kernels.py's H200 (its clk/element figures' unit)
_PASS_KERNELS = {"fwd": ("fwd",), "bwd": ("dx", "dw"), "fwd_bwd": ("fwd", "dx", "dw")}


def load_predictions(path: str | Path) -> dict[tuple, float]:
    """``bench/inspect_kernels.py --json`` rows → predicted seconds per ``(dtype, pass, layer id, K, layout)``.

    A kernel's time is its predicted clocks per element (the largest of load/store + shuffle, issue and DRAM) times
    its elements (fwd: y; dx: x; dw: dy) over SMs × clock; a pass sums its kernels (bwd: dx + dW; the dW reduction
    and launches are left out)."""
    try:
        rows = json.loads(Path(path).read_text())
        kernels: dict[tuple, float] = {}
        for r in rows:
            c = r["case"]
            ch, h, s = c["layer"]
            k = c["k"]
            out = (h + 2 * (k // 2) - k) // s + 1
            size = h if c["kernel"] == "dx" else out
            elements = r.get("batch", 256) * ch * size * size
            clk = max(r["lsu_clk_per_element"] + r["shfl_clk_per_element"], r["issue_clk_per_element"])
            clk = max(clk, r["dram_clk_per_element"])
            key = (c["dtype"], f"C{ch}xH{h}s{s}", k, c["layout"])
            kernels[(c["kernel"], *key)] = clk * elements / (PREDICTION_HW["sms"] * PREDICTION_HW["clock_ghz"] * 1e9)
    except FileNotFoundError:
        raise ReportError(
            f"{path}: no such file (write one with python bench/inspect_kernels.py --json {path})"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ReportError(f"{path}: not a bench/inspect_kernels.py result ({type(err).__name__}: {err})") from None
    out: dict[tuple, float] = {}
    for _kernel, dtype, layer, k, layout in kernels:
        for pass_, names in _PASS_KERNELS.items():
            parts = [kernels.get((n, dtype, layer, k, layout)) for n in names]
            if all(p is not None for p in parts):
                out[(dtype, pass_, layer, k, layout)] = sum(parts)
    return out


def render_dwconv(
    data: dict[str, Any], copy_gbps: float | None = None, predictions: dict[tuple, float] | None = None
) -> str:
    """The depthwise-kernel summary: per (dtype, pass) a geometric-mean speedup and the goal counts, then the rows."""
    rows = dwconv_summary(data, copy_gbps)
    if not rows:
        raise ReportError("no dwconv benchmarks with both providers (extra_info subject 'dwconv', ours and torch)")
    layouts = ("nchw", "channels_last")
    lines = [f"*{_heading(data)}*", ""]
    if copy_gbps:
        lines += [f"Roofline: the device's measured copy bandwidth, {copy_gbps:,.0f} GB/s (bytes read + written).", ""]
    model = bool(predictions)
    lines += [
        f"| dtype | pass | cases | geomean speedup vs cuDNN's best | ≥ {DWCONV_GOALS['speedup']}× | "
        f"≥ {100 * DWCONV_GOALS['roofline']:.0f} % roofline |" + (" measured / predicted (geomean) |" if model else ""),
        "|---|---|---:|---:|---:|---:|" + ("---:|" if model else ""),
    ]
    for r in rows:  # measured over predicted, per layout of ours (the model of bench/inspect_kernels.py)
        keys = {lay: (r["dtype"], r["pass"], r["layer"], r["k"], lay) for lay in r["ours"]}
        r["vs_model"] = {
            lay: r["ours"][lay] / predictions[key] for lay, key in keys.items() if key in (predictions or {})
        }
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dtype"], r["pass"]), []).append(r)
    for (dtype, pass_), rs in groups.items():
        geo = 2 ** (sum(math.log2(r["speedup"]) for r in rs) / len(rs))
        fast = sum(r["speedup"] >= DWCONV_GOALS["speedup"] for r in rs)
        roof = "—" if not copy_gbps else f"{sum(r['roofline'] >= DWCONV_GOALS['roofline'] for r in rs)}/{len(rs)}"
        line = f"| {dtype} | {pass_} | {len(rs)} | {geo:.2f}× | {fast}/{len(rs)} | {roof} |"
        if model:
            ratios = [v for r in rs for v in r["vs_model"].values()]
            line += f" {2 ** (sum(math.log2(v) for v in ratios) / len(ratios)):.2f}× |" if ratios else " — |"
        lines.append(line)
    head = "| dtype | pass | layer | K | ours N | ours CL | cuDNN N | cuDNN CL | speedup | ours GB/s | roofline |"
    lines += [
        "",
        head + (" ours / model N | ours / model CL |" if model else ""),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if model else ""),
    ]
    for r in rows:
        times = [_time_cell(r["ours"], r["best_ours"], k) for k in layouts]
        times += [_time_cell(r["torch"], r["best_torch"], k) for k in layouts]
        roofline = "—" if r["roofline"] is None else f"{100 * r['roofline']:.0f} %"
        line = (
            f"| {r['dtype']} | {r['pass']} | {r['layer']} | {r['k']} | {' | '.join(times)} | "
            f"{r['speedup']:.2f}× | {r['gbps']:,.0f} | {roofline} |"
        )
        if model:
            line += "".join(f" {r['vs_model'][k]:.2f}× |" if k in r["vs_model"] else " — |" for k in layouts)
        lines.append(line)
    lines += ["", "Speedup: cuDNN's faster layout over ours' faster layout (**bold**: each side's faster one)."]
    if model:
        lines.append(
            "Measured / predicted: ours' median over the time bench/inspect_kernels.py's SASS model predicts "
            "(near 1: the model's bottleneck is the real one; far above: time it does not see — latency, caches, "
            "occupancy)."
        )
    return "\n".join(lines) + "\n"


BN_ACT_PROVIDERS = ("fused", "unfused", "torch")  # bench/test_bench_dwconv_bn_act.py


def render_dwconv_bn_act(data: dict[str, Any]) -> str:
    """The depthwise layer (conv + BN + activation) summary: per (layout, pass) the geometric-mean speedups of the
    fused op over the unfused Triton path and over cuDNN + PyTorch's BN, then one row per case."""
    cells: dict[tuple, dict[str, float]] = {}
    gbps: dict[tuple, float] = {}
    for b in data["benchmarks"]:
        e = b.get("extra_info") or {}
        if e.get("subject") != "dwconv_bn_act":
            continue
        key = (e["layout"], e["pass_"], e["layer"], e["kernel"])
        cells.setdefault(key, {})[e["provider"]] = b["stats"]["median"] / _ops(b)
        if e["provider"] == "fused" and "gbps" in e:
            gbps[key] = e["gbps"]
    rows = [(key, t) for key, t in sorted(cells.items()) if all(p in t for p in BN_ACT_PROVIDERS)]
    if not rows:
        raise ReportError(f"no dwconv_bn_act benchmarks with all of {BN_ACT_PROVIDERS}")
    lines = [f"*{_heading(data)}*", ""]
    lines += [
        "| layout | pass | cases | fused vs unfused (geomean) | fused vs cuDNN + BN (geomean) |",
        "|---|---|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for (layout, pass_, _, _), t in rows:
        groups.setdefault((layout, pass_), []).append(t)
    for (layout, pass_), ts in groups.items():
        geo = {
            other: 2 ** (sum(math.log2(t[other] / t["fused"]) for t in ts) / len(ts)) for other in ("unfused", "torch")
        }
        lines.append(f"| {layout} | {pass_} | {len(ts)} | {geo['unfused']:.2f}× | {geo['torch']:.2f}× |")
    lines += [
        "",
        "| layout | pass | layer | K | fused | unfused | cuDNN + BN | vs unfused | vs cuDNN + BN | fused GB/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (layout, pass_, layer, k), t in rows:
        rate = gbps.get((layout, pass_, layer, k))
        lines.append(
            f"| {layout} | {pass_} | {layer} | {k} | {_fmt_time(t['fused'])} | {_fmt_time(t['unfused'])} | "
            f"{_fmt_time(t['torch'])} | {t['unfused'] / t['fused']:.2f}× | {t['torch'] / t['fused']:.2f}× | "
            f"{'—' if rate is None else f'{rate:,.0f}'} |"
        )
    lines += ["", "Speedups: the other provider's median over the fused op's (above 1: the fused op is faster)."]
    return "\n".join(lines) + "\n"


def _time_cell(times: dict[str, float], best: str, layout: str) -> str:
    if layout not in times:
        return "—"
    cell = _fmt_time(times[layout])
    return f"**{cell}**" if layout == best else cell


def _copy_gbps(path: str | None) -> float | None:
    if path is None:
        return None
    try:
        value = json.loads(Path(path).read_text())["copy_gbps"]
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file (write one with python bench/ceilings.py --out {path})") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ReportError(f"{path}: not a bench/ceilings.py result (no copy_gbps)") from None
    if not isinstance(value, int | float) or value <= 0:
        raise ReportError(f"{path}: copy_gbps must be a positive number; got {value!r}")
    return float(value)


def update_section(path: str | Path, section: str, body: str) -> None:
    """Replace the text between ``<!-- bench:section -->`` and ``<!-- /bench:section -->`` (append when absent)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", section):
        raise ReportError(f"section name must be letters, digits, '_', '.', '-'; got {section!r}")
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    begin, end = f"<!-- bench:{section} -->", f"<!-- /bench:{section} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text and text.index(begin) < text.index(end):
        i, j = text.index(begin), text.index(end) + len(end)
        text = text[:i] + block + text[j:]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _subjects(data: dict[str, Any]) -> set[Any]:
    return {(b.get("extra_info") or {}).get("subject") for b in data["benchmarks"]}


def render_file(
    data: dict[str, Any],
    reference: str | None = None,
    rerun: str | None = None,
    copy_gbps: float | None = None,
    predictions: dict[tuple, float] | None = None,
) -> str:
    """One JSON file's Markdown: the depthwise summaries for their subjects (hundreds of small groups each), the
    group tables for the rest (a file may hold both: the GPU session's bnact stage runs the step and the layer)."""
    subjects = _subjects(data)
    if subjects == {"dwconv"}:
        return render_dwconv(data, copy_gbps, predictions)
    parts = []
    if "dwconv_bn_act" in subjects:
        bn_act = [b for b in data["benchmarks"] if (b.get("extra_info") or {}).get("subject") == "dwconv_bn_act"]
        parts.append(render_dwconv_bn_act({**data, "benchmarks": bn_act}))
        data = {**data, "benchmarks": [b for b in data["benchmarks"] if b not in bn_act]}
    if data["benchmarks"]:
        parts.append(render(data, reference, rerun))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON files")
    parser.add_argument("--reference", help="provider the ratios refer to (default: deps, else the first row)")
    parser.add_argument("--update", metavar="FILE", help="Markdown file whose section to replace")
    parser.add_argument("--section", help="section name (default: the JSON file's stem)")
    parser.add_argument("--rerun", help="the command that reproduces the tables (printed above them)")
    parser.add_argument(
        "--ceilings", metavar="JSON", help="bench/ceilings.py output: the copy bandwidth the dwconv roofline uses"
    )
    parser.add_argument(
        "--predictions", metavar="JSON", help="bench/inspect_kernels.py --json output: dwconv times to compare with"
    )
    args = parser.parse_args(argv)
    try:
        copy_gbps = _copy_gbps(args.ceilings)
        predictions = load_predictions(args.predictions) if args.predictions else None
        for path in args.json:
            data = load(path)
            body = render_file(data, args.reference, args.rerun, copy_gbps, predictions)
            if args.update:
                update_section(args.update, args.section or Path(path).stem, body)
            else:
                sys.stdout.write(body + "\n")
    except (ReportError, OSError) as err:
        print(f"bench/report.py: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
