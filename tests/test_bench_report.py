"""bench/report.py turns pytest-benchmark JSON into the RESULTS.md tables: ratios, the k-fit, section updates."""

from __future__ import annotations

import json

import pytest

from bench import report


def _bench(group, provider, median, **extra):
    return {
        "group": group,
        "name": f"test_x[{provider}]",
        "param": provider,
        "extra_info": {"provider": provider, "device": "cpu-x", "torch": "2.x", **extra},
        "stats": {"median": median, "iqr": median / 10, "rounds": 5},
    }


def _data(benchmarks):
    return {
        "machine_info": {"node": "box", "python_version": "3.11.7", "cpu": {"brand_raw": "EPYC", "count": 2}},
        "commit_info": {"id": "0123456789abcdef", "dirty": False},
        "datetime": "2026-11-21T12:00:00.000000",
        "benchmarks": benchmarks,
    }


def test_ratios_refer_to_deps_and_the_k_fit_is_least_squares(tmp_path):
    step = [_bench("step", p, m, terms=4) for p, m in [("eager", 3.0), ("deps", 1.5), ("static", 1.2)]]
    ks = [(1, 1.1), (2, 2.0), (3, 3.2), (4, 3.9)]
    sweep = [_bench("vs k", "deps", t, k=k, phase="k_sweep") for k, t in ks]
    tables = report.group_tables(_data(step + sweep))
    first = tables[0]
    assert first["reference"] == "deps" and first["fit"] is None
    assert [round(r["ratio"], 6) for r in first["rows"]] == [2.0, 1.0, 0.8]
    a, b, r2 = tables[1]["fit"]
    # by hand: mean k = 2.5, mean t = 2.55, Sxx = 5, Sxy = 4.8 -> b = 0.96, a = 0.15
    assert b == pytest.approx(0.96) and a == pytest.approx(0.15)
    ss_res = sum((t - 0.15 - 0.96 * k) ** 2 for k, t in ks)
    ss_tot = sum((t - 2.55) ** 2 for _, t in ks)
    assert r2 == pytest.approx(1 - ss_res / ss_tot)
    text = report.render(_data(step + sweep), rerun="pytest bench")
    assert "| eager | 3.000 s | 300.00 ms | 5 | 2.00× | 4 |" in text
    assert "2026-11-21 12:00 UTC" in text and "EPYC" in text and "commit 01234567" in text
    assert "Linear in k" in text and "R² = " in text


def test_update_replaces_only_its_section(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nhand-written text\n")
    path = tmp_path / "step.json"
    path.write_text(json.dumps(_data([_bench("g", "deps", 0.002), _bench("g", "eager", 0.005)])))
    assert report.main([str(path), "--update", str(md)]) == 0
    once = md.read_text()
    assert once.startswith("# Results\n\nhand-written text\n") and "<!-- bench:step -->" in once
    assert "| eager | 5.00 ms | 500.0 µs | 5 | 2.50× |" in once
    assert report.main([str(path), "--update", str(md)]) == 0
    assert md.read_text() == once  # idempotent: the section is replaced, not appended again


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"foo": 1}')
    assert report.main([str(bad)]) == 2
    assert "not a pytest-benchmark result" in capsys.readouterr().err
    with pytest.raises(report.ReportError, match="section name"):
        report.update_section(tmp_path / "x.md", "a b", "body")


def test_interleaved_rounds_give_a_row_per_provider_with_per_round_ratios():
    # drift: round 2 is twice as slow for everyone; per-round ratios stay 1.1 and 0.9, the ratio of medians would not
    times = {"func": [1.0, 2.0, 1.0, 1.0], "grad": [1.1, 2.2, 1.1, 1.1], "graph": [0.9, 1.8, 0.9, 0.9]}
    peaks = {"func": {"peak_mib": 300.0}, "grad": {"peak_mib": 200.0}}  # none recorded for "graph"
    bench = _bench("engines", "interleaved", 3.0, interleaved=times, per_provider=peaks, terms=1)
    (table,) = report.group_tables(_data([bench]))
    assert table["reference"] == "func" and [r["provider"] for r in table["rows"]] == ["func", "grad", "graph"]
    assert [round(r["ratio"], 9) for r in table["rows"]] == [1.0, 1.1, 0.9]
    assert [r["rounds"] for r in table["rows"]] == [4, 4, 4]
    assert table["rows"][1]["median"] == pytest.approx(1.1) and table["rows"][1]["iqr"] == pytest.approx(0.275)
    text = report.render(_data([bench]))
    assert "| grad | 1.100 s | 275.00 ms | 4 | 1.10× | 1 | 200.0 |" in text and "interleaved" not in text
    assert "| graph | 900.00 ms | 225.00 ms | 4 | 0.90× | 1 |  |" in text
    for bad in ({"func": [1.0, 2.0], "grad": [1.0]}, {"func": []}, {}, [1.0]):
        with pytest.raises(report.ReportError, match="interleaved"):
            report.group_tables(_data([_bench("engines", "interleaved", 3.0, interleaved=bad)]))


def _dw(provider, layout, median, *, ops=1, dtype="bf16", pass_="fwd_bwd", layer="C144xH56s1", k=3, nbytes=10**9):
    group = f"dwconv {pass_} {dtype} {layout} {layer} K{k}"
    extra = dict(subject="dwconv", layout=layout, dtype=dtype, pass_=pass_, layer=layer, kernel=k)
    return _bench(group, provider, median, ops_per_call=ops, minimal_bytes=nbytes, **extra)


def test_times_are_per_pass_when_a_call_runs_several():
    data = _data([_bench("g", "deps", 0.008, ops_per_call=4), _bench("g", "eager", 0.010, ops_per_call=2)])
    rows = report.group_tables(data)[0]["rows"]
    assert [r["median"] for r in rows] == [0.002, 0.005] and [r["iqr"] for r in rows] == [0.0002, 0.0005]
    assert rows[1]["ratio"] == pytest.approx(2.5)
    with pytest.raises(report.ReportError, match="ops_per_call must be a positive integer"):
        report.group_tables(_data([_bench("g", "deps", 0.1, ops_per_call=0)]))


def test_dwconv_summary_compares_the_best_layouts_and_the_roofline(tmp_path, capsys):
    # ours: 1 ms NCHW, 0.5 ms CL (4 passes per call); cuDNN: 2 ms NCHW, 0.8 ms CL -> 0.8 / 0.5 = 1.6x
    benches = [
        _dw("ours", "nchw", 0.004, ops=4),
        _dw("ours", "channels_last", 0.002, ops=4),
        _dw("torch", "nchw", 0.002),
        _dw("torch", "channels_last", 0.0008),
        _dw("ours", "nchw", 0.003, k=7),  # no cuDNN row for K7: not a comparison, left out
    ]
    rows = report.dwconv_summary(_data(benches), copy_gbps=4000.0)
    assert len(rows) == 1
    (row,) = rows
    assert row["best_ours"] == "channels_last" and row["best_torch"] == "channels_last"
    assert row["speedup"] == pytest.approx(1.6)
    assert row["gbps"] == pytest.approx(1e9 / 0.0005 / 1e9)  # 2,000 GB/s
    assert row["roofline"] == pytest.approx(0.5)
    text = report.render_dwconv(_data(benches), 4000.0)
    assert "| bf16 | fwd_bwd | 1 | 1.60× | 1/1 | 0/1 |" in text
    row_text = (
        "| bf16 | fwd_bwd | C144xH56s1 | 3 | 1.00 ms | **500.0 µs** | 2.00 ms | **800.0 µs** | 1.60× | 2,000 | 50 % |"
    )
    assert row_text in text
    # the command line picks the summary for dwconv files and reads the copy bandwidth from bench/ceilings.py's JSON
    path, ceilings = tmp_path / "dwconv.json", tmp_path / "ceilings.json"
    path.write_text(json.dumps(_data(benches)))
    ceilings.write_text(json.dumps({"copy_gbps": 4000.0}))
    assert report.main([str(path), "--ceilings", str(ceilings)]) == 0
    assert "50 %" in capsys.readouterr().out
    ceilings.write_text(json.dumps({"copy_gbps": -1}))
    assert report.main([str(path), "--ceilings", str(ceilings)]) == 2
    assert "copy_gbps must be a positive number" in capsys.readouterr().err
    assert report.main([str(path), "--ceilings", str(tmp_path / "none.json")]) == 2
    assert "bench/ceilings.py --out" in capsys.readouterr().err


def _inspect_row(kernel, layout, clk, *, dtype="bf16", layer=(144, 56, 1), k=3, batch=256):
    # the fields of a bench/inspect_kernels.py row that report.py reads: here the issue term is the largest
    return dict(
        case=dict(kernel=kernel, layer=list(layer), k=k, layout=layout, dtype=dtype), batch=batch,
        lsu_clk_per_element=clk / 2, shfl_clk_per_element=0.0, issue_clk_per_element=clk, dram_clk_per_element=clk / 4,
    )  # fmt: skip


def test_dwconv_summary_sets_measured_times_against_the_sass_model(tmp_path, capsys):
    # 256 · 144 · 56² = 115.6 M elements per kernel (stride 1, K 3: y, x and dy all 56²); at 132 SMs × 1.98 GHz,
    # 1 clk/element is 115.6e6 / 261.36e9 s = 442.3 µs. Predicted fwd_bwd in CL: (1 + 0.5 + 0.5) clk = 884.6 µs.
    elements = 256 * 144 * 56 * 56
    unit = elements / (132 * 1.98e9)
    rows = [_inspect_row("fwd", "channels_last", 1.0), _inspect_row("dx", "channels_last", 0.5),
            _inspect_row("dw", "channels_last", 0.5), _inspect_row("fwd", "nchw", 2.0)]  # fmt: skip
    path = tmp_path / "inspect.json"
    path.write_text(json.dumps(rows))
    predictions = report.load_predictions(path)
    assert predictions[("bf16", "fwd", "C144xH56s1", 3, "channels_last")] == pytest.approx(unit)
    assert predictions[("bf16", "bwd", "C144xH56s1", 3, "channels_last")] == pytest.approx(unit)
    assert predictions[("bf16", "fwd_bwd", "C144xH56s1", 3, "channels_last")] == pytest.approx(2 * unit)
    assert ("bf16", "bwd", "C144xH56s1", 3, "nchw") not in predictions  # no dx/dW rows for NCHW: no backward
    benches = [
        _dw("ours", "nchw", 0.004, ops=4),
        _dw("ours", "channels_last", 4 * 2 * unit * 1.5, ops=4),  # 1.5× the predicted time
        _dw("torch", "nchw", 0.002),
        _dw("torch", "channels_last", 0.0008),
    ]
    text = report.render_dwconv(_data(benches), None, predictions)
    assert "| measured / predicted (geomean) |" in text and "| bf16 | fwd_bwd | 1 |" in text
    assert "1.50× |" in text.splitlines()[4]  # the group row: only the CL time has a prediction
    case_row = next(line for line in text.splitlines() if "C144xH56s1" in line)
    assert case_row.endswith("| — | — | 1.50× |")  # no roofline (no ceilings), NCHW unpredicted, CL 1.5×
    bench_path = tmp_path / "dwconv.json"
    bench_path.write_text(json.dumps(_data(benches)))
    assert report.main([str(bench_path), "--predictions", str(path)]) == 0
    assert "ours / model CL" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps([{"case": {}}]))
    assert report.main([str(bench_path), "--predictions", str(tmp_path / "bad.json")]) == 2
    assert "not a bench/inspect_kernels.py result" in capsys.readouterr().err
    assert report.main([str(bench_path), "--predictions", str(tmp_path / "none.json")]) == 2
    assert "inspect_kernels.py --json" in capsys.readouterr().err


def _bn_act(provider, median, *, layer, k=3, ops=1, gbps=None):
    group = f"dwconv+bn+act fwd_bwd bf16 channels_last {layer} K{k}"
    extra = dict(subject="dwconv_bn_act", layout="channels_last", pass_="fwd_bwd", layer=layer, kernel=k)
    if gbps is not None:
        extra["gbps"] = gbps
    return _bench(group, provider, median, ops_per_call=ops, **extra)


def test_dwconv_bn_act_summary_takes_geometric_means_of_per_pass_ratios(tmp_path, capsys):
    data = _data(
        [
            _bn_act("fused", 0.004, layer="C144xH56s1", ops=2, gbps=900),  # 2 ms a pass
            _bn_act("unfused", 0.003, layer="C144xH56s1"),  # 1.5×
            _bn_act("torch", 0.008, layer="C144xH56s1"),  # 4×
            _bn_act("fused", 0.001, layer="C960xH7s1"),
            _bn_act("unfused", 0.006, layer="C960xH7s1"),  # 6×
            _bn_act("torch", 0.001, layer="C960xH7s1"),  # 1×
            _bn_act("fused", 0.001, layer="C72xH56s2"),  # no unfused row: left out
            _bn_act("torch", 0.001, layer="C72xH56s2"),
        ]
    )
    text = report.render_dwconv_bn_act(data)
    assert "| channels_last | fwd_bwd | 2 | 3.00× | 2.00× |" in text  # √(1.5·6), √(4·1)
    assert "| channels_last | fwd_bwd | C144xH56s1 | 3 | 2.00 ms | 3.00 ms | 8.00 ms | 1.50× | 4.00× | 900 |" in text
    assert "C72xH56s2" not in text
    path = tmp_path / "bn.json"
    path.write_text(json.dumps(data))
    assert report.main([str(path)]) == 0 and "fused vs unfused (geomean)" in capsys.readouterr().out
    # with the step's rows in the same file (gpu_session's bnact stage): the summary, then the step's group table
    data["benchmarks"] += [_bench("step shrinking", "deps_fused", 0.2), _bench("step shrinking", "deps_fused_bn", 0.1)]
    text = report.render_file(data)
    assert text.index("fused vs unfused (geomean)") < text.index("**step shrinking**")
    assert "| deps_fused_bn | 100.00 ms |" in text
    with pytest.raises(report.ReportError, match="no dwconv_bn_act benchmarks with all of"):
        report.render_dwconv_bn_act(_data([_bn_act("fused", 0.001, layer="C72xH56s2")]))
