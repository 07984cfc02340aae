"""The depthwise layer (conv + BN + activation) fused and unfused, predicted from sm_90 SASS without a GPU.

For each OFA-MBV3 w1.0 depthwise layer at batch 256 and each K, this compiles the kernels of
:mod:`deps_kernels.dwconv_bn_act` (the conv with BN statistics in its epilogue, normalisation + activation, and the
backward's reduction and dL/dy passes) and the depthwise kernels both paths share (the forward, which the unfused path
runs alone, dx, dW) through ``bench/inspect_kernels.py`` and predicts each kernel's time with that tool's model: the
largest of its load/store + shuffle, issue and DRAM clocks per element, times its elements, over SMs × clock.

The unfused layer's BN and activation are PyTorch's elementwise kernels, taken to run at the copy bandwidth (the best
they can do, so the predicted speedup is a lower estimate where they do not): forward 5 passes over ``y``'s size
(statistics read; normalise read + write; activation read + write), backward 8 (activation backward 3, BN backward
5), against the fused op's 2 + 3 in its own kernels (see deps_kernels.dwconv_bn_act's docstring).

    python bench/inspect_bn_act.py                       # channels_last bf16 (the trainer's layout on a GPU)
    python bench/inspect_bn_act.py --layout nchw --json bn_act.json

A model, stated so that ``bench/test_bench_dwconv_bn_act.py`` on a GPU can refute it. Run without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root, for bench.*
from bench import inspect_kernels as I  # noqa: E402

KERNELS = (3, 5, 7)
FUSED = ("stats", "bn_act", "grad_reduce", "grad_elem")  # the fused op's own kernels, in launch order
UNFUSED_PASSES = {"fwd": 5, "bwd": 8}  # PyTorch's BN + activation, passes over y's size at copy bandwidth


def _record(layer: tuple[int, int, int], k: int, layout: str, dtype: str) -> dict[str, I.Launch]:
    """The launches of the fused op's kernels for this layer (meta tensors: nothing allocated or run)."""
    from deps_kernels import dwconv_bn_act as B

    E = I._kernels_module()
    c, h, s = layer
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    dt = I.DTYPES[dtype]
    oh = E._out_size(h, k, s)

    def act(size: int) -> torch.Tensor:
        return torch.empty((I.BATCH, c, size, size), dtype=dt, device="meta", memory_format=fmt)

    launches: list[I.Launch] = []

    def record(kernel, grid, *args, **kwargs):
        launches.append(I.Launch(kernel, tuple(grid), args, kwargs))

    weight = torch.empty((c, 1, I.K_MAX, I.K_MAX), dtype=torch.float32, device="meta")
    vec = torch.empty(c, device="meta")
    B._forward_stats(act(h), weight, act(oh), k, s, launch=record)
    B._bn_act(act(oh), act(oh), vec, vec, "h_swish", launch=record)
    B._bn_act_grad(act(oh), act(oh), act(oh), vec, vec, vec, vec, "h_swish", training=True, launch=record)
    return dict(zip(FUSED, launches))


def _seconds(clk: dict[str, float], elements: int, hw: dict[str, float]) -> float:
    per = max(clk["lsu_clk_per_element"] + clk["shfl_clk_per_element"], clk["issue_clk_per_element"])
    return max(per, clk["dram_clk_per_element"]) * elements / (hw["sms"] * hw["clock_ghz"] * 1e9)


def predict_layer(layer, k, layout, dtype, target, *, hw: dict[str, float] = I.H200) -> dict[str, Any]:
    """Predicted seconds per kernel and pass, fused and unfused, and their ratios (unfused / fused)."""
    c, h, s = layer
    oh = I._kernels_module()._out_size(h, k, s)
    b = I.DTYPES[dtype].itemsize
    y_elems = I.BATCH * c * oh * oh
    kernels: dict[str, dict[str, Any]] = {}
    for name, launch in _record(layer, k, layout, dtype).items():
        kw = launch.kwargs
        tile = (kw["BLOCK_C"], kw["BLOCK_H"], kw["BLOCK_W"], kw["num_warps"])
        per_thread = tile[0] * tile[1] * tile[2] / (32 * tile[3])
        # the share of real elements: the conv's tile over the output grid, the elementwise ones over y as a 1×1 conv
        used = I.lanes_used(I.Case("fwd", layer if name == "stats" else (c, oh, 1), k if name == "stats" else 1,
                                   layout, dtype), tile)  # fmt: skip
        info = I.read_cubin(I.compile_launch(launch, target).asm["cubin"])
        # fewest bytes per y element: stats reads x (s² per y) and writes y; bn_act reads y, writes out; the
        # reduction reads d out and y; dL/dy reads both and writes it
        min_bytes = {"stats": (s * s + 1) * b, "bn_act": 2 * b, "grad_reduce": 2 * b, "grad_elem": 3 * b}[name]
        clk = I.clocks_per_element(info, 32 * per_thread * used, min_bytes, hw)
        kernels[name] = {
            "regs": info["regs"],
            "stack": info["stack"],
            "ldg_by_width": info["ldg_by_width"],
            "issue_per_element": info["instructions"] / (per_thread * used),
            "seconds": _seconds(clk, y_elems, hw),
        }
    shared = {}  # the depthwise kernels both paths run: inspect_kernels' own cases
    for kernel in ("fwd", "dx", "dw"):
        row = I.inspect_case(I.Case(kernel, layer, k, layout, dtype), target, hw=hw)
        elems = I.BATCH * c * (h * h if kernel == "dx" else oh * oh)
        shared[kernel] = _seconds(row, elems, hw)
    elementwise = y_elems * b / (hw["copy_gbps"] * 1e9)  # one pass over y's size at copy bandwidth
    fused_fwd = kernels["stats"]["seconds"] + kernels["bn_act"]["seconds"]
    fused_bwd = kernels["grad_reduce"]["seconds"] + kernels["grad_elem"]["seconds"] + shared["dx"] + shared["dw"]
    unfused_fwd = shared["fwd"] + UNFUSED_PASSES["fwd"] * elementwise
    unfused_bwd = UNFUSED_PASSES["bwd"] * elementwise + shared["dx"] + shared["dw"]
    return {
        "layer": f"C{c}xH{h}s{s}",
        "k": k,
        "layout": layout,
        "dtype": dtype,
        "kernels": kernels,
        "shared": shared,
        "stats_epilogue_seconds": kernels["stats"]["seconds"] - shared["fwd"],  # what the statistics add to the conv
        "stats_pass_seconds": elementwise,  # what reading y once more for them costs instead
        "fused": {"fwd": fused_fwd, "fwd_bwd": fused_fwd + fused_bwd},
        "unfused": {"fwd": unfused_fwd, "fwd_bwd": unfused_fwd + unfused_bwd},
        "speedup": {"fwd": unfused_fwd / fused_fwd, "fwd_bwd": (unfused_fwd + unfused_bwd) / (fused_fwd + fused_bwd)},
    }


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| layer | K | fused fwd | unfused fwd | fwd | fused fwd+bwd | unfused fwd+bwd | fwd+bwd "
        "| statistics: epilogue / a pass | max regs | spills |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        regs = max(v["regs"] for v in r["kernels"].values())
        spills = [n for n, v in r["kernels"].items() if v["stack"]]
        lines.append(
            f"| {r['layer']} | {r['k']} | {r['fused']['fwd'] * 1e6:.1f} µs | {r['unfused']['fwd'] * 1e6:.1f} µs | "
            f"{r['speedup']['fwd']:.2f}× | {r['fused']['fwd_bwd'] * 1e6:.1f} µs | "
            f"{r['unfused']['fwd_bwd'] * 1e6:.1f} µs | {r['speedup']['fwd_bwd']:.2f}× | "
            f"{r['stats_epilogue_seconds'] / r['stats_pass_seconds']:.2f} | {regs} | {', '.join(spills) or 'none'} |"
        )
    for k in sorted({r["k"] for r in rows}):
        rs = [r for r in rows if r["k"] == k]
        lines.append(
            f"| geomean | {k} | | | {_geomean([r['speedup']['fwd'] for r in rs]):.2f}× | | | "
            f"{_geomean([r['speedup']['fwd_bwd'] for r in rs]):.2f}× | "
            f"{_geomean([max(r['stats_epilogue_seconds'], 1e-12) / r['stats_pass_seconds'] for r in rs]):.2f} | | |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/inspect_bn_act.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="sm_90", help="CUDA target, e.g. sm_90 (H100/H200)")
    parser.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last")
    parser.add_argument("--dtype", choices=list(I.DTYPES), default="bf16")
    parser.add_argument("--layers", type=int, default=len(I.LAYERS), help="only the first N layers (a quick look)")
    parser.add_argument("--json", metavar="FILE", help="write every row as JSON")
    args = parser.parse_args(argv)
    try:
        target = I.parse_target(args.target)
        cases = [(layer, k) for layer in I.LAYERS[: args.layers] for k in KERNELS]
        rows = [
            predict_layer(layer, k, args.layout, args.dtype, target)
            for layer, k in tqdm(cases, desc=f"compile for {args.target}", unit="layer")
        ]
    except I.InspectError as err:
        print(f"bench/inspect_bn_act.py: {err}", file=sys.stderr)
        return 2
    print(
        f"Triton {I._triton_version()}, {args.target}, {args.layout} {args.dtype}, batch {I.BATCH}; epilogue / a "
        "pass: the time the statistics add to the conv over one read of y at copy bandwidth"
    )
    print(render(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
