"""`deps compare` over repeated runs: runs that differ only in their seed form one experiment, summarized by its mean
and spread, and the difference between experiments is tested against that spread."""

import itertools
import json
import math
import random
import statistics

import pytest

from deps_core.arch import max_arch, min_arch
from deps_core.compare import (
    GROUP_HEADER,
    group_notes,
    group_rows,
    group_runs,
    group_summary,
    permutation_p,
    read_run_report,
)
from deps_core.config import ExperimentConfig, apply_overrides
from deps_core.evaluate import ArchResult
from deps_core.spaces import space_spec

SPEC = space_spec("ofa_mbv3_32")
LO, HI = 4_000_000, 22_000_000


def _write_run(folder, *overrides, mpa, bucket_top1, macs=2.0e12, hours=0.1, epochs=8):
    """A finished run's report.json as deps train writes it: its resolved config, its cost and a front of one subnet
    per listed bucket (``bucket_top1``: {bucket: top-1}); the figures are chosen by the test."""
    config = apply_overrides(ExperimentConfig(), list(overrides))
    width = (HI - LO) / 6
    buckets = []
    for b, top1 in bucket_top1.items():
        arch = max_arch(SPEC) if b % 2 else min_arch(SPEC)
        best = ArchResult(arch, int(LO + (b + 0.5) * width), top1, top1, 1.0)
        buckets.append({"bucket": b, "lo": LO + b * width, "hi": LO + (b + 1) * width, "best": best.to_dict()})
    report = {
        "config": config.to_dict(),
        "cost": {"device_hours": hours, "train_macs": macs, "train_seconds": 3600 * hours, "device_name": "cpu: x"},
        "history": [{} for _ in range(epochs)],
        "pareto": {
            "macs_range": [LO, HI],
            "buckets": buckets,
            "mean_pareto_accuracy": mpa,
            "max": buckets[-1]["best"],
            "min": buckets[0]["best"],
        },
    }
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def _brute_p(a, b):
    values, n = a + b, len(a)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    splits = list(itertools.combinations(range(len(values)), n))
    hits = 0
    for chosen in splits:
        x = [values[i] for i in chosen]
        y = [values[i] for i in range(len(values)) if i not in chosen]
        hits += abs(statistics.fmean(x) - statistics.fmean(y)) >= observed - 1e-12
    return hits / len(splits)


def test_permutation_p_is_the_exact_two_sided_test():
    separated = permutation_p([0.71, 0.72, 0.74, 0.70], [0.55, 0.52, 0.58, 0.60])
    assert separated == pytest.approx(2 / 70)  # only the observed split and its mirror are as extreme
    assert permutation_p([0.5, 0.6], [0.5, 0.6]) == 1.0  # no difference: every split is at least as extreme
    for a, b in [([0.63, 0.71, 0.49, 0.71], [0.55, 0.58, 0.41]), ([0.1, 0.3, 0.2], [0.25, 0.05, 0.4, 0.15, 0.3])]:
        assert permutation_p(a, b) == pytest.approx(_brute_p(a, b))
        assert permutation_p(a, b) == pytest.approx(permutation_p(b, a))
    assert permutation_p([0.5], [0.4, 0.6]) is None  # one value: no spread to test against
    assert permutation_p([0.1] * 12, [0.2] * 12, max_splits=1000, samples=0) is None  # too many splits to enumerate


def test_beyond_max_splits_the_permutation_p_is_drawn_from_random_splits():
    g = random.Random(7)
    for n, m in [(6, 6), (5, 8), (7, 7)]:  # 924, 1287 and 3432 splits: the exact p is at hand
        a = [g.gauss(0.60, 0.05) for _ in range(n)]
        b = [g.gauss(0.55, 0.05) for _ in range(m)]
        exact = permutation_p(a, b)
        drawn = permutation_p(a, b, max_splits=100, samples=40_000, seed=3)
        assert drawn == permutation_p(a, b, max_splits=100, samples=40_000, seed=3)  # a pure function of its inputs
        assert abs(drawn - exact) <= 4 * math.sqrt(exact * (1 - exact) / 40_000) + 1 / 40_001, (n, m, exact, drawn)
    # 12 and 12 values apart: of 2.7 million splits only the observed one and its mirror are as extreme, so no random
    # split of 10,000 is; the observed split counts, so p is 1 / 10,001 rather than 0
    assert permutation_p([0.1] * 12, [0.2] * 12, samples=10_000) == pytest.approx(1 / 10_001)
    assert permutation_p([0.5, 0.6] * 6, [0.5, 0.6] * 6, samples=10_000) == 1.0  # no difference: every split as far


def test_runs_that_differ_only_in_the_seed_are_one_experiment(tmp_path):
    b = {0: 0.5, 5: 0.7}
    runs = {}
    for name, overrides, mpa in [
        ("deps-s0", ["run.seed=0"], 0.63),
        ("bignas-s0", ["method.name=bignas", "run.seed=0"], 0.56),
        ("deps-s1", ["run.seed=1", "run.log_every=5", "run.progress=false"], 0.71),
        ("bignas-s1", ["method.name=bignas", "run.seed=1"], 0.50),
        ("bignas6-s0", ["method.name=bignas", "method.epochs=6", "run.seed=0"], 0.44),
        ("deps-s2", ["run.seed=2", "run.out_dir=elsewhere"], 0.49),
        ("deps-wide", ["run.seed=3", "optim.lr=0.01"], 0.40),
        ("deps-adamw", ["run.seed=0", "optim.name=adamw"], 0.61),
    ]:
        runs[name] = read_run_report(_write_run(tmp_path / name, *overrides, mpa=mpa, bucket_top1=b))
    groups = group_runs(runs)
    assert ExperimentConfig().optim.lr == 0.1625 and ExperimentConfig().method.epochs == 20
    # two groups per method here: each named by its method and the fields its groups differ in
    assert groups == {
        "deps optim.lr=0.1625 optim.name=sgd": ["deps-s0", "deps-s1", "deps-s2"],
        "bignas method.epochs=20": ["bignas-s0", "bignas-s1"],
        "bignas method.epochs=6": ["bignas6-s0"],
        "deps optim.lr=0.01 optim.name=sgd": ["deps-wide"],
        "deps optim.lr=0.1625 optim.name=adamw": ["deps-adamw"],  # a string's value unquoted
    }
    assert list(group_runs({n: runs[n] for n in ("deps-s0", "deps-adamw")})) == [
        "deps optim.name=sgd",
        "deps optim.name=adamw",
    ]
    only = group_runs({n: runs[n] for n in ("deps-s0", "bignas-s0", "deps-s1")})
    assert only == {"deps": ["deps-s0", "deps-s1"], "bignas": ["bignas-s0"]}  # one group per method: named by it

    summary = group_summary(runs, groups)
    deps, bignas, bignas6, wide, _ = summary
    assert deps["seeds"] == [0, 1, 2] and deps["method"] == "deps" and deps["epochs"] == 8
    m = deps["mean_pareto_accuracy"]
    assert m["mean"] == pytest.approx((0.63 + 0.71 + 0.49) / 3) and m["min"] == 0.49 and m["max"] == 0.71
    assert m["sd"] == pytest.approx(statistics.stdev([0.63, 0.71, 0.49]))
    assert deps["delta"] == 0 and deps["delta_se"] is None and deps["p_permutation"] is None
    assert bignas["delta"] == pytest.approx(0.53 - m["mean"])
    se = math.sqrt(statistics.variance([0.56, 0.50]) / 2 + statistics.variance([0.63, 0.71, 0.49]) / 3)
    assert bignas["delta_se"] == pytest.approx(se)
    assert bignas["p_permutation"] == pytest.approx(_brute_p([0.56, 0.50], [0.63, 0.71, 0.49]))
    assert bignas6["mean_pareto_accuracy"]["sd"] is None and bignas6["p_permutation"] is None
    assert bignas6["delta_se"] is None and wide["delta"] == pytest.approx(0.40 - m["mean"])
    notes = group_notes(summary)
    assert any(n.startswith("bignas method.epochs=6 has one run") for n in notes)

    # a run written before a config field existed groups with runs that have it at its default
    older = _write_run(tmp_path / "older", "run.seed=4", mpa=0.58, bucket_top1=b)
    report = json.loads((older / "report.json").read_text())
    for field in ("schedule", "lr_decay", "lr_decay_epochs", "lr_floor", "rms_decay", "rms_eps"):
        del report["config"]["optim"][field]
    (older / "report.json").write_text(json.dumps(report))
    with_older = {n: runs[n] for n in ("deps-s0", "deps-s1")} | {"older": read_run_report(older)}
    assert group_runs(with_older) == {"deps": ["deps-s0", "deps-s1", "older"]}
    report["config"]["optim"]["from_a_later_version"] = 1  # unreadable here: compared as written, so apart
    (older / "report.json").write_text(json.dumps(report))
    with_older["older"] = read_run_report(older)
    assert list(group_runs(with_older).values()) == [["deps-s0", "deps-s1"], ["older"]]

    # the same seed twice in one group (e.g. another thread count): said, not hidden
    runs["deps-s0-again"] = read_run_report(_write_run(tmp_path / "again", "run.seed=0", mpa=0.60, bucket_top1=b))
    notes = group_notes(group_summary(runs))
    assert any("repeats run.seed 0" in n for n in notes)


def test_deps_compare_prints_each_experiments_mean_and_spread(tmp_path, capsys):
    from deps_core.cli import main

    paths = []
    for seed, (mpa, top1) in enumerate([(0.63, 0.72), (0.71, 0.80), (0.49, 0.60)]):
        paths.append(_write_run(tmp_path / f"deps-s{seed}", f"run.seed={seed}", mpa=mpa, bucket_top1={0: 0.5, 5: top1}))
    for seed, (mpa, top1) in enumerate([(0.56, 0.62), (0.50, 0.58)]):
        paths.append(
            _write_run(
                tmp_path / f"bignas-s{seed}",
                "method.name=bignas",
                f"run.seed={seed}",
                mpa=mpa,
                bucket_top1={0: 0.45, 2: 0.5} if seed else {0: 0.4, 5: top1},
                macs=2.5e12,
                hours=0.13,
            )
        )
    png, js = tmp_path / "cmp.png", tmp_path / "cmp.json"
    assert main(["compare", *map(str, paths), "--out", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("repeats of one experiment")))
    header, rule, deps, bignas = lines[at + 2 : at + 6]
    assert header.split()[:3] == ["group", "runs", "seeds"]
    mean, sd = statistics.fmean([63, 71, 49]), statistics.stdev([63, 71, 49])
    assert deps.split()[:4] == ["deps", "3", "0,1,2", "8"]
    assert f"{mean:.2f} ± {sd:.2f}" in deps and "49.00-71.00" in deps
    p = _brute_p([0.56, 0.50], [0.63, 0.71, 0.49])
    assert bignas.split()[:6] == ["bignas", "2", "0,1", "8", "2.5T", "1.25×"]
    assert f"{53 - mean:+.2f} ± " in bignas and f"{p:.3f}" in bignas
    at = lines.index("best top-1 % per MAC bucket (MMACs), mean over each group's runs")
    deps_buckets, bignas_buckets = lines[at + 3].split(), lines[at + 4].split()
    assert deps_buckets == ["deps", "50.00", "-", "-", "-", "-", f"{statistics.fmean([72, 80, 60]):.2f}"]
    # bignas: bucket 0 from both runs, bucket 2 from one, bucket 5 from the other (their counts in brackets)
    assert bignas_buckets == ["bignas", "42.50", "-", "50.00", "(1)", "-", "-", "62.00", "(1)"]
    figures = json.loads(js.read_text())
    assert [g["group"] for g in figures["groups"]] == ["deps", "bignas"]
    assert figures["groups"][1]["p_permutation"] == pytest.approx(p)
    assert png.read_bytes()[:4] == b"\x89PNG"

    # no repeats: no group table (the per-run table says it all)
    assert main(["compare", str(paths[0]), str(paths[3]), "--out", str(png)]) == 0
    assert "repeats of one experiment" not in capsys.readouterr().out


def test_deps_curves_summarizes_repeats_by_experiment(tmp_path, capsys):
    from deps_core.cli import main

    finals = {"deps-s0": [40.0, 60.0], "deps-s1": [50.0, 70.0], "bignas-s0": [30.0, 55.0], "alone": [20.0, 25.0]}
    paths = []
    for name, tops in finals.items():
        folder = tmp_path / name
        folder.mkdir()
        overrides = [f"run.seed={name[-1]}"] + (["method.name=bignas"] if name.startswith("bignas") else [])
        if name != "alone":  # no config.json: a run of its own
            (folder / "config.json").write_text(json.dumps(apply_overrides(ExperimentConfig(), overrides).to_dict()))
        epochs = [
            {"epoch": e, "val_top1/full": t / 100, "train_loss/full": 2.0 - e, "cost": {"device_hours": 0.01 * (e + 1)}}
            for e, t in enumerate(tops)
        ]
        (folder / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
        paths.append(str(folder))
    png = tmp_path / "curves.png"
    assert main(["curves", *paths, "--out", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("repeats of one experiment (configs equal but for the seed): mean ± sd over its runs")
    rows = [line.split("  ") for line in lines[at + 3 : at + 6]]
    rows = [[c.strip() for c in r if c.strip()] for r in rows]
    sd = statistics.stdev([60.0, 70.0])
    assert rows == [
        ["deps", "2", f"65.00 ± {sd:.2f}", f"65.00 ± {sd:.2f}"],
        ["bignas", "1", "55.00", "55.00"],
        ["alone", "1", "25.00", "25.00"],
    ]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["curves", paths[0], paths[2], "--out", str(png)]) == 0  # no repeats: the per-run table alone
    assert "repeats of one experiment" not in capsys.readouterr().out


def test_a_p_below_a_thousandth_is_printed_with_its_digits_not_as_zero(tmp_path):
    runs = {}
    for seed in range(8):  # every DεpS run above every BigNAS run: p = 2 / C(16, 8) = 2 / 12,870
        for method, mpa in (("deps", 0.70), ("bignas", 0.50)):
            folder = _write_run(
                tmp_path / f"{method}-s{seed}",
                f"method.name={method}",
                f"run.seed={seed}",
                mpa=mpa + 0.01 * seed,
                bucket_top1={0: 0.5},
            )
            runs[f"{method}-s{seed}"] = read_run_report(folder)
    summary = group_summary(runs)
    assert summary[1]["p_permutation"] == pytest.approx(2 / 12_870)
    rows = group_rows(summary)
    assert rows[0][GROUP_HEADER.index("p")] == "-" and rows[1][GROUP_HEADER.index("p")] == "0.00016"
