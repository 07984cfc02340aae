"""Tile sweep for the elastic depthwise kernels: which ``(BLOCK_C, BLOCK_H, BLOCK_W, num_warps)`` is fastest per
kernel, layout and layer class, against the tile that ``deps_kernels.elastic_dwconv._tile`` picks now.

The kernels take their tile from a fixed rule (128 contiguous bytes along the contiguous axis, 1024–2048 elements: see
``_tile``) that was written without a GPU, from the SASS counts of bench/inspect_kernels.py. This sweep is the
measurement that rule should be replaced by: for a few OFA-MBV3 w1.0 depthwise layers at batch 256 (one per spatial
size), K = 3 and 7, NCHW and channels_last, bf16, it times the forward, input-gradient and weight-gradient launchers
over twelve candidate tiles per layout and prints, per case, the default tile, the best tile and the gain. Correctness
first: every candidate's output is compared with the default tile's (forward and dx bit-identical — the per-element sum
order does not depend on the tile; dW to 1e-5 relative (norm) in fp32 accumulation, whose split order does) and a
mismatch is reported and excluded, never timed.

Timing: ``triton.testing.do_bench`` (CUDA events, L2 flushed before each repeat, median). The sweep stops starting
new cases after ``--budget-s`` seconds (Triton compiles each candidate once) and writes what it has.

    python bench/tune_dwconv.py --out tune.json --budget-s 180  # on the GPU: as many cases as fit
    DEPS_BENCH_DEVICE=cpu python bench/tune_dwconv.py --smoke   # the same code, tiny, in the Triton interpreter
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

DEVICE = os.environ.get("DEPS_BENCH_DEVICE", "cuda")
if DEVICE != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported

import torch  # noqa: E402
from deps_kernels import elastic_dwconv as E  # noqa: E402

K_MAX = 7
# (C, H_in, stride) of OFA-MBV3 w1.0 depthwise layers at e = 6, in the order they are swept (a budget cuts the tail)
LAYERS = [(144, 56, 1), (240, 28, 2), (672, 14, 1), (96, 112, 2), (960, 7, 1)]
SMOKE_LAYERS = [(5, 6, 2)]


# (BLOCK_C, BLOCK_H, BLOCK_W, num_warps): 512–4096-element tiles around the current rule's choice. The channels_last
# ones give each thread one to four positions for its 16-byte vector of channels, over which its scalar per-tap
# weight loads are shared (the rule takes two in bf16: four spilled at 5×5 and 7×7 on sm_90), and 16–128 channels
NCHW_TILES = [
    (1, 16, 64, 4), (1, 8, 64, 2), (1, 32, 64, 8), (1, 32, 32, 4), (1, 16, 32, 2), (2, 8, 64, 4),
    (2, 16, 32, 4), (4, 8, 32, 4), (4, 16, 16, 4), (8, 8, 16, 4), (16, 8, 8, 4), (8, 4, 16, 2),
]  # fmt: skip
CL_TILES = [
    (64, 1, 16, 4), (64, 2, 8, 4), (64, 1, 32, 4), (64, 2, 16, 4), (64, 1, 64, 4), (64, 1, 32, 8),
    (32, 2, 32, 4), (32, 1, 32, 4), (32, 4, 16, 4), (16, 4, 32, 4), (128, 1, 16, 4), (128, 1, 16, 8),
]  # fmt: skip

# The weight gradient's tile has a tap axis of next_power_of_2(K²) in front: these are for K = 7 (64 taps, 1024–8192
# products per program); for K = 3 (16 taps) and 5 (32) the spatial extent is multiplied by 4 and 2.
DW_NCHW_TILES = [
    (1, 1, 64, 4), (1, 1, 32, 4), (1, 2, 32, 8), (1, 1, 64, 8), (1, 2, 64, 8), (1, 1, 32, 2), (2, 1, 32, 4),
    (4, 1, 16, 4), (1, 4, 16, 4), (8, 1, 8, 4), (2, 2, 16, 4), (1, 1, 16, 2),
]  # fmt: skip
DW_CL_TILES = [
    (64, 1, 1, 4), (32, 1, 2, 4), (32, 1, 1, 2), (64, 1, 2, 8), (128, 1, 1, 8), (16, 1, 4, 4), (16, 2, 2, 4),
    (64, 1, 1, 2), (32, 2, 1, 4), (128, 1, 1, 4), (32, 1, 4, 8), (16, 1, 2, 2),
]  # fmt: skip


def candidates(layout: str, c: int, h: int, w: int, smoke: bool = False, *, kernel: str = "fwd", k: int = 7):
    """The tiles (``E._Tile``) to try for a layer (extent ``c × h × w`` of the kernel's grid): none larger than the
    layer along any axis (such a tile equals a clamped one plus masked lanes)."""
    if smoke:
        return [E._Tile(4, 2, 4, 1) if kernel != "dw" else E._Tile(2, 1, 4, 1)]
    p2 = E.triton.next_power_of_2
    if kernel == "dw":
        scale = 64 // p2(k * k)  # 1, 2 or 4
        tiles = [
            (bc, bh * scale, bw, nw) if layout == "nchw" else (bc, bh, bw * scale, nw)
            for bc, bh, bw, nw in (DW_NCHW_TILES if layout == "nchw" else DW_CL_TILES)
        ]
    else:
        tiles = NCHW_TILES if layout == "nchw" else CL_TILES
    return [E._Tile(*t) for t in tiles if t[0] <= p2(c) and t[1] <= p2(h) and t[2] <= p2(w)]


def _time(fn, device: str) -> float:
    """Median seconds of ``fn``."""
    if device == "cuda":
        import triton

        return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _case_inputs(layer, k, layout, dtype, batch, device, g):
    c, h, stride = layer
    x = torch.randn(batch, c, h, h, device=device, dtype=dtype, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, K_MAX, K_MAX, device=device, generator=g) * 0.1
    oh = E._out_size(h, k, stride)
    gy = torch.randn(batch, c, oh, oh, device=device, dtype=dtype, generator=g)
    if layout == "channels_last":
        gy = gy.contiguous(memory_format=torch.channels_last)
    return x, w, gy


def _launchers(x, w, gy, k, stride):
    """``kernel -> (run(tile) -> output, whether the output is independent of the tile bit for bit)``"""
    y = E._empty_like_layout(x, tuple(gy.shape), x.dtype)
    dx = E._empty_like_layout(x, tuple(x.shape), x.dtype)
    dw = torch.empty_like(w)
    return {
        "fwd": (lambda t: E._forward(x, w, y, k, stride, tile=t), True),
        "dx": (lambda t: E._grad_input(gy, w, dx, k, stride, tile=t), True),
        "dw": (lambda t: E._grad_weight(gy, x, dw, k, stride, accumulate=False, tile=t), False),
    }


def sweep(*, smoke: bool, budget_s: float, kernels=("fwd", "dx", "dw"), progress=print) -> list[dict]:
    device = "cpu" if DEVICE != "cuda" else "cuda"
    layers, batch = (SMOKE_LAYERS, 2) if smoke else (LAYERS, 256)
    dtype = torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    start, results = time.perf_counter(), []
    for layer, k, layout in itertools.product(layers, (3,) if smoke else (3, 7), ("nchw", "channels_last")):
        x, w, gy = _case_inputs(layer, k, layout, dtype, batch, device, g)
        for kernel, (run, exact) in _launchers(x, w, gy, k, layer[2]).items():
            if kernel not in kernels:
                continue
            if time.perf_counter() - start > budget_s:
                progress(f"budget of {budget_s:.0f} s spent: {len(results)} cases done")
                return results
            default = E._default_tile(kernel, x, gy.shape[2], gy.shape[3], k, layer[2])
            ref = run(default).clone()
            base = _time(functools.partial(run, default), device)
            best, best_t, rejected = default, base, []
            # dx programs tile the input grid divided by the stride (each covers the stride² phases)
            grid_hw = gy.shape[2:] if kernel != "dx" else [-(-d // layer[2]) for d in x.shape[2:]]
            for tile in candidates(layout, x.shape[1], *grid_hw, smoke=smoke, kernel=kernel, k=k):
                if tile == default:
                    continue
                out = run(tile)
                # fwd/dx: the same per-element sum whatever the tile; dW: the split order changes (fp32 sums)
                ok = torch.equal(out, ref) if exact else bool((out - ref).norm() <= 1e-5 * ref.norm())
                if not ok:
                    rejected.append(list(tile))
                    continue
                t = _time(functools.partial(run, tile), device)
                if t < best_t:
                    best, best_t = tile, t
            c, h, s = layer
            row = {
                "kernel": kernel,
                "layer": f"C{c}xH{h}s{s}",
                "k": k,
                "layout": layout,
                "dtype": "bf16",
                "default": list(default),
                "default_us": round(base * 1e6, 2),
                "best": list(best),
                "best_us": round(best_t * 1e6, 2),
                "gain": round(base / best_t, 3),
                "rejected": rejected,
            }
            results.append(row)
            progress(
                f"{kernel:3s} {row['layer']:12s} K{k} {layout:13s} default {tuple(default)} {row['default_us']:9.1f} µs"
                f"  best {tuple(best)} {row['best_us']:9.1f} µs  ×{row['gain']:.2f}"
                + (f"  REJECTED {len(rejected)} (wrong output)" if rejected else "")
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and one candidate (CPU interpreter)")
    parser.add_argument("--budget-s", type=float, default=180.0, help="start no new case after this many seconds")
    parser.add_argument("--kernels", default="fwd,dx,dw", help="comma list of fwd, dx, dw")
    parser.add_argument("--out", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    kernels = tuple(args.kernels.split(","))
    if not set(kernels) <= {"fwd", "dx", "dw"}:
        parser.error(f"--kernels: choose from fwd, dx, dw; got {args.kernels!r}")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here (DEPS_BENCH_DEVICE=cpu ... --smoke runs the code in the interpreter)")
    rows = sweep(smoke=args.smoke, budget_s=args.budget_s, kernels=kernels, progress=lambda s: print(s, flush=True))
    if args.out:
        meta = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (interpreter)"}
        meta |= {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    bad = [r for r in rows if r["rejected"]]
    if bad:
        print(f"{len(bad)} case(s) had candidates with wrong outputs: a kernel bug at those tiles", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
