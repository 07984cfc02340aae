"""The device's two ceilings, measured (METHOD.md: "measure the two ceilings once on the device machine").

- **copy bandwidth**: a large device-to-device copy, bytes read plus bytes written over the median time; the
  depthwise convolution's roofline (``bench/test_bench_dwconv.py``, ``bench/report.py --ceilings``) is this figure;
- **bf16 matrix rate**: an n×n×n bf16 matrix product, 2n³ FLOPs over the median time.

Random inputs (never zeros), warm-up first, median of repeats, CUDA events around each repeat. Several source buffers
are rotated so that a copy smaller than the L2 cannot be served from it (the default sizes are far above any L2).

    python bench/ceilings.py --out ceilings.json         # on the GPU: 2 GiB copies, 8192³ product (~10 s)
    python bench/ceilings.py --device cpu --small        # the same code at a tiny size (the CI smoke test)

Writes JSON: ``{"device", "torch", "copy_gbps", "copy_bytes", "bf16_tflops", "matmul_n", "date"}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import torch

__all__ = ["copy_bandwidth", "matmul_rate", "measure", "median_seconds"]


def median_seconds(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls: CUDA events on a GPU, the host clock elsewhere."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int, *, buffers: int = 3, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in GB/s (10⁹ bytes), counting bytes read plus bytes written."""
    g = torch.Generator(device=device).manual_seed(0)
    srcs = [torch.rand(nbytes // 4, device=device, generator=g) for _ in range(buffers)]
    dst = torch.empty_like(srcs[0])
    turn = iter(range(1 << 62))

    def copy():
        dst.copy_(srcs[next(turn) % buffers])

    seconds = median_seconds(copy, device, repeats, warmup=3)
    return 2 * dst.numel() * dst.element_size() / seconds / 1e9


def matmul_rate(device: torch.device, n: int, *, repeats: int = 10) -> float:
    """bf16 n×n×n matrix product rate in TFLOP/s (2n³ FLOPs per product)."""
    g = torch.Generator(device=device).manual_seed(1)
    a = torch.randn(n, n, device=device, generator=g).to(torch.bfloat16)
    b = torch.randn(n, n, device=device, generator=g).to(torch.bfloat16)
    seconds = median_seconds(lambda: a @ b, device, repeats, warmup=3)
    return 2 * n**3 / seconds / 1e12


def _significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def measure(device: torch.device, *, small: bool = False) -> dict:
    nbytes, n = (1 << 20, 128) if small else (2 << 30, 8192)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "device": name,
        "torch": torch.__version__,
        "copy_bytes": nbytes,
        "copy_gbps": _significant(copy_bandwidth(device, nbytes)),
        "matmul_n": n,
        # 4 significant digits, not 2 decimals: a loaded CPU's 128³ product (~0.004 TFLOP/s) rounded to 0.0
        "bf16_tflops": _significant(matmul_rate(device, n)),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--small", action="store_true", help="tiny sizes: a smoke test of this script")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --small for a smoke test)")
    result = measure(device, small=args.small)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
