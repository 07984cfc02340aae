"""bench/inspect_kernels.py: the depthwise kernels compiled for sm_90 on this CPU machine (Triton's ptxas and
cuobjdump), and what their SASS must keep showing.

The kernels are compiled in a fresh process without ``TRITON_INTERPRET`` (tests/kernels turns the interpreter on for
this session). What is checked is what a GPU run would otherwise find first, or what the kernels were written for:
every kernel compiles; nothing spills; channels_last bf16 activations are read 16 bytes per lane (a width like 72,
not a multiple of 16, too); the weight gradient's hot loop has no cross-thread reduction (no shuffles, no barriers:
the per-tap sums of the first version cost 1,666 shuffles and 396 barriers per tile at K = 7); the forward shares
each weight load over two positions and the stride-2 dx loads only the taps of each phase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import inspect_kernels as I  # noqa: E402

_MISSING = I.jit_internals_missing()  # the tool drives Triton's private JIT code: Triton ≥ 3.5
needs_jit_internals = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def smoke_rows(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("inspect") / "rows.json"
    proc = subprocess.run(
        [sys.executable, "bench/inspect_kernels.py", "--smoke", "--json", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| case |" in proc.stdout and "| kernel | layout |" in proc.stdout  # the table and the summary
    return json.loads(out.read_text())


@needs_jit_internals
def test_every_smoke_case_compiles_for_sm90_without_spilling(smoke_rows):
    assert [r["name"] for r in smoke_rows] == [I.Case(*c).name for c in I.SMOKE_CASES]
    for r in smoke_rows:
        assert r["target"] == "sm_90"
        assert 0 < r["regs"] <= 255, r["name"]
        assert r["local"] == 0 and r["stack"] == 0 and r["ldl"] == 0 and r["stl"] == 0, r["name"]
        assert r["warps_per_sm"] >= 8, r["name"]
        for key in ("lsu_clk_per_element", "issue_clk_per_element", "dram_clk_per_element", "bound"):
            assert 0 < r[key] < 1e3, (r["name"], key)


@needs_jit_internals
def test_channels_last_bf16_reads_16_bytes_per_lane(smoke_rows):
    for r in smoke_rows:
        c = r["case"]
        if c["layout"] == "channels_last" and c["dtype"] == "bf16" and c["layer"][0] % 8 == 0:
            assert r["ldg_by_width"].get("16", 0) > 0, r["name"]
            if c["kernel"] == "dw":  # dy and x: nothing narrower
                assert set(r["ldg_by_width"]) == {"16"}, r["name"]


@needs_jit_internals
def test_the_weight_gradient_loop_has_no_cross_thread_reduction(smoke_rows):
    dw = [r for r in smoke_rows if r["case"]["kernel"] == "dw"]
    assert dw
    for r in dw:
        assert r["loops"] >= 2, r["name"]  # the row loop and the column loop inside it
        assert r["shfl"] == 0 and r["bar"] == 0 and r["lds"] == 0 and r["sts"] == 0, r["name"]


@needs_jit_internals
def test_weight_loads_are_shared_and_strided_dx_loads_only_its_phases_taps(smoke_rows):
    rows = {r["name"]: r for r in smoke_rows}
    # the stored kernel's channel stride (K_max² = 49) allows no vector: each thread loads its channels' weights one
    # 4-byte scalar per channel and tap, and the forward shares each over two positions (before: one)
    fwd = rows["fwd 144x56 s1 K7 channels_last bf16"]
    assert fwd["ldg_by_width"]["4"] / fwd["elements_per_thread"] <= 49 / 2, fwd["ldg_by_width"]
    # a stride-2 dx element sums ~K²/4 taps; its program takes the four phases in turn with their own taps, so it
    # loads ~K²/4 values of dy per element instead of K² mostly masked ones
    for name in ("dx 144x56 s2 K7 nchw bf16", "dx 72x56 s2 K5 channels_last bf16"):
        r = rows[name]
        k2 = r["case"]["k"] ** 2
        dy_loads = r["ldg_by_width"].get("2" if r["case"]["layout"] == "nchw" else "16", 0) / r["elements_per_thread"]
        assert 0 < dy_loads <= k2 / 4 + 2, (name, r["ldg_by_width"], r["elements_per_thread"])


def test_lanes_used_counts_only_the_elements_a_tile_keeps():
    # 72 channels in 64-channel tiles (two tiles: 128 computed) and a 28-wide output in 16-wide tiles (32 computed)
    case = I.Case("fwd", (72, 56, 2), 3, "channels_last", "bf16")
    assert I.lanes_used(case, (64, 1, 16, 4)) == pytest.approx(72 / 128 * 28 / 28 * 28 / 32)
    assert I.lanes_used(case, (8, 4, 4, 4)) == 1.0
    # dx tiles the ⌈H/s⌉ grid and computes s² phases: an odd input side leaves the last phase row and column out
    dx = I.Case("dx", (16, 7, 2), 3, "nchw", "fp32")
    assert I.lanes_used(dx, (16, 4, 4, 4)) == pytest.approx((7 / 8) ** 2)


def test_compare_rescales_rows_written_before_lanes_used():
    case = {"kernel": "fwd", "layer": [72, 56, 2], "k": 7, "layout": "channels_last", "dtype": "bf16"}
    common = {"name": "fwd 72x56 s2 K7 channels_last bf16", "case": case, "local": 0, "ldl": 0, "stl": 0}
    before = {**common, "tile": [64, 1, 16, 4], "bound": 4.0, "stack": 0, "regs": 136}  # an old row: no lanes_used
    after = {**common, "tile": [16, 4, 32, 4], "bound": 2.0, "lanes_used": 0.875, "stack": 8, "regs": 180}
    table = I.compare([before], [after])
    old = 4.0 / (72 / 128 * 28 / 32)  # per real element: 72 of 128 channels, 28 of 32 columns
    assert f"| fwd | channels_last | bf16 | 1 | {old:.2f} → 2.00 | {old:.2f} → 2.00 | 0 → 1 | 180 |" in table
    assert "| nchw |" not in I.compare([before], [])  # only cases both hold


def test_the_interpreter_is_refused_with_one_clear_error():
    proc = subprocess.run(
        [sys.executable, "bench/inspect_kernels.py", "--smoke"],
        cwd=ROOT, env=_env(TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "TRITON_INTERPRET=1" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(_MISSING is None, reason="this Triton has the JIT internals the tool uses")
def test_an_older_triton_is_refused_with_one_clear_error():
    for command in (["bench/inspect_kernels.py", "--smoke"], ["bench/inspect_bn_act.py"]):
        proc = subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2, (command, proc.stderr[-2000:])
        assert "needs Triton ≥ 3.5" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_bad_target_and_bandwidth_are_refused():
    with pytest.raises(I.InspectError, match="sm_90"):
        I.parse_target("hopper")
    assert I.parse_target("sm_80").arch == 80
    proc = subprocess.run(
        [sys.executable, "bench/inspect_kernels.py", "--copy-gbps", "0"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "--copy-gbps must be positive" in proc.stderr


SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/               @P0 BRA 0x90 ;
        /*0030*/                   LDG.E.U16 R8, desc[UR4][R6.64] ;
        /*0040*/                   FFMA R9, R8, R8, R9 ;
        /*0050*/                   SHFL.BFLY PT, R10, R9, 0x1, 0x1f ;
        /*0060*/              @!P1 BRA 0x40 ;
        /*0070*/                   STG.E.64 desc[UR4][R2.64], R4 ;
        /*0080*/               @P2 BRA 0x30 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   BRA 0xa0;
"""


def test_sass_parsing_finds_the_loop_nest_and_amortizes_the_outer_body():
    code, spans = I.loops(SASS)
    assert len(code) == 11
    assert spans == [(0x40, 0x60), (0x30, 0x80)]  # innermost first; `BRA self` is not a loop
    census = I.hot_census(SASS, inner_trips=4)
    # inner body: FFMA, SHFL, BRA once per trip; the rest of the outer body (LDG.E.U16, STG.E.64, BRA) over 4 trips
    assert census["FFMA"] == 1 and census["SHFL.BFLY"] == 1 and census["BRA"] == 1.25
    assert census["LDG.E.U16"] == 0.25 and census["STG.E.64"] == 0.25 and "LDG.E.128" not in census
    assert I.hot_census(SASS.split("/*0020*/")[0]) == {"LDC": 1, "LDG.E.128": 1}  # no loop: everything
    assert [I._width(op) for op in ("LDG.E.128", "LDG.E.64", "LDG.E", "LDG.E.U16", "STG.E.U8")] == [16, 8, 4, 2, 1]


def test_occupancy_follows_registers_warps_and_shared_memory():
    assert I.occupancy(255, 0, 4) == 8  # 8,192 registers per warp: two 4-warp blocks
    assert I.occupancy(64, 0, 4) == 32
    assert I.occupancy(32, 0, 4) == 64  # the 64-warp limit
    assert I.occupancy(32, 100 * 1024, 4) == 8  # two blocks' shared memory fit in 228 KiB


@needs_jit_internals
def test_the_fused_depthwise_layer_compiles_without_spills_and_reads_whole_vectors(tmp_path):
    """bench/inspect_bn_act.py on the first layer (16×112², every K): deps_kernels.dwconv_bn_act's four kernels
    compile for sm_90, nothing spills, the elementwise kernels read channels_last bf16 16 bytes per lane, and the
    predicted passes add up (the fused forward is the statistics kernel and the normalisation; the unfused one the
    conv and five passes over y at copy bandwidth)."""
    out = tmp_path / "bn_act.json"
    proc = subprocess.run(
        [sys.executable, "bench/inspect_bn_act.py", "--layers", "1", "--json", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["layer"], r["k"]) for r in rows] == [("C16xH112s1", 3), ("C16xH112s1", 5), ("C16xH112s1", 7)]
    for r in rows:
        assert set(r["kernels"]) == {"stats", "bn_act", "grad_reduce", "grad_elem"}
        for name, kernel in r["kernels"].items():
            assert kernel["stack"] == 0, (r["k"], name)
            if name != "stats":  # (the conv's own loads include the scalar weights)
                assert set(kernel["ldg_by_width"]) == {"16"}, (name, kernel["ldg_by_width"])  # (JSON keys)
        k = r["kernels"]
        assert r["fused"]["fwd"] == pytest.approx(k["stats"]["seconds"] + k["bn_act"]["seconds"])
        elementwise = r["stats_pass_seconds"]  # one pass over y: 256·16·112² bf16 at 4,300 GB/s
        assert elementwise == pytest.approx(256 * 16 * 112 * 112 * 2 / 4300e9)
        assert r["unfused"]["fwd"] == pytest.approx(r["shared"]["fwd"] + 5 * elementwise)
        assert r["speedup"]["fwd_bwd"] == pytest.approx(r["unfused"]["fwd_bwd"] / r["fused"]["fwd_bwd"])
    assert "| geomean | 3 |" in proc.stdout
