"""The GPU benchmark code, run on the CPU at tiny sizes (Triton interpreter), so it still works when a GPU is lent.

A lease of the GPU is short (bench/gpu_session.sh fits one in ~9 minutes); a typo found there costs the lease. These
tests run the same files the session runs — bench/ceilings.py, bench/test_bench_dwconv.py,
bench/test_bench_dwconv_bn_act.py, bench/tune_dwconv.py and bench/gpu_session.sh itself — with
``DEPS_BENCH_DEVICE=cpu``. Their times mean nothing; what is checked is that each produces the files and fields that
bench/report.py and the notes are built from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import ceilings, report

ROOT = Path(__file__).resolve().parents[1]
SMOKE_ENV = {**os.environ, "DEPS_BENCH_DEVICE": "cpu", "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
DWCONV_CASES = [
    f"bench/test_bench_dwconv.py::test_bench_elastic_dwconv[bf16-C5xH8s2-3-{layout}-fwd_bwd-{provider}]"
    for layout in ("nchw", "channels_last")
    for provider in ("ours", "torch")
]


def _run(args, env=SMOKE_ENV, timeout=300):
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _benchmark_json(cases, out):
    """Run the benchmark ``cases`` (node ids) in a pytest of their own; what report.py reads of the JSON it wrote."""
    proc = _run([sys.executable, "-m", "pytest", "-q", *cases, "--benchmark-only", f"--benchmark-json={out}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return report.load(out)


def test_ceilings_measure_copy_bandwidth_and_matmul_rate(tmp_path):
    out = tmp_path / "ceilings.json"
    assert ceilings.main(["--device", "cpu", "--small", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["copy_gbps"] > 0 and result["bf16_tflops"] > 0
    assert result["copy_bytes"] == 1 << 20 and result["matmul_n"] == 128 and result["device"] == "cpu"


def test_dwconv_benchmark_writes_what_the_summary_needs(tmp_path):
    data = _benchmark_json(DWCONV_CASES, tmp_path / "dwconv.json")
    assert len(data["benchmarks"]) == 4
    for b in data["benchmarks"]:
        e = b["extra_info"]
        assert e["ops_per_call"] == 2 and e["shape"] == [2, 5, 8, 8] and e["stride"] == 2
        # x has 2·5·8·8 = 640 elements, y 2·5·4·4 = 160 (K3, stride 2); forward x + y, backward gy + x + dx; bf16
        assert e["minimal_bytes"] == 2 * ((640 + 160) + (160 + 2 * 640))
        assert e["gbps"] > 0
    (row,) = report.dwconv_summary(data, copy_gbps=100.0)
    assert set(row["ours"]) == set(row["torch"]) == {"nchw", "channels_last"}
    assert row["speedup"] > 0 and row["roofline"] is not None


def test_dwconv_bn_act_benchmark_writes_what_its_summary_needs(tmp_path):
    cases = [
        f"bench/test_bench_dwconv_bn_act.py::test_bench_dwconv_bn_act[channels_last-C5xH8s2-3-fwd_bwd-{provider}]"
        for provider in ("fused", "unfused", "torch")
    ]
    data = _benchmark_json(cases, tmp_path / "dwconv-bn-act.json")
    assert len(data["benchmarks"]) == 3
    for b in data["benchmarks"]:
        e = b["extra_info"]
        assert e["subject"] == "dwconv_bn_act" and e["shape"] == [2, 5, 8, 8] and e["gbps"] > 0
        assert e["minimal_bytes"] == 2 * ((640 + 160) + (160 + 2 * 640))  # as the dwconv benchmark's, bf16
    text = report.render_dwconv_bn_act(data)
    assert "| channels_last | fwd_bwd | 1 |" in text and "| channels_last | fwd_bwd | C5xH8s2 | 3 |" in text


def test_benchmarks_past_the_deadline_are_skipped_and_pytest_ends_normally():
    # a normal end is what lets pytest-benchmark write the JSON of the benchmarks that ran before the deadline
    env = {**SMOKE_ENV, "DEPS_BENCH_DEADLINE": str(int(time.time()) - 1)}
    proc = _run([sys.executable, "-m", "pytest", "-q", "-rs", *DWCONV_CASES[:2]], env)
    assert proc.returncode == 0 and "2 skipped" in proc.stdout, proc.stdout + proc.stderr
    assert "DEPS_BENCH_DEADLINE passed" in proc.stdout
    bad = _run([sys.executable, "-m", "pytest", "-q", DWCONV_CASES[0]], {**SMOKE_ENV, "DEPS_BENCH_DEADLINE": "soon"})
    assert bad.returncode == 4 and "DEPS_BENCH_DEADLINE must be seconds since the epoch" in bad.stderr


def test_tile_sweep_checks_every_candidate_and_reports_the_gain(tmp_path):
    out = tmp_path / "tune.json"
    proc = _run([sys.executable, "bench/tune_dwconv.py", "--smoke", "--kernels", "fwd,dw", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kernel"], r["layout"]) for r in rows] == [
        ("fwd", "nchw"),
        ("dw", "nchw"),
        ("fwd", "channels_last"),
        ("dw", "channels_last"),
    ]
    for r in rows:
        assert r["rejected"] == [] and r["gain"] >= 1.0 and r["best_us"] <= r["default_us"]
    bad = _run([sys.executable, "bench/tune_dwconv.py", "--smoke", "--kernels", "fwd,dy"])
    assert bad.returncode == 2 and "--kernels: choose from fwd, dx, dw" in bad.stderr


@pytest.mark.slow
def test_gpu_session_script_runs_its_stages_and_writes_the_report(tmp_path):
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    env = {**SMOKE_ENV, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(scratch)}
    proc = _run(["bash", "bench/gpu_session.sh", "env", "tests", "report"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (out / "session.log").read_text()
    assert "ceilings: exit 0" in log and "tests: exit 0" in log and " passed" in log
    assert "CPU smoke run" in log
    assert json.loads((out / "ceilings.json").read_text())["copy_gbps"] > 0
    assert "## ceilings" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["ceilings.json", "report.md", "session.log"]
    bad = _run(["bash", "bench/gpu_session.sh", "benchmarks"], env)
    assert bad.returncode == 2 and "unknown stage 'benchmarks'" in bad.stdout
    assert not list(scratch.glob("deps-site.*"))  # its import folder is gone after either run
