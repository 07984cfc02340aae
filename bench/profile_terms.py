"""Where a shrinking step's time goes: the cost of each term (full model, smallest, uniform subnets) against its MACs.

Why is a shrinking epoch of the embedded default not (1 + Σ subnet MACs / full MACs) × an FM-warmup epoch? This
times ``functional_step`` over the first j terms of the default's shrinking plans (j = 1..k; a term's cost is the
difference), over several steps' plans (the uniform subnet changes per step), with the ``deps`` program's CPU
settings, and splits each term's time between the convolutions (forward and backward, as torch.profiler names them)
and everything else (profiler self times, differenced the same way). Prints a markdown table; writes nothing.

    .venv/bin/python bench/profile_terms.py [--steps 6] [--repeats 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from deps_core.accumulate import GradAccumulator
from deps_core.config import load_preset
from deps_core.runtime import cpu_threads, tune_cpu_allocator
from deps_core.schedules import Progress
from deps_core.spaces import create_supernet
from deps_core.step import detached_state, functional_step
from deps_core.trainer import build_strategy

CONV_OPS = ("conv", "mkldnn_convolution", "thnn_conv", "_slow_conv", "convolution_backward")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _profiled(fn) -> tuple[float, float]:
    """``(convolution, all)`` self CPU time (µs) of one call, convolutions forward and backward as torch names them."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in CONV_OPS))
    return conv, sum(e.self_cpu_time_total for e in events)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="shrinking steps whose plans are timed")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()

    config = load_preset("default")
    tune_cpu_allocator()
    cpu_threads(loader_threads=config.data.num_workers or 1)  # as in deps train
    net = create_supernet(
        config.model.space, num_classes=10, generator=torch.Generator().manual_seed(0), **config.model.space_kwargs()
    ).train()
    strategy = build_strategy(config, net.spec)
    res = config.data.resolution[0]
    g = torch.Generator().manual_seed(1)
    # channels_last, as the FFCV loader yields it (on the CPU NCHW runs the convolutions 2–3× slower)
    x = torch.randn(args.batch, 3, res, res, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    params, buffers = detached_state(net)
    acc = GradAccumulator(params)
    full_macs = net.macs(net.max_arch())
    steps_per_epoch = config.data.synthetic_train_size // config.data.batch_size

    def step(terms):
        def run():
            acc.zero_()
            functional_step(net, params, buffers, acc, terms, x, y)

        return run

    by_role: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)  # s, MMACs, conv µs, all µs
    for s in range(args.steps):
        plan = strategy.plan(Progress(strategy.total_epochs - 1, s, steps_per_epoch), config.run.seed)
        before, prof_before = 0.0, (0.0, 0.0)
        for j, term in enumerate(plan.terms):
            t = _time(step(plan.terms[: j + 1]), args.repeats)
            prof = _profiled(step(plan.terms[: j + 1]))
            conv, total = prof[0] - prof_before[0], prof[1] - prof_before[1]
            by_role[term.role].append((t - before, net.macs(term.arch) / 1e6, conv, total))
            before, prof_before = t, prof
    fm = _time(step([plan.terms[0]]), args.repeats)

    print(
        f"threads {torch.get_num_threads()}, batch {args.batch}, {res}px channels_last, fp32, "
        f"medians of {args.repeats}\n"
    )
    print("| term | n | MMACs | ms | ms / full | MACs / full | ms per MMAC | conv share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    full_ms = statistics.mean(r[0] for r in by_role["full"]) * 1e3
    for role, rows in by_role.items():
        ms = statistics.mean(r[0] for r in rows) * 1e3
        mm = statistics.mean(r[1] for r in rows)
        conv = sum(r[2] for r in rows) / sum(r[3] for r in rows)
        print(
            f"| {role} | {len(rows)} | {mm:.2f} | {ms:.1f} | {ms / full_ms:.2f} | {mm * 1e6 / full_macs:.2f} | "
            f"{ms / mm:.2f} | {100 * conv:.0f} % |"
        )
    shrink = sum(statistics.mean(r[0] for r in rows) for rows in by_role.values())
    print(f"\nFM-warmup step (full model alone): {fm * 1e3:.1f} ms; shrinking step: {shrink * 1e3:.1f} ms "
          f"({shrink / fm:.2f}×)")  # fmt: skip


if __name__ == "__main__":
    main()
