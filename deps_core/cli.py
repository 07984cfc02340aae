"""The ``deps`` command.

- ``deps train [--preset NAME] [--config FILE] [section.key=value ...]``: train; with no arguments, the embedded
  default (DεpS on the bundled synthetic dataset with a small MBV3-32 supernet, a few minutes on a CPU), then BN
  recalibration, evaluation across the MAC range, a Pareto table, ``pareto.png`` and ``report.json``.
- ``deps data``: write .beton files (see ``deps_loaders.cli``); ``deps spaces``: the registered spaces.

Bad input (an unknown key, an invalid value, a missing file) is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if j else str(c).ljust(w) for j, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _cmd_spaces(args: argparse.Namespace) -> int:
    from deps_core.arch import max_arch, min_arch
    from deps_core.macs import macs
    from deps_core.spaces import list_spaces, space_spec

    rows = []
    for name in list_spaces():
        spec = space_spec(name)
        rows.append(
            [
                name,
                spec.n_blocks,
                spec.default_resolution,
                f"{macs(max_arch(spec)) / 1e6:.2f}",
                f"{macs(min_arch(spec)) / 1e6:.2f}",
            ]
        )
    print(_table(rows, ["space", "blocks", "res", "max MMACs", "min MMACs"]))
    return 0


def _resolve_config(args: argparse.Namespace):
    from deps_core.checkpoint import load_checkpoint
    from deps_core.config import ExperimentConfig, apply_overrides, load_config_file, load_preset

    if args.resume is not None:
        if args.preset or args.config or args.overrides:
            raise ValueError("--resume continues a run with its own config: drop --preset, --config and key=value")
        state = load_checkpoint(Path(args.resume) / "checkpoints" / "last.pt")
        config = ExperimentConfig.from_dict(state["config"])
        if Path(config.run.out_dir).resolve() != Path(args.resume).resolve():
            config = apply_overrides(config, [f"run.out_dir={args.resume}"])
        return config
    config = load_preset(args.preset or "default")
    if args.config:
        config = config.merged(load_config_file(args.config))
    return apply_overrides(config, args.overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    config = _resolve_config(args)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    from deps_core.data import build_data
    from deps_core.distributed import DistContext
    from deps_core.trainer import NonFiniteLoss, Trainer

    out_dir = Path(config.run.out_dir)
    last = out_dir / "checkpoints" / "last.pt"
    if args.resume is None and last.exists() and not args.restart:
        raise ValueError(
            f"{out_dir} already holds a run: continue it with --resume {out_dir}, "
            "start over with --restart, or choose another run.out_dir"
        )
    ctx = DistContext.from_env(config.run.device)
    start = time.perf_counter()
    try:
        data = build_data(config, ctx)
        trainer = Trainer(
            config, data.train, num_classes=data.num_classes, val_loader=data.val, ctx=ctx, out_dir=out_dir
        )
        if args.resume is not None:
            trainer.resume(last)
            if ctx.is_main:
                print(f"resuming {out_dir} at epoch {trainer.epoch}, step {trainer.step}", file=sys.stderr)
        try:
            summary = trainer.fit()
        except NonFiniteLoss as err:
            print(f"deps train: {err}", file=sys.stderr)
            return 1
        report = _final_evaluation(trainer, data, config, ctx)
    finally:
        ctx.shutdown()
    if ctx.is_main:
        _write_report(out_dir, config, summary, report, time.perf_counter() - start)
    return 0


def _final_evaluation(trainer, data, config, ctx) -> dict | None:
    """BN recalibration and evaluation of the largest, smallest and ``run.eval_archs`` uniform subnets."""
    from deps_core.arch import uniform_arch
    from deps_core.evaluate import CachedBatches, evaluate_archs, pareto_report

    net = trainer.supernet
    g = torch.Generator().manual_seed(config.run.seed + 12345)
    archs = [net.max_arch(), net.min_arch()] + [uniform_arch(net.spec, g) for _ in range(config.run.eval_archs)]
    archs = list(dict.fromkeys(archs))
    calib = CachedBatches.from_loader(
        data.calib.epoch(0), max_images=config.run.calib_images, batch_size=config.run.calib_batch
    )
    results = evaluate_archs(
        net, archs, calib, data.val, amp=trainer.amp, ctx=ctx, progress=config.run.progress and ctx.is_main
    )
    return {"results": results, "pareto": pareto_report(net, results, config.run.eval_buckets)}


def _write_report(out_dir: Path, config, summary: dict, report: dict | None, wall: float) -> None:
    from deps_core.evaluate import format_pareto_table, plot_pareto, report_to_json, save_results

    cost = summary["cost"]
    print()
    if report is not None:
        pareto = report["pareto"]
        print(format_pareto_table(pareto))
        save_results(report["results"], out_dir / "subnets.json")
        plot_pareto(
            {config.method.name: pareto["buckets"]},
            out_dir / "pareto.png",
            title=f"{config.model.space} on {config.data.source}",
        )
    rows = [[phase, f"{sec / 60:.2f}"] for phase, sec in cost["train_seconds_by_phase"].items()]
    rows.append(["total training", f"{cost['train_seconds'] / 60:.2f}"])
    rows.append(["waiting for data", f"{cost['data_wait_seconds'] / 60:.2f}"])
    rows.append(["whole command", f"{wall / 60:.2f}"])
    print()
    print(_table(rows, ["phase", "minutes"]))
    print(
        f"device-hours: {cost['device_hours']:.4f} on {cost['devices']} device(s); "
        f"projected for the full run: {cost['projected_device_hours']:.4f}"
    )
    out = {"config": config.to_dict(), "cost": cost, "wall_seconds": wall, "history": summary["history"]}
    if report is not None:
        from deps_core.evaluate import report_to_json

        out["pareto"] = report_to_json(report["pareto"])
    (out_dir / "report.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {out_dir / 'report.json'}" + (f", {out_dir / 'pareto.png'}" if report is not None else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deps", description="Once-for-all supernet training with DεpS (Delayed ε-Shrinking).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a supernet (no arguments: the embedded synthetic-data default)")
    p.add_argument("--preset", help="a preset name (see --list-presets); default: the embedded default")
    p.add_argument("--config", help="a JSON file of config overrides (sections model/data/optim/method/run)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--restart", action="store_true", help="start over even if run.out_dir holds a run")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. optim.lr=0.1")
    p.set_defaults(fn=_cmd_train)

    from deps_loaders.cli import add_data_arguments, run_data

    p = sub.add_parser("data", help="write a .beton from an ImageFolder tree or CIFAR, or build the synthetic cache")
    add_data_arguments(p)
    p.set_defaults(fn=run_data)

    p = sub.add_parser("spaces", help="list the registered spaces with their largest and smallest MACs")
    p.set_defaults(fn=_cmd_spaces)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "list_presets", False):
        from deps_core.config import list_presets

        print("\n".join(list_presets()))
        return 0
    try:
        return args.fn(args)
    except ValueError as err:
        print(f"deps {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
