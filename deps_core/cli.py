"""The ``deps`` command.

- ``deps train [--preset NAME] [--config FILE] [section.key=value ...]``: train; with no arguments, the embedded
  default (DεpS on the bundled synthetic dataset with a small MBV3-32 supernet, a few minutes on a CPU), then BN
  recalibration, evaluation across the MAC range, a Pareto table, ``pareto.png``, ``training.png`` and ``report.json``.
- ``deps curves RUN_DIR ...``: the full model's training curves of several runs on one plot, against epochs or
  device-hours, and a table of where each ended.
- ``deps eval``: BN recalibration and evaluation of subnets of a trained supernet (Pareto table and plot);
  ``deps export``: one subnet as a static network (state dict + JSON config, ONNX);
  ``deps search --macs 300M [--latency 20ms]``: evolutionary search for the most accurate subnet per budget, written
  as arch JSON files that ``deps export --arch`` reads.
- ``deps data``: write .beton files (see ``deps_loaders.cli``); ``deps spaces``: the registered spaces.

Bad input (an unknown key, an invalid value, a missing file) is a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


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


# what --resume may change: where the data lives and how it is read, the device and how the step runs on it, logging,
# checkpoints and the final evaluation; run.grad_accum only so that processes × micro-batches stays as it was (with
# fewer GPUs, more micro-batches: the same arithmetic)
_RESUME_KEYS = (
    *(f"data.{f}" for f in ("train", "val", "num_workers", "val_batch_size")),
    *(
        f"run.{f}"
        for f in ("device", "grad_accum", "amp", "channels_last", "dw_backend", "fuse_dw_grad", "fuse_dw_bn_act",
                  "checkpoint_every", "log_every", "progress", "tensorboard", "wandb", "eval_archs", "eval_buckets",
                  "eval_sampler", "calib_images", "calib_batch")
    ),
)  # fmt: skip


def _resolve_config(args: argparse.Namespace):
    """``(config, checkpoint)``: the run's config, and with ``--resume`` the checkpoint it was read from (loaded once:
    the trainer restores from it)."""
    from deps_core.checkpoint import load_checkpoint
    from deps_core.config import (
        ExperimentConfig,
        apply_overrides,
        check_config_file_methods,
        load_config_file,
        load_preset,
    )

    if args.resume is not None:
        if args.preset or args.config:
            raise ValueError("--resume continues a run with its own config: drop --preset and --config")
        for item in args.overrides:
            key = item.partition("=")[0]
            if key not in _RESUME_KEYS:
                raise ValueError(
                    f"{key} cannot change when a run resumes (it would change what the run trains); --resume takes "
                    + ", ".join(_RESUME_KEYS)
                )
        state = load_checkpoint(Path(args.resume) / "checkpoints" / "last.pt")
        config = apply_overrides(ExperimentConfig.from_dict(state["config"]), args.overrides)
        if Path(config.run.out_dir).resolve() != Path(args.resume).resolve():
            config = apply_overrides(config, [f"run.out_dir={args.resume}"])
        return config, state
    config = load_preset(args.preset or "default")
    data = load_config_file(args.config) if args.config else {}
    config = apply_overrides(config.merged(data), args.overrides)
    check_config_file_methods(config, data, args.config)
    return config, None


def _same_run(config, last: Path) -> dict:
    """The checkpoint ``last`` when a run of ``config`` wrote it (up to what ``--resume`` may change); otherwise a
    ``ValueError`` naming the differences."""
    from deps_core.checkpoint import load_checkpoint
    from deps_core.config import ExperimentConfig

    state = load_checkpoint(last)
    saved = ExperimentConfig.from_dict(state["config"]).to_dict()
    given = config.to_dict()
    diff = [
        f"{section}.{k}: {saved[section][k]!r} there, {v!r} here"
        for section, values in given.items()
        for k, v in values.items()
        if v != saved[section][k] and f"{section}.{k}" not in (*_RESUME_KEYS, "run.out_dir")
    ]
    if diff:
        raise ValueError(
            f"--auto-resume: {last.parent.parent} holds a run of another config ({'; '.join(diff[:3])}"
            f"{f'; {len(diff) - 3} more' if len(diff) > 3 else ''}): continue that one with --resume, start over "
            "with --restart, or choose another run.out_dir"
        )
    return state


def _cmd_train(args: argparse.Namespace) -> int:
    config, state = _resolve_config(args)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    from deps_core.data import build_data
    from deps_core.distributed import DistContext
    from deps_core.trainer import NonFiniteLoss, Trainer, TrainingStopped

    out_dir = Path(config.run.out_dir)
    last = out_dir / "checkpoints" / "last.pt"
    if state is None and args.auto_resume and last.exists():
        state = _same_run(config, last)
    if state is None and last.exists() and not args.restart:
        raise ValueError(
            f"{out_dir} already holds a run: continue it with --resume {out_dir} (or --auto-resume), "
            "start over with --restart, or choose another run.out_dir"
        )
    ctx = DistContext.from_env(config.run.device)
    if ctx.is_main:
        _output_dir(out_dir, "run.out_dir")
    _cpu_settings(ctx, config)
    start = time.perf_counter()
    try:
        data = build_data(config, ctx)
        trainer = Trainer(
            config,
            data.train,
            num_classes=data.num_classes,
            val_loader=data.val,
            calib_loader=data.calib,
            ctx=ctx,
            out_dir=out_dir,
            on_epoch_end=_training_plot(out_dir, config) if ctx.is_main else None,
        )
        if state is not None:
            trainer.load_state_dict(state)  # the checkpoint the config came from, read once
            state = None  # the trainer holds its own copies; the run need not keep these
            if ctx.is_main:
                print(f"resuming {out_dir} at epoch {trainer.epoch}, step {trainer.step}", file=sys.stderr)
        try:
            summary = trainer.fit()
        except NonFiniteLoss as err:  # every rank raises it (the ranks agree each step): rank 0 says it
            if ctx.is_main:
                print(f"deps train: {err}", file=sys.stderr)
            return 1
        except TrainingStopped as err:
            if ctx.is_main:
                print(f"deps train: {err}", file=sys.stderr)
            return 128 + err.signum
        report = _final_evaluation(trainer, data, config, ctx)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        saved = f"; the last checkpoint is {last}" if last.exists() else ""
        print(f"\ndeps train: interrupted{saved}", file=sys.stderr)
        return 130
    finally:
        ctx.shutdown()
    if ctx.is_main:
        _write_report(out_dir, config, summary, report, time.perf_counter() - start)
    return 0


def _eval_setup(net, config, ctx, amp: bool, *, reads_val: bool, **extra) -> dict:
    """What decides a subnet's evaluation result, as a :class:`~deps_core.evaluate.ResultLog` keys its file: the
    weights, the data fields that choose or transform images (the data files by what they hold, not where they lie),
    the calibration set, the device and precision."""
    from deps_core.evaluate import data_digest, weights_digest

    unused = ("num_workers", "val_batch_size") + (() if reads_val else ("val",))
    data = {k: v for k, v in config.to_dict()["data"].items() if k not in unused}
    for k in ("train", "val"):
        if data.get(k) is not None:
            data[k] = data_digest(data[k])
    return {
        "weights_sha256": weights_digest(net),
        "data": data,
        "calib_images": config.run.calib_images,
        "calib_batch": config.run.calib_batch,
        "seed": config.run.seed,
        "device": ctx.device.type,
        "amp": amp,
    } | extra


def _results_log(folder, name: str, net, config, ctx, amp: bool, **setup):
    """The :class:`~deps_core.evaluate.ResultLog` of an evaluation every rank runs: rank 0 works out the setup (it
    alone reads and writes the log) and tells the other ranks, so the data files are read once, not once per rank."""
    from deps_core.evaluate import ResultLog

    return ResultLog(
        folder, ctx.broadcast_object(_eval_setup(net, config, ctx, amp, **setup) if ctx.is_main else None), name
    )


def _say_reused(log, archs, net, ctx) -> None:
    if ctx.is_main:
        reused = len({a.canonical(net.spec) for a in archs} & log.load().keys())
        if reused:
            print(f"reusing {reused} evaluated subnets from {log.path}", file=sys.stderr)


def _cpu_settings(ctx, config) -> None:
    """On the CPU: keep freed memory in the process and one compute thread per core left by the loader."""
    if ctx.device.type != "cpu":
        return
    from deps_core.runtime import cpu_threads, tune_cpu_allocator

    tune_cpu_allocator()
    cpu_threads(
        loader_threads=config.data.num_workers or 1, local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    )


def _final_evaluation(trainer, data, config, ctx) -> dict | None:
    """BN recalibration and evaluation of the largest, the smallest and ``run.eval_archs`` more subnets (drawn per MAC
    bucket, or uniformly with ``run.eval_sampler=uniform``)."""
    from deps_core.evaluate import CachedBatches, eval_archs, evaluate_archs, pareto_report

    net, run = trainer.supernet, config.run
    g = torch.Generator().manual_seed(run.seed + 12345)
    archs = eval_archs(net, g, run.eval_archs, sampler=run.eval_sampler, n_buckets=run.eval_buckets)
    calib = CachedBatches.from_loader(data.calib.epoch(0), max_images=run.calib_images, batch_size=run.calib_batch)
    # a run stopped in its final evaluation goes on where it stopped (--resume): the results so far are on disk
    log = _results_log(trainer.out_dir, "subnets", net, config, ctx, trainer.amp, reads_val=True)
    _say_reused(log, archs, net, ctx)
    results = evaluate_archs(
        net, archs, calib, data.val, amp=trainer.amp, ctx=ctx, progress=run.progress and ctx.is_main, log=log
    )
    return {"results": results, "pareto": pareto_report(net, results, run.eval_buckets)}


def _training_plot(out_dir: Path, config):
    """An epoch-end callback that redraws ``training.png`` from the run's logs, so a long run can be watched; a plot
    that fails says so once and never stops the training."""
    from deps_core.curves import plot_training, read_jsonl

    failed = []

    def plot(trainer) -> None:
        try:
            plot_training(
                trainer.history,
                read_jsonl(out_dir / "steps.jsonl"),
                trainer.steps_per_epoch,
                out_dir / "training.png",
                title=f"{config.method.name}: {config.model.space} on {config.data.source}",
            )
        except Exception as err:  # a figure is not worth a training run
            if not failed:
                print(f"deps train: note: could not draw training.png ({err}); training goes on", file=sys.stderr)
            failed.append(err)

    return plot


def _write_report(out_dir: Path, config, summary: dict, report: dict | None, wall: float) -> None:
    from deps_core.compare import si_count
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
        f"projected for the full run: {cost['projected_device_hours']:.4f}; "
        f"training MACs (forward + backward): {si_count(cost['train_macs'])}"
    )
    out = {"config": config.to_dict(), "cost": cost, "wall_seconds": wall, "history": summary["history"]}
    if report is not None:
        from deps_core.evaluate import report_to_json

        out["pareto"] = report_to_json(report["pareto"])
    (out_dir / "report.json").write_text(json.dumps(out, indent=1) + "\n")
    print(
        f"wrote {out_dir / 'report.json'}, {out_dir / 'training.png'}"
        + (f", {out_dir / 'pareto.png'}" if report is not None else "")
    )


def _arch_arg(text: str, net):
    """``max``, ``min`` or a JSON file / string of an Arch, checked against the supernet's (restricted) space."""
    from deps_core.arch import Arch

    if text in ("max", "min"):
        return net.max_arch() if text == "max" else net.min_arch()
    path = Path(text)
    if path.is_file():
        try:
            arch = Arch.from_json(path.read_text())
        except (ValueError, TypeError) as err:
            raise ValueError(f"--arch {path}: {err}") from None
    elif text.lstrip().startswith("{"):
        arch = Arch.from_json(text)
    else:
        raise ValueError(f"--arch {text!r} is neither max, min, an arch JSON file nor a JSON string")
    try:
        net.check(arch)
    except ValueError as err:
        raise ValueError(
            f"--arch {text if path.is_file() else 'JSON'} is not a subnet of the checkpoint's space: {err}"
        ) from None
    return arch


def _output_dir(path: str | Path, what: str) -> Path:
    """``path`` created as a directory now, before any work whose results it is to receive; ``ValueError`` naming
    ``what`` if it is a file or cannot be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be created ({err.strerror or err})") from None
    return path


_FIXED_DATA = ("holdout", "holdout_seed")  # the run's held-out split: evaluation must see the same one


def _checkpoint_overrides(items: list[str], run_fields: tuple[str, ...]) -> list[str]:
    """The ``key=value`` overrides of a command that reads a checkpoint: ``data.*`` (where the data lives, how it is
    read) and ``run_fields``; a key the checkpoint fixes, or one the command does not read, is a ``ValueError``."""
    allowed = (
        "data.* (but "
        + ", ".join(f"data.{f}" for f in _FIXED_DATA)
        + ") and "
        + ", ".join(f"run.{f}" for f in run_fields)
    )
    for item in items:
        section, _, field = item.partition("=")[0].partition(".")
        if section in ("model", "optim", "method") or (section == "run" and field not in run_fields):
            raise ValueError(
                f"{section}.{field} has no effect here: the checkpoint fixes it; this command reads {allowed}"
            )
        if section == "data" and field in _FIXED_DATA:
            raise ValueError(
                f"data.{field} is the run's own (its held-out split must stay out of calibration); this command "
                f"reads {allowed}"
            )
    return items


def _checkpoint_file(text: str) -> Path:
    ckpt = Path(text)
    return ckpt / "checkpoints" / "last.pt" if ckpt.is_dir() else ckpt


def _cmd_eval(args: argparse.Namespace) -> int:
    """Recalibrate BN and evaluate subnets of a trained supernet: Pareto table, subnets.json, report and plot."""
    from deps_core.checkpoint import supernet_from_checkpoint
    from deps_core.config import apply_overrides
    from deps_core.data import build_data
    from deps_core.distributed import DistContext
    from deps_core.evaluate import (
        CachedBatches,
        eval_archs,
        evaluate_archs,
        format_pareto_table,
        load_results,
        pareto_report,
        plot_pareto,
        report_to_json,
        save_results,
    )

    ckpt = _checkpoint_file(args.checkpoint)
    overrides = _checkpoint_overrides(args.overrides, ("device", "calib_images", "calib_batch", "seed", "progress"))
    net, config, history = supernet_from_checkpoint(ckpt, history=True)  # reads the file once
    config = apply_overrides(config, overrides)
    g = torch.Generator().manual_seed(args.seed)
    archs = [_arch_arg(a, net) for a in args.arch] or (  # bad archs stop before anything is set up or read
        eval_archs(net, g, args.archs, sampler=args.sampler, n_buckets=args.buckets)
    )
    overlays = {}  # checked now, not after the evaluation
    for other in args.overlay:
        label, _, path = other.rpartition("=")
        try:
            overlays[label or Path(path).parent.name] = pareto_report(net, load_results(path), args.buckets)["buckets"]
        except ValueError as err:
            raise ValueError(f"--overlay: {err}") from None
    out = Path(args.out or ckpt.parent.parent / "eval")
    ctx = DistContext.from_env(config.run.device)
    if ctx.is_main:
        _output_dir(out, "--out")
    _cpu_settings(ctx, config)
    net = net.to(ctx.device)
    data = build_data(config, ctx)
    if data.num_classes != net.num_classes:
        raise ValueError(f"the data has {data.num_classes} classes, the checkpoint's supernet {net.num_classes}")
    calib = CachedBatches.from_loader(
        data.calib.epoch(0), max_images=config.run.calib_images, batch_size=config.run.calib_batch
    )
    amp = ctx.device.type == "cuda"
    archs = list(dict.fromkeys(archs))
    log = _results_log(out, "subnets", net, config, ctx, amp, reads_val=True)
    _say_reused(log, archs, net, ctx)
    results = evaluate_archs(net, archs, calib, data.val, amp=amp, ctx=ctx, progress=ctx.is_main, log=log)
    ctx.shutdown()
    if not ctx.is_main:
        return 0
    save_results(results, out / "subnets.json")
    report = pareto_report(net, results, args.buckets)
    print(format_pareto_table(report))
    runs = {args.label or config.method.name: report["buckets"]} | overlays
    plot_pareto(runs, out / "pareto.png", title=f"{net.spec.name}")
    # what `deps compare` sets beside the front: the run's config and its training cost (to its last finished epoch)
    about = {
        "checkpoint": str(ckpt),
        "config": config.to_dict(),
        "trained_epochs": len(history),
        "cost": history[-1].get("cost") if history else None,
    }
    (out / "report.json").write_text(json.dumps(report_to_json(report) | about, indent=1) + "\n")
    print(f"wrote {out / 'subnets.json'}, {out / 'report.json'}, {out / 'pareto.png'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Calibrate BN for one subnet and write it as a static network: state dict + JSON config (+ ONNX)."""
    from deps_core.checkpoint import supernet_from_checkpoint
    from deps_core.config import apply_overrides
    from deps_core.data import build_data
    from deps_core.distributed import DistContext
    from deps_core.evaluate import CachedBatches, calibrate_bn
    from deps_core.export import export_static

    ckpt = _checkpoint_file(args.checkpoint)
    overrides = _checkpoint_overrides(args.overrides, ("calib_images", "calib_batch", "seed", "progress"))
    if args.no_calibrate and overrides:
        raise ValueError(f"--no-calibrate reads no data, so the overrides {overrides} would have no effect")
    net, config = supernet_from_checkpoint(ckpt)
    arch = _arch_arg(args.arch, net)
    _output_dir(args.out, "--out")
    if not args.no_calibrate:
        config = apply_overrides(config, overrides + ["run.device=cpu"])
        data = build_data(config, DistContext())
        calib = CachedBatches.from_loader(
            data.calib.epoch(0), max_images=config.run.calib_images, batch_size=config.run.calib_batch
        )
        calibrate_bn(net, arch, calib)
    paths = export_static(net, arch, args.out, formats=args.format)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


def _budget_list(parse):
    """An argparse type: a comma-separated list of budgets, each parsed by ``parse``."""

    def convert(text: str) -> list:
        try:
            return [parse(part) for part in text.split(",")]
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def _fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def _search_resolutions(args: argparse.Namespace, net, config) -> list[int]:
    """``--resolutions``, else the resolutions the supernet trained at (elastic training), else the space's default."""
    if args.resolutions:
        res = args.resolutions
    else:
        trained = [r for r in config.data.resolution if r in net.spec.resolutions]
        res = trained if len(trained) > 1 else [net.spec.default_resolution]
    bad = [r for r in res if r not in net.spec.resolutions]
    if bad:
        raise ValueError(f"--resolutions {bad} are not in {net.spec.name}'s {list(net.spec.resolutions)}")
    return sorted(set(res))


SEARCH_WAIT = datetime.timedelta(hours=6)  # the longest a search's rank may wait for rank 0 (torchrun)


def _cmd_search(args: argparse.Namespace) -> int:
    """Evolutionary search for the most accurate subnet under each MACs/latency budget; writes arch JSON files."""
    import attrs

    from deps_core.arch import uniform_arch
    from deps_core.checkpoint import supernet_from_checkpoint
    from deps_core.config import apply_overrides
    from deps_core.data import search_splits
    from deps_core.distributed import DistContext
    from deps_core.evaluate import ResultLog
    from deps_core.latency import LatencyTable
    from deps_core.predictor import AccuracyPredictor, ArchEncoder, fit_predictor
    from deps_core.search import (
        Budget,
        EvalAccuracy,
        EvolutionConfig,
        PredictorAccuracy,
        check_budget,
        evolution_search,
        release_scorers,
    )

    if not args.macs and not args.latency:
        raise ValueError("give a budget: --macs (e.g. 300M) and/or --latency (e.g. 20ms)")
    if args.predictor and args.accuracy != "predictor":
        raise ValueError("--predictor needs --accuracy predictor")
    ckpt = _checkpoint_file(args.checkpoint)
    overrides = _checkpoint_overrides(args.overrides, ("device", "calib_images", "calib_batch", "seed", "progress"))
    net, config = supernet_from_checkpoint(ckpt)
    config = apply_overrides(config, overrides)
    spec, classes = net.spec, net.num_classes
    resolutions = _search_resolutions(args, net, config)
    budgets = [Budget(m, t) for m in (args.macs or [None]) for t in (args.latency or [None])]
    for b in budgets:  # MACs budgets are checked before anything is measured or read
        if b.macs is not None:
            check_budget(spec, Budget(macs=b.macs), resolutions=resolutions, num_classes=classes)
    predictor = AccuracyPredictor.load(args.predictor, spec=spec) if args.predictor else None
    if predictor is not None:
        for r in resolutions:
            if r not in predictor.encoder.resolutions:
                raise ValueError(
                    f"--predictor {args.predictor} encodes resolutions {list(predictor.encoder.resolutions)}; "
                    f"the search covers {resolutions}"
                )
    evo = EvolutionConfig(
        population_size=args.population or (100 if args.accuracy == "predictor" else 16),
        generations=args.generations or (500 if args.accuracy == "predictor" else 10),
        mutate_prob=args.mutate_prob,
        parent_ratio=args.parent_ratio,
        mutation_ratio=args.mutation_ratio,
    )
    out = _output_dir(args.out or ckpt.parent.parent / "search", "--out")

    # under torchrun the other ranks wait, inside a collective, while rank 0 measures latencies, fits the predictor
    # or evolves on predicted accuracies alone: minutes to hours, beyond torch's default timeouts (NCCL: 10 minutes)
    ctx = DistContext.from_env(config.run.device, timeout=SEARCH_WAIT)
    _cpu_settings(ctx, config)
    net = net.to(ctx.device)
    heldout_images = args.heldout_images or min(2000, config.data.holdout or 2000)
    amp = ctx.device.type == "cuda"
    if not ctx.is_main:  # under torchrun rank 0 searches; the others score their shares of its subnets
        calib, heldout, _ = search_splits(config, ctx.device, heldout_images=heldout_images)
        EvalAccuracy(net, calib, heldout, amp=amp, ctx=ctx).serve()
        ctx.shutdown()
        return 0
    table, known = None, 0
    try:  # new latency measurements are kept whatever ends the search (Ctrl-C, an error): they take minutes
        table = LatencyTable(
            ctx.device,
            batch_size=args.latency_batch,
            warmup=args.latency_warmup,
            repeats=args.latency_repeats,
            path=args.latency_table or out / "latency_table.json",
            threads=args.latency_threads,
        )
        known = len(table)
        for b in budgets:
            if b.latency_ms is not None:
                check_budget(spec, b, resolutions=resolutions, num_classes=classes, latency_table=table)
        calib, heldout, data_classes = search_splits(config, ctx.device, heldout_images=heldout_images)
        if not config.data.holdout:
            print(
                f"note: the run held out no training images (data.holdout=0): the {heldout.num_images} held-out images "
                "were trained on, so the accuracies are optimistic",
                file=sys.stderr,
            )
        if data_classes != classes:
            raise ValueError(f"the data has {data_classes} classes, the checkpoint's supernet {classes}")
        # what decides a score: the scores of an earlier search of the same setup are reused
        setup = _eval_setup(net, config, ctx, amp, reads_val=False, heldout_images=heldout.num_images)
        log = ResultLog(out, setup, "scores")
        progress = args.accuracy == "predictor"
        evaluator = EvalAccuracy(net, calib, heldout, amp=amp, progress=progress, ctx=ctx, log=log)
        if evaluator.reused:
            print(f"reusing {evaluator.reused} scored subnets from {log.path}", file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
        summary: dict = {"checkpoint": str(ckpt), "accuracy": args.accuracy, "resolutions": resolutions}
        summary |= {"heldout_images": heldout.num_images, "heldout_trained": not config.data.holdout}
        summary |= {"calib_images": calib.num_images, "evolution": attrs.asdict(evo)}
        if args.accuracy == "predictor":
            if predictor is None:
                g = torch.Generator().manual_seed(args.seed + 1)
                archs = [net.max_arch(r) for r in resolutions] + [net.min_arch(r) for r in resolutions]
                archs += [uniform_arch(spec, g, resolutions=resolutions) for _ in range(args.predictor_archs)]
                archs = list(dict.fromkeys(archs))
                accs = evaluator(archs)
                predictor, report = fit_predictor(
                    archs, accs, ArchEncoder.for_space(spec, resolutions), generator=g, progress=True
                )
                predictor.save(out / "predictor.pt", report=report)
                data_path = out / "predictor_data.json"
                data_path.write_text(json.dumps([{"arch": a.to_dict(), "top1": v} for a, v in zip(archs, accs)]) + "\n")
                print(
                    f"accuracy predictor on {report['n_train']} + {report['n_val']} evaluated archs: validation RMSE "
                    f"{100 * report['val_rmse']:.2f} points (constant mean: {100 * report['baseline_val_rmse']:.2f}); "
                    f"wrote {out / 'predictor.pt'}",
                    file=sys.stderr,
                )
            summary["predictor"] = getattr(predictor, "report", {})
            accuracy = PredictorAccuracy(predictor)
        else:
            accuracy = evaluator
        results, rows = [], []
        for i, budget in enumerate(budgets):
            g = torch.Generator().manual_seed(args.seed + 1000 * (i + 1))
            r = evolution_search(
                spec,
                accuracy,
                budget,
                generator=g,
                config=evo,
                resolutions=resolutions,
                num_classes=classes,
                latency_table=table,
                progress=True,
            )
            heldout_top1 = evaluator([r.arch])[0]
            path = out / f"arch_{budget.label}.json"
            path.write_text(json.dumps(r.arch.to_dict(), indent=1) + "\n")
            results.append(r.to_dict() | {"heldout_top1": heldout_top1, "arch_file": str(path)})
            top1 = [f"{100 * r.accuracy:.2f}"] + ([f"{100 * heldout_top1:.2f}"] if args.accuracy == "predictor" else [])
            rows.append(
                [str(budget), f"{r.macs / 1e6:.2f}", f"{r.latency_ms:.3f}", *top1, str(r.evaluated), str(r.arch)]
            )
    finally:
        if table is not None and len(table) > known:
            table.save()
        if ctx.distributed and not isinstance(sys.exc_info()[1], KeyboardInterrupt):  # (Ctrl-C reached every rank)
            release_scorers(ctx)  # the other ranks' serve() returns: whatever ended the search, nobody waits
            ctx.shutdown()
    top1 = ["predicted top-1 %", "held-out top-1 %"] if args.accuracy == "predictor" else ["held-out top-1 %"]
    print(_table(rows, ["budget", "MMACs", "latency ms", *top1, "archs scored", "arch"]))
    print(f"latency: predicted from {table.path} ({table.meta['device']}, batch {table.batch_size})")
    summary["latency_table"] = table.meta | {"path": str(table.path)}
    summary["scored_per_rank"] = evaluator.scored_per_rank  # one entry per process (torchrun: per rank)
    summary["scores"] = {"path": str(log.path), "reused": evaluator.reused}
    summary["results"] = results
    (out / "search.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out / 'search.json'} and " + ", ".join(Path(r["arch_file"]).name for r in results))
    return 0


def _cmd_curves(args: argparse.Namespace) -> int:
    """The full model's curves of several runs on one plot, and a table of where each ended (and, where runs differ
    only in their seed, of where each experiment ended on average)."""
    import statistics

    from deps_core.compare import group_configs, group_styles, run_names
    from deps_core.curves import plot_runs, read_run_config, read_run_epochs

    names = run_names(args.runs)
    runs = {name: read_run_epochs(r) for name, r in zip(names, args.runs)}
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the PNG's path")
    groups = group_configs({name: read_run_config(r) for name, r in zip(names, args.runs)})
    series = plot_runs(runs, out, x=args.x, styles=group_styles(groups))

    def pct(v):
        return "-" if v is None else f"{v:.2f}"

    rows = [
        [name, str(s["epochs"]), f"{s['device_hours']:.4f}", pct(s["final_val_top1"]), pct(s["best_val_top1"])]
        for name, s in series.items()
    ]
    print(_table(rows, ["run", "epochs", "device-hours", "final top-1 %", "best top-1 %"]))
    if any(len(members) > 1 for members in groups.values()):

        def spread(key: str, members: list[str]) -> str:
            values = [series[m][key] for m in members]
            if any(v is None for v in values):
                return "-"
            sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            return f"{statistics.fmean(values):.2f}{sd}"

        print()
        print("repeats of one experiment (configs equal but for the seed): mean ± sd over its runs")
        rows = [[g, str(len(m)), spread("final_val_top1", m), spread("best_val_top1", m)] for g, m in groups.items()]
        print(_table(rows, ["group", "runs", "final top-1 %", "best top-1 %"]))
    print(f"wrote {out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    """Finished runs side by side: mean pareto accuracy against training cost, the best subnet per MAC bucket, and
    the fronts overlaid in a PNG."""
    from deps_core.compare import (
        COMPARE_HEADER,
        GROUP_HEADER,
        bucket_rows,
        bucket_summary,
        compare_notes,
        compare_rows,
        compare_summary,
        group_bucket_rows,
        group_notes,
        group_rows,
        group_runs,
        group_summary,
        plot_fronts,
        read_run_report,
        run_names,
    )

    out = Path(args.out)
    for flag, path in (("--out", out), ("--json", args.json)):
        if path is not None and Path(path).is_dir():
            raise ValueError(f"{flag} {path} is a directory; give the file's path")
    runs = {name: read_run_report(path) for name, path in zip(run_names(args.runs), args.runs)}
    print(_table(compare_rows(runs), COMPARE_HEADER))
    buckets = bucket_rows(runs)
    if buckets is not None:
        header, rows = buckets
        print()
        print("best top-1 % per MAC bucket (MMACs)")
        print(_table(rows, header))
    groups = group_runs(runs)
    repeats = any(len(members) > 1 for members in groups.values())
    grouped = group_summary(runs, groups) if repeats else None
    if grouped is not None:  # runs that differ only in their seed: each experiment's mean and spread
        print()
        print("repeats of one experiment (configs equal but for the seed): mean pareto % as mean ± sd over its runs;")
        print(
            "Δ pp: the difference of means to the first group ± its standard error; "
            "p: permutation test (beyond 200,000 splits: from 100,000 random ones)"
        )
        print(_table(group_rows(grouped), GROUP_HEADER))
        buckets = group_bucket_rows(runs, groups)
        if buckets is not None:
            header, rows = buckets
            print()
            print("best top-1 % per MAC bucket (MMACs), mean over each group's runs")
            print(_table(rows, header))
    notes = compare_notes(runs) + (group_notes(grouped) if grouped is not None else [])
    for note in notes:
        print(f"note: {note}")
    plot_fronts(runs, out, groups)
    written = [out]
    if args.json is not None:
        summary = {"runs": compare_summary(runs), "buckets": bucket_summary(runs), "notes": notes}
        if grouped is not None:
            summary["groups"] = grouped
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
        written.append(Path(args.json))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from deps_core.config import EVAL_SAMPLERS
    from deps_core.search import parse_latency, parse_macs

    parser = _Parser(prog="deps", description="Once-for-all supernet training with DεpS (Delayed ε-Shrinking).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a supernet (no arguments: the embedded synthetic-data default)")
    p.add_argument("--preset", help="a preset name (see --list-presets); default: the embedded default")
    p.add_argument("--config", help="a JSON file of config overrides (sections model/data/optim/method/run)")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint (key=value: only where and how it goes on, e.g. "
        "data.train, run.device, run.grad_accum)",
    )
    start.add_argument("--restart", action="store_true", help="start over even if run.out_dir holds a run")
    start.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue the run in run.out_dir if it holds one of this config, else start it (one command for a "
        "job a scheduler may requeue)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. optim.lr=0.1")
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("eval", help="recalibrate BN and evaluate subnets of a trained supernet (Pareto table + plot)")
    p.add_argument("--checkpoint", required=True, help="a run directory or a checkpoint .pt file")
    p.add_argument("--archs", type=_count, default=40, help="subnets besides the largest and smallest")
    p.add_argument(
        "--sampler",
        choices=EVAL_SAMPLERS,
        default="buckets",
        help="buckets: --archs spread evenly over the MAC buckets (default); uniform: OFA's uniform sampling",
    )
    p.add_argument("--arch", action="append", default=[], help="evaluate only these: max, min, or an arch JSON")
    p.add_argument("--buckets", type=_positive, default=6, help="MAC buckets of the Pareto front")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled subnets")
    p.add_argument("--out", help="output directory (default: RUN_DIR/eval)")
    p.add_argument("--label", help="this run's name in the plot (default: the method)")
    p.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="[LABEL=]SUBNETS_JSON",
        help="add another run's subnets.json to the plot (repeatable)",
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="data overrides, e.g. data.val=...")
    p.set_defaults(fn=_cmd_eval)

    p = sub.add_parser("export", help="write one subnet as a static network (state dict + JSON config, or ONNX)")
    p.add_argument("--checkpoint", required=True, help="a run directory or a checkpoint .pt file")
    p.add_argument("--arch", default="max", help="max, min, or an arch JSON file/string")
    p.add_argument(
        "--format",
        action="append",
        choices=("torch", "onnx"),
        default=None,
        help="torch (state dict + JSON config, default) and/or onnx",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-calibrate", action="store_true", help="keep the supernet's BN statistics (no recalibration)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="data overrides for the calibration set")
    p.set_defaults(fn=_cmd_export)

    p = sub.add_parser("search", help="evolutionary search for the best subnet under MACs and/or latency budgets")
    p.add_argument("--checkpoint", required=True, help="a run directory or a checkpoint .pt file")
    p.add_argument("--macs", type=_budget_list(parse_macs), help="MACs budget(s), e.g. 300M or 150M,250M (K/M/G)")
    p.add_argument(
        "--latency", type=_budget_list(parse_latency), help="latency budget(s) on this device, e.g. 20ms (us/ms/s)"
    )
    p.add_argument(
        "--accuracy",
        choices=("eval", "predictor"),
        default="eval",
        help="eval: BN recalibration + top-1 on a held-out split of the training set (cached per arch); "
        "predictor: an MLP fitted to --predictor-archs evaluated archs (or loaded with --predictor)",
    )
    p.add_argument("--predictor", help="a saved accuracy predictor (predictor.pt of an earlier search)")
    p.add_argument(
        "--predictor-archs", type=_positive, default=1000, help="uniform archs evaluated to fit the predictor"
    )
    p.add_argument(
        "--heldout-images",
        type=_positive,
        help="held-out training images to measure accuracy on (default 2,000, at most the run's data.holdout: the "
        "images it never trained on; with data.holdout=0 they come from the trained images)",
    )
    p.add_argument("--resolutions", type=_int_list, help="searched resolutions (default: the trained ones)")
    p.add_argument("--population", type=_positive, help="population size (default: 100 with a predictor, 16 with eval)")
    p.add_argument("--generations", type=_positive, help="generations (default: 500 with a predictor, 10 with eval)")
    p.add_argument("--mutate-prob", type=_fraction_arg, default=0.1, help="per-gene mutation probability")
    p.add_argument("--parent-ratio", type=_fraction_arg, default=0.25, help="fraction of the population kept")
    p.add_argument("--mutation-ratio", type=_fraction_arg, default=0.5, help="fraction of children from mutation")
    p.add_argument("--seed", type=int, default=0, help="seed of the search's generator")
    p.add_argument("--latency-table", help="latency lookup table JSON (default: OUT/latency_table.json)")
    p.add_argument("--latency-batch", type=_positive, default=1, help="batch size of the latency measurements")
    p.add_argument("--latency-warmup", type=_count, default=10, help="untimed calls before each measurement")
    p.add_argument("--latency-repeats", type=_positive, default=30, help="timed calls per measurement (median)")
    p.add_argument("--latency-threads", type=_positive, default=1, help="CPU threads of the latency measurements")
    p.add_argument("--out", help="output directory (default: RUN_DIR/search)")
    p.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="data overrides, e.g. run.calib_images=500"
    )
    p.set_defaults(fn=_cmd_search)

    from deps_loaders.cli import add_data_arguments, run_data

    p = sub.add_parser("data", help="write a .beton from an ImageFolder tree or CIFAR, or build the synthetic cache")
    add_data_arguments(p)
    p.set_defaults(fn=run_data)

    p = sub.add_parser("curves", help="overlay the full model's training curves of several runs (a PNG and a table)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of deps train (their epochs.jsonl)")
    p.add_argument(
        "--x", choices=["epoch", "device-hours"], default="epoch", help="the x axis: epochs or training cost"
    )
    p.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    p.set_defaults(fn=_cmd_curves)

    p = sub.add_parser(
        "compare", help="finished runs side by side: mean pareto accuracy against training cost (a table + a PNG)"
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="deps train run directories or deps eval outputs (their report.json); the first is the reference; runs "
        "whose configs differ only in run.seed are also summarized as one experiment (mean ± sd, permutation test)",
    )
    p.add_argument("--out", default="compare.png", help="the PNG of the fronts (default: compare.png)")
    p.add_argument("--json", help="also write the figures, the buckets and the notes as JSON to this file")
    p.set_defaults(fn=_cmd_compare)

    p = sub.add_parser("spaces", help="list the registered spaces with their largest and smallest MACs")
    p.set_defaults(fn=_cmd_spaces)
    return parser


ERROR_GRACE = 2.0  # seconds a rank other than 0 waits before it prints an input error (torchrun)


def _let_rank_0_say_it() -> None:
    """Under torchrun every rank reads the same command line and files, so every rank meets an input error, and torchrun
    ends the others once one has exited: a rank other than 0 waits a moment first, so the error shows once, from rank
    0, and still shows when it is this rank's alone."""
    if "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("RANK", "0")) > 0:
        time.sleep(ERROR_GRACE)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # section.key=value overrides may come before, between or after the options: argparse gives a nargs="*"
    # positional only its first run, so the later ones come back unparsed and join it in order
    args, extra = parser.parse_known_args(argv)
    if extra:
        if any(a.startswith("-") for a in extra) or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "list_presets", False):
        from deps_core.config import list_presets

        print("\n".join(list_presets()))
        return 0
    try:
        return args.fn(args)
    except ValueError as err:
        _let_rank_0_say_it()
        print(f"deps {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (deps train saves a checkpoint first)
        print(f"\ndeps {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `deps train --dry-run | head`: the reader left; stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
