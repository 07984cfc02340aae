"""What the compiler makes of the elastic depthwise kernels on a CUDA target, read without a GPU.

Triton compiles for a named target on any machine: its wheel carries ``ptxas`` and ``cuobjdump``. This tool runs
the launchers of :mod:`deps_kernels.elastic_dwconv` on meta tensors shaped like the benchmark's layers (OFA-MBV3 w1.0
at batch 256), records each kernel launch instead of starting it (the launchers' ``launch`` argument), specializes the
arguments exactly as Triton's JIT does at a launch (integers equal to 1 or divisible by 16, 16-byte aligned
pointers: the CUDA caching allocator's), compiles them for the target (default ``sm_90``, the H100/H200) and reads the
resource report and the SASS: registers, shared and local memory (spills), the global loads by width, barriers and
shuffles — METHOD.md's "read what costs no device time". A kernel that would fail to compile on the GPU fails here.

From those counts it predicts, per element, where the time of these memory-bound kernels can go, in SM clock cycles
(a model, stated so that a GPU run can refute it):

- ``LSU``: the load/store path. Each warp-wide global load or store costs ``max(1, bytes per lane / 4)`` cycles of
  the SM's 128 B/clk L1 (every load assumed an L1 hit; a 2-byte access costs a full cycle like a 4-byte one; spills
  to local memory count alike), each shared-memory access one.
- ``SHFL``: one cycle per warp-wide shuffle (32 lanes per clock per SM).
- ``issue``: every instruction, at four warp-instructions per clock per SM (the four schedulers): index arithmetic
  and bf16 conversions count here.
- ``DRAM``: the fewest bytes per element (inputs read and outputs written once) over the per-SM share of the copy
  bandwidth (``--copy-gbps`` over SMs × clock; by default 4,300 GB/s, 132 SMs, 1.98 GHz, measured on this
  workplace's H200 on 2026-10-28).
- Per element means per real element: a tile running past the layer's edge (channels, rows, columns) computes
  elements that are thrown away (``lanes_used``, the share kept).
- ``bound`` = max(LSU + SHFL, issue) / DRAM: over 1, the kernel is predicted to be limited by its instructions, not
  by DRAM, to at most 1 / bound of the memory roofline.

Counts are static. The forward and input-gradient kernels have no loops (every tap unrolled), so theirs are per
program (a dx program covers its tile at each of the stride² input phases); the weight-gradient kernel's are one
trip of its inner loop over column tiles plus its share of the row loop around it (:func:`hot_census`), per element
of one tile (``dy``).

    python bench/inspect_kernels.py                       # every layer × K × layout × dtype, a table
    python bench/inspect_kernels.py --json sass.json --target sm_80
    python bench/inspect_kernels.py --smoke               # a few cases (the CI test)
    python bench/inspect_kernels.py --compare before.json after.json   # geometric means, before → after

Run it without ``TRITON_INTERPRET`` (the interpreter has nothing to compile), with Triton ≥ 3.5 (it drives the JIT's
private specialization code; older versions are refused with one line).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root, for bench.*
from bench.dwconv_layers import LAYERS  # noqa: E402

K_MAX = 7
BATCH = 256
SMOKE_CASES = [  # (kernel, layer, K, layout, dtype): each kernel, both layouts and dtypes, K 3 and 7, stride 1 and 2
    ("fwd", (144, 56, 1), 7, "channels_last", "bf16"),
    ("fwd", (72, 56, 2), 3, "nchw", "fp32"),
    ("dx", (144, 56, 2), 7, "nchw", "bf16"),
    ("dx", (240, 28, 1), 3, "channels_last", "fp32"),
    ("dw", (480, 14, 1), 7, "channels_last", "bf16"),
    ("dw", (96, 112, 2), 3, "nchw", "fp32"),
    ("dx", (72, 56, 2), 5, "channels_last", "bf16"),  # a width that is not a multiple of 16
]
KERNELS = ["fwd", "dx", "dw"]
LAYOUTS = ["nchw", "channels_last"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# sm_90 (H100/H200): 64 K registers, 64 warps, 32 blocks and 228 KiB of shared memory (1 KiB reserved per block) per SM
SM_LIMITS = {"regs": 65536, "warps": 64, "blocks": 32, "shared": 228 * 1024, "shared_reserved": 1024}
H200 = {"copy_gbps": 4300.0, "sms": 132, "clock_ghz": 1.98}


class InspectError(RuntimeError):
    """The kernels cannot be compiled or read here (interpreter on, Triton internals or tools missing)."""


@dataclasses.dataclass(frozen=True)
class Case:
    kernel: str  # fwd | dx | dw
    layer: tuple[int, int, int]  # (C', H_in, stride)
    k: int
    layout: str
    dtype: str

    @property
    def name(self) -> str:
        c, h, s = self.layer
        return f"{self.kernel} {c}x{h} s{s} K{self.k} {self.layout} {self.dtype}"


@dataclasses.dataclass
class Launch:
    kernel: Any  # the triton JITFunction
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _kernels_module():
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise InspectError("TRITON_INTERPRET=1 is set: the interpreter compiles nothing; run without it")
    from deps_kernels import elastic_dwconv as E

    if E.INTERPRETED:
        raise InspectError("deps_kernels.elastic_dwconv was imported under the Triton interpreter")
    return E


def record_launches(case: Case, *, batch: int = BATCH, sm_count: int = H200["sms"]) -> list[Launch]:
    """The launches the launcher of ``case.kernel`` makes for that layer (meta tensors: nothing is allocated)."""
    E = _kernels_module()
    c, h, s = case.layer
    k, dtype = case.k, DTYPES[case.dtype]
    fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format
    oh = E._out_size(h, k, s)

    def act(size: int) -> torch.Tensor:
        return torch.empty((batch, c, size, size), dtype=dtype, device="meta", memory_format=fmt)

    # the stored 7×7 kernel is an fp32 parameter whatever the activations' dtype (bf16 autocast, the benchmark)
    weight = torch.empty((c, 1, K_MAX, K_MAX), dtype=torch.float32, device="meta")
    launches: list[Launch] = []

    def record(kernel, grid, *args, **kwargs):
        launches.append(Launch(kernel, tuple(grid), args, kwargs))

    if case.kernel == "fwd":
        E._forward(act(h), weight, act(oh), k, s, launch=record)
    elif case.kernel == "dx":
        E._grad_input(act(oh), weight, act(h), k, s, launch=record)
    elif case.kernel == "dw":  # fused accumulation into an fp32 accumulator view, as the shrinking step does it
        out = torch.empty(weight.shape, dtype=torch.float32, device="meta")
        E._grad_weight(act(oh), act(h), out, k, s, accumulate=True, scale=0.5, sm_count=sm_count, launch=record)
    else:
        raise ValueError(f"kernel must be one of {KERNELS}; got {case.kernel!r}")
    return launches


def parse_target(name: str):
    """``sm_90`` / ``sm_80`` / ``sm_100`` → Triton's GPUTarget."""
    from triton.backends.compiler import GPUTarget

    m = re.fullmatch(r"sm_?(\d+)a?", name)
    if not m:
        raise InspectError(f"target must look like sm_90; got {name!r}")
    return GPUTarget("cuda", int(m.group(1)), 32)


def jit_internals_missing() -> str | None:
    """Why this Triton cannot be driven by the tool, or None. The tool specializes arguments through the JIT's private
    binder (``create_function_from_signature``, returning ``(bound, specialization, options)``) and
    ``JITFunction._pack_args``: Triton 3.5 onwards (checked with 3.6.0 and 3.7.1); 3.3 and 3.4 inline the packing in
    ``JITFunction.run`` and 3.2's binder returns five values."""
    try:
        from triton.compiler import make_backend  # noqa: F401
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
    except ImportError as err:
        return f"this Triton ({_triton_version()}) lacks the JIT internals the tool uses ({err}); needs Triton ≥ 3.5"
    if not hasattr(JITFunction, "_pack_args"):
        return f"this Triton ({_triton_version()}) lacks JITFunction._pack_args, used by the tool; needs Triton ≥ 3.5"
    return None


@functools.cache
def _backend_and_binder(kernel, target):
    missing = jit_internals_missing()
    if missing:
        raise InspectError(missing)
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    return backend, create_function_from_signature(kernel.signature, kernel.params, backend)


def _triton_version() -> str:
    import triton

    return triton.__version__


def specialize(launch: Launch, target) -> tuple[Any, dict, dict, dict, Any]:
    """``(backend, signature, constexprs, attrs, options)`` exactly as the JIT would derive them at this launch."""
    backend, binder = _backend_and_binder(launch.kernel, target)
    bound, spec, opts = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = launch.kernel._pack_args(backend, launch.kwargs, bound, spec, opts)
    return backend, signature, constexprs, attrs, options


def compile_launch(launch: Launch, target) -> Any:
    """Compile one recorded launch for ``target`` (Triton's on-disk cache applies); returns the CompiledKernel."""
    import triton
    from triton.compiler import ASTSource

    _, signature, constexprs, attrs, options = specialize(launch, target)
    source = ASTSource(launch.kernel, signature, constexprs, attrs)
    return triton.compile(source, target=target, options=options.__dict__)


def _specialization_key(launch: Launch, target) -> str:
    _, signature, constexprs, attrs, options = specialize(launch, target)
    return repr((launch.kernel.fn.__qualname__, target, signature, constexprs, attrs, options))


def _cuobjdump() -> str:
    import triton

    path = getattr(getattr(getattr(triton, "knobs", None), "nvidia", None), "cuobjdump", None)
    path = getattr(path, "path", None) or str(Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump")
    if not Path(path).is_file():
        raise InspectError(f"no cuobjdump at {path} (Triton's CUDA backend carries one)")
    return path


_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", re.M)
_RESOURCES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _width(opcode: str) -> int:
    """Bytes per lane of a global load/store opcode (LDG.E.128 → 16, LDG.E.U16 → 2, LDG.E → 4)."""
    parts = opcode.split(".")
    for token, width in (("128", 16), ("64", 8), ("U16", 2), ("S16", 2), ("U8", 1), ("S8", 1)):
        if token in parts:
            return width
    return 4


def loops(sass: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, int]]]:
    """The instructions ``(address, opcode, operands)`` and the loops ``(first, last address)`` of a kernel's SASS
    (a loop is a backward branch; the trailing ``BRA`` to itself is not one), innermost first."""
    code = [(int(a, 16), op, rest.strip()) for a, op, rest in _INSTRUCTION.findall(sass)]
    spans = set()
    for addr, op, rest in code:
        m = re.fullmatch(r"(0x[0-9a-f]+)", rest)
        if op.split(".")[0] == "BRA" and m and int(m.group(1), 16) < addr:
            spans.add((int(m.group(1), 16), addr))
    return code, sorted(spans, key=lambda s: s[1] - s[0])


def hot_census(sass: str, inner_trips: float = 1.0) -> Counter:
    """Opcode counts of one trip of the loop a kernel spends its time in: without loops, the whole kernel; with one,
    its body; with a loop nest, the innermost body plus the rest of the enclosing loop's body over ``inner_trips``
    (the inner loop's trip count per outer trip: the weight gradient's column tiles per row)."""
    code, spans = loops(sass)
    if not spans:
        return Counter(op for _, op, _ in code)
    inner = spans[0]
    outer = next((s for s in spans[1:] if s[0] <= inner[0] and inner[1] <= s[1]), None)
    census = Counter(op for a, op, _ in code if inner[0] <= a <= inner[1])
    if outer is not None:
        for a, op, _ in code:
            if outer[0] <= a <= outer[1] and not inner[0] <= a <= inner[1]:
                census[op] += 1 / inner_trips
    return census


def read_cubin(cubin: bytes, inner_trips: float = 1.0) -> dict[str, Any]:
    """Resources of one kernel's cubin and the opcode census of its :func:`hot_census`, through cuobjdump."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        tool = _cuobjdump()
        usage = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True, text=True, check=True)
        sass = subprocess.run([tool, "--dump-sass", str(path)], capture_output=True, text=True, check=True).stdout
    m = _RESOURCES.search(usage.stdout)
    if not m:
        raise InspectError(f"cuobjdump printed no resource usage: {usage.stdout[:200]!r}")
    ops = Counter({op: round(n, 2) for op, n in hot_census(sass, inner_trips).items()})
    loads = {op: n for op, n in ops.items() if op.startswith("LDG")}
    stores = {op: n for op, n in ops.items() if op.startswith("STG")}
    local = {op: n for op, n in ops.items() if op.split(".")[0] in ("LDL", "STL")}  # spills

    def count(prefix: str) -> int:
        return sum(n for op, n in ops.items() if op.split(".")[0] == prefix)

    return {
        "regs": int(m.group(1)),
        "stack": int(m.group(2)),
        "shared": int(m.group(3)),
        "local": int(m.group(4)),
        "instructions": round(sum(ops.values()), 1),  # one trip of the hot loop
        "loops": len(loops(sass)[1]),
        "ldg": loads,
        "stg": stores,
        "ldg_by_width": dict(sorted(_by_width(loads).items())),
        "stg_by_width": dict(sorted(_by_width(stores).items())),
        "local_by_width": dict(sorted(_by_width(local).items())),
        "lds": count("LDS"),
        "sts": count("STS"),
        "ldl": count("LDL"),
        "stl": count("STL"),
        "bar": count("BAR"),
        "shfl": count("SHFL"),
        "ffma": count("FFMA"),
    }


def _by_width(ops: dict[str, int]) -> Counter:
    out: Counter = Counter()
    for op, n in ops.items():
        out[_width(op)] += n
    return out


def occupancy(regs: int, shared: int, num_warps: int, limits: dict[str, int] = SM_LIMITS) -> int:
    """Resident warps per SM for a kernel of ``num_warps`` warps (registers allocated per warp in units of 256)."""
    per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    blocks = min(limits["regs"] // (per_warp * num_warps), limits["blocks"], limits["warps"] // num_warps)
    if shared:
        blocks = min(blocks, limits["shared"] // (shared + limits["shared_reserved"]))
    return blocks * num_warps


def _min_bytes_per_element(case: Case) -> float:
    """Fewest DRAM bytes per element the kernel produces (fwd: y, dx: dx) or consumes (dw: dy)."""
    b = DTYPES[case.dtype].itemsize
    s2 = case.layer[2] ** 2
    if case.kernel == "fwd":  # read x (s² inputs per output), write y
        return (s2 + 1) * b
    if case.kernel == "dx":  # read dy (1/s² per dx element), write dx
        return (1 / s2 + 1) * b
    return (1 + s2) * b  # dw: read dy and x (s² per dy element); the dW written is negligible


def lanes_used(case: Case, tile: tuple[int, ...]) -> float:
    """The share of the programs' elements that are real: the last tile along each axis may run past the layer
    (72 channels in 64-channel tiles: 128 computed, 72 kept). Costs per element are per real element."""
    from deps_kernels.elastic_dwconv import _out_size  # (plain Python: no compilation, interpreter or not)

    c, h, s = case.layer
    oh = _out_size(h, case.k, s)
    grid = {"fwd": (oh, oh), "dw": (oh, oh), "dx": (math.ceil(h / s), math.ceil(h / s))}[case.kernel]
    share = 1.0
    for size, block in zip((c, *grid), tile[:3]):
        share *= size / (math.ceil(size / block) * block)
    if case.kernel == "dx":  # the stride² phases of the last (a, b) tile may run past the input
        share *= (h / (math.ceil(h / s) * s)) ** 2
    return share


_CUBINS: dict[str, bytes] = {}  # per-process memo of compiled binaries by specialization (a cache, not state)


def inspect_case(case: Case, target, *, hw: dict[str, float] = H200) -> dict[str, Any]:
    """Compile the case's main kernel (the forward, the input gradient, the weight gradient's partial sums) and
    return its resources, opcode census and the per-element predictions described in the module docstring."""
    launch = record_launches(case, sm_count=int(hw["sms"]))[0]
    kw = launch.kwargs
    # the weight gradient sweeps each row of work in column tiles (its inner loop)
    out = _kernels_module()._out_size(case.layer[1], case.k, case.layer[2])
    trips = math.ceil(out / kw["BLOCK_W"]) if case.kernel == "dw" else 1
    key = _specialization_key(launch, target)
    if key not in _CUBINS:  # layers differing only in sizes Triton does not specialize on share one binary
        _CUBINS[key] = compile_launch(launch, target).asm["cubin"]
    info = read_cubin(_CUBINS[key], trips)
    tile = (kw["BLOCK_C"], kw["BLOCK_H"], kw["BLOCK_W"], kw["num_warps"])
    # a dx program computes its tile at each of the stride² phases (the input positions a·s + p)
    phases = case.layer[2] ** 2 if case.kernel == "dx" else 1
    per_thread = kw["BLOCK_C"] * kw["BLOCK_H"] * kw["BLOCK_W"] * phases / (32 * kw["num_warps"])
    used = lanes_used(case, tile)
    clk = clocks_per_element(info, 32 * per_thread * used, _min_bytes_per_element(case), hw)
    return {
        "case": dataclasses.asdict(case),
        "name": case.name,
        "target": f"sm_{target.arch}",
        "batch": BATCH,
        "triton": _triton_version(),
        "tile": tile,
        "elements_per_thread": per_thread,
        "lanes_used": used,
        **info,
        "warps_per_sm": occupancy(info["regs"], info["shared"], kw["num_warps"]),
        "ldg_per_element": sum(info["ldg"].values()) / per_thread,
        "load_bytes_per_element": sum(w * n for w, n in info["ldg_by_width"].items()) / per_thread,
        **clk,
        "bound": max(clk["lsu_clk_per_element"] + clk["shfl_clk_per_element"], clk["issue_clk_per_element"])
        / clk["dram_clk_per_element"],
    }


def clocks_per_element(info: dict[str, Any], lanes: float, min_bytes: float, hw: dict[str, float] = H200) -> dict:
    """The model's SM clocks per element (module docstring) from a kernel's :func:`read_cubin` counts, its useful
    elements per warp (``lanes``) and its fewest DRAM bytes per element."""
    global_clk = sum(
        max(1.0, w / 4) * n for by in ("ldg_by_width", "stg_by_width", "local_by_width") for w, n in info[by].items()
    )
    return {
        "lsu_clk_per_element": (global_clk + info["lds"] + info["sts"]) / lanes,
        "shfl_clk_per_element": info["shfl"] / lanes,
        "issue_clk_per_element": info["instructions"] / (4 * lanes),  # 4 schedulers, one warp-instruction a clock
        "dram_clk_per_element": min_bytes / (hw["copy_gbps"] / (hw["sms"] * hw["clock_ghz"])),
    }


def all_cases() -> list[Case]:
    return [
        Case(kernel, layer, k, layout, dtype)
        for kernel in KERNELS
        for layer in LAYERS
        for k in (3, 5, 7)
        for layout in LAYOUTS
        for dtype in DTYPES
    ]


def _widths(by_width: dict) -> str:
    return " ".join(f"{n}×{w}B" for w, n in sorted(by_width.items(), key=lambda kv: -int(kv[0]))) or "-"


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        "| case | tile (C,H,W,warps) | regs | shared | local | warps/SM | global loads | stores | bar | shfl "
        "| LDG/elt | LSU clk/elt | SHFL clk/elt | issue clk/elt | DRAM clk/elt | bound |\n"
        "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['name']} | {tuple(r['tile'])} | {r['regs']} | {r['shared']} | {r['local']} | {r['warps_per_sm']} "
            f"| {_widths(r['ldg_by_width'])} | {_widths(r['stg_by_width'])} | {r['bar']} | {r['shfl']} "
            f"| {r['ldg_per_element']:.1f} | {r['lsu_clk_per_element']:.3f} | {r['shfl_clk_per_element']:.3f} "
            f"| {r['issue_clk_per_element']:.3f} | {r['dram_clk_per_element']:.3f} | {r['bound']:.2f} |"
        )
    return "\n".join(lines)


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def _spills(row: dict[str, Any]) -> bool:
    return bool(row["local"] or row["stack"] or row["ldl"] or row["stl"])


def summarize(rows: list[dict[str, Any]]) -> str:
    """Per kernel × layout × dtype: the geometric mean of ``bound`` over layers and K, and the worst case."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        c = r["case"]
        groups.setdefault((c["kernel"], c["layout"], c["dtype"]), []).append(r)
    lines = [
        "| kernel | layout | dtype | cases | bound, geomean | worst | spills | max regs |",
        "|---|---|---|---:|---:|---|---:|---:|",
    ]
    for (kernel, layout, dtype), rs in groups.items():
        gm = _geomean([r["bound"] for r in rs])
        worst = max(rs, key=lambda r: r["bound"])
        spills = sum(_spills(r) for r in rs)
        lines.append(
            f"| {kernel} | {layout} | {dtype} | {len(rs)} | {gm:.2f} | {worst['bound']:.2f} "
            f"({worst['name'].split(' ', 1)[1]}) | {spills} | {max(r['regs'] for r in rs)} |"
        )
    return "\n".join(lines)


def _bound(row: dict[str, Any]) -> float:
    """A row's bound per real element (rows written before ``lanes_used`` counted every computed element)."""
    if "lanes_used" in row:
        return row["bound"]
    return row["bound"] / lanes_used(Case(**{**row["case"], "layer": tuple(row["case"]["layer"])}), row["tile"])


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """Per kernel × layout × dtype, over the cases both files hold: the geometric mean of ``bound`` before → after
    (all K, and K = 7 alone), the cases spilling, and the most registers after."""
    old = {r["name"]: r for r in before}
    groups: dict[tuple[str, str, str], list[tuple[dict, dict]]] = {}
    for r in after:
        if r["name"] in old:
            c = r["case"]
            groups.setdefault((c["kernel"], c["layout"], c["dtype"]), []).append((old[r["name"]], r))

    def gm(pairs, i):
        return _geomean([_bound(p[i]) for p in pairs])

    lines = [
        "| kernel | layout | dtype | cases | bound: before → after | K = 7 only | cases spilling | max regs after |",
        "|---|---|---|---:|---|---|---|---:|",
    ]
    for (kernel, layout, dtype), pairs in groups.items():
        k7 = [p for p in pairs if p[1]["case"]["k"] == 7]
        lines.append(
            f"| {kernel} | {layout} | {dtype} | {len(pairs)} | {gm(pairs, 0):.2f} → {gm(pairs, 1):.2f} "
            f"| {gm(k7, 0):.2f} → {gm(k7, 1):.2f} | {sum(_spills(a) for a, _ in pairs)} → "
            f"{sum(_spills(b) for _, b in pairs)} | {max(b['regs'] for _, b in pairs)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="sm_90", help="CUDA target, e.g. sm_90 (H100/H200), sm_80 (A100)")
    parser.add_argument("--json", metavar="FILE", help="write every row as JSON")
    parser.add_argument("--smoke", action="store_true", help="seven cases (each kernel, layout and dtype)")
    parser.add_argument("--kernel", choices=KERNELS, action="append", help="only these kernels (repeatable)")
    parser.add_argument("--layout", choices=LAYOUTS, action="append", help="only these layouts (repeatable)")
    parser.add_argument("--dtype", choices=list(DTYPES), action="append", help="only these dtypes (repeatable)")
    parser.add_argument("--copy-gbps", type=float, default=H200["copy_gbps"], help="measured copy bandwidth")
    parser.add_argument(
        "--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two --json files (compiles nothing)"
    )
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(Path(f).read_text()) for f in args.compare)
        print(compare(before, after))
        return 0
    if args.copy_gbps <= 0:
        parser.error(f"--copy-gbps must be positive; got {args.copy_gbps}")
    try:
        target = parse_target(args.target)
        cases = [Case(*c) for c in SMOKE_CASES] if args.smoke else all_cases()
        for name in ("kernel", "layout", "dtype"):
            if getattr(args, name):
                cases = [c for c in cases if getattr(c, name) in getattr(args, name)]
        hw = {**H200, "copy_gbps": args.copy_gbps}
        rows = []
        from tqdm import tqdm

        for case in tqdm(cases, desc=f"compile for {args.target}", unit="kernel", file=sys.stderr):
            rows.append(inspect_case(case, target, hw=hw))
    except InspectError as err:
        print(f"inspect_kernels: {err}", file=sys.stderr)
        return 2
    if args.json:
        lines = ",\n".join(json.dumps(r, separators=(",", ":"), default=str) for r in rows)  # a row per line
        Path(args.json).write_text(f"[\n{lines}\n]\n")
    print(render(rows))
    print()
    print(summarize(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
