"""The training loop: a strategy's plan per step, the functional step, one gradient all-reduce, the optimizer (SGD,
AdamW or TF's RMSProp); checkpoints, logs.

One step (DεpS eq. (4) with everything around it):

    plan = strategy.plan(progress, seed)              # terms, lr, ε, phase; pure function of progress
    [re-organize channels once per plan.reorganize.key; snapshot a frozen teacher the first time one is needed]
    G = 0; for each micro-batch: functional_step(...)  # Σ_j w_j ∇L_j into the flat fp32 buffer
    [ranks > 1: all_reduce(MAX) of a few flags]        # a non-finite loss or a stop request on any rank
    all_reduce(G) once; G /= (ranks · micro-batches)   # the mean over the global batch
    clip; SGD (momentum, Nesterov), AdamW or RMSProp, weight decay off BN and biases, at plan.lr

Everything needed to continue exactly is checkpointed: weights, BN statistics, optimizer state, position, RNG state,
strategy state (re-organizations done, the frozen teacher), partial-epoch statistics and the cost so far; every
rank's RNG state (dropout masks differ per rank). A resumed CPU run ends bit-identical to an uninterrupted one, with one
process or several (``tests/test_trainer.py``). SIGINT (Ctrl-C) or SIGTERM stops :meth:`Trainer.fit` after the step in
progress, with a checkpoint of that position (:class:`TrainingStopped`). The ranks of a distributed run agree on it:
each step reduces one small tensor (MAX) that says whether any rank was asked to stop and which ranks met a
non-finite loss, so all ranks stop after the same step, and a NaN on one rank stops every rank instead of leaving the
others waiting in the gradient all-reduce.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from deps_core import ops
from deps_core.accumulate import GradAccumulator
from deps_core.checkpoint import load_checkpoint, save_checkpoint
from deps_core.config import ExperimentConfig
from deps_core.distill import FrozenTeacher, LossConfig
from deps_core.distributed import DistContext
from deps_core.latency import device_name
from deps_core.optim import RMSpropTF
from deps_core.reorganize import reorganize_channels
from deps_core.schedules import ExpDecay, Progress
from deps_core.spaces import create_supernet
from deps_core.spaces.base import SpaceSpec
from deps_core.step import detached_state, functional_step
from deps_core.strategies import BigNASStrategy, CompOFAStrategy, DepsStrategy, OFAStrategy, Plan

__all__ = ["Trainer", "NonFiniteLoss", "TrainingStopped", "build_strategy", "Loader"]


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite loss: training stops before the update, the last checkpoint stays as it was."""


class TrainingStopped(Exception):
    """SIGINT (Ctrl-C) or SIGTERM asked the run (any of its ranks) to stop: it finished the step it was in and saved a
    checkpoint there, from which ``--resume`` continues exactly. ``signum``: the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class _StopRequest:
    """While active, the first SIGINT/SIGTERM only records a request (the loop stops at the next step boundary); a
    second SIGINT raises ``KeyboardInterrupt`` at once, unless it comes within ``repeat_window`` seconds of the first
    (the trainer sets it under torchrun, which passes the SIGINT it got from the terminal on to its workers, which got
    the same Ctrl-C from the terminal already). Installed only in the main thread; the previous handlers come back on
    exit. ``announce``: print one line when asked (rank 0 of a distributed run)."""

    def __init__(self, *, announce: bool = True, repeat_window: float = 0.0):
        self.enabled = threading.current_thread() is threading.main_thread()  # Python runs handlers there only
        self.announce, self.repeat_window = announce, repeat_window
        self.signum: int | None = None
        self._asked_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if self.enabled:
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. SIGINT of a shell script's background job
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():  # None: a handler installed outside Python, not restorable
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT and time.monotonic() - self._asked_at > self.repeat_window:
                raise KeyboardInterrupt
            return
        self.signum, self._asked_at = signum, time.monotonic()
        if self.announce:
            print(
                f"\ndeps train: {signal.Signals(signum).name}: stopping after this step with a checkpoint "
                "(Ctrl-C again stops at once, without one)",
                file=sys.stderr,
            )


class Loader(Protocol):
    """What the trainer needs of a data loader (``deps_loaders`` loaders provide it)."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0): ...


def build_strategy(config: ExperimentConfig, spec: SpaceSpec):
    """The strategy a config names, on ``spec``, for the config's global batch."""
    m, o = config.method, config.optim
    exp_decay = ExpDecay(o.lr_decay, o.lr_decay_epochs, o.lr_floor) if o.schedule == "exponential" else None
    common = dict(
        lr=o.lr, lr_batch=o.lr_batch, global_batch=config.data.batch_size, final_lr=o.final_lr, exp_decay=exp_decay
    )
    if m.name == "deps":
        return DepsStrategy(
            spec,
            total=m.epochs,
            warmup_epochs=o.warmup_epochs,
            p_fm=m.p_fm,
            k=m.k,
            ramp_epochs=m.ramp_epochs,
            eps_form=m.eps_form,
            eps_start=m.eps_start,
            all_uniform=m.all_uniform,
            subnet_loss=m.subnet_loss,
            subnet_bn_stats=m.subnet_bn_stats,
            reorganize=m.reorganize,
            grad_clip_value=m.grad_clip_value,
            **common,
        )
    if m.name == "bignas":
        return BigNASStrategy(
            spec,
            total=m.epochs,
            warmup_epochs=o.warmup_epochs,
            k=m.k,
            subnet_bn_stats=m.subnet_bn_stats,
            grad_clip_value=m.grad_clip_value,
            **common,
        )
    if m.name == "ofa":
        p = m.phases or (180, 120, 25, 120, 25, 120)
        return OFAStrategy(
            spec,
            teacher_epochs=p[0],
            kernel_epochs=p[1],
            depth_epochs=(p[2], p[3]),
            expand_epochs=(p[4], p[5]),
            warmup_epochs=m.phase_warmup_epochs,
            teacher_warmup_epochs=o.warmup_epochs,
            grad_clip_value=m.grad_clip_value,
            **common,
        )
    if m.name == "compofa":
        p = m.phases or (180, 25, 120)
        from deps_core.strategies import MBV3_LARGE_KERNELS

        kernels = MBV3_LARGE_KERNELS if m.compound_fixed_kernels and len(spec.stages) == 5 else None
        return CompOFAStrategy(
            spec,
            teacher_epochs=p[0],
            compound_epochs=(p[1], p[2]),
            warmup_epochs=m.phase_warmup_epochs,
            teacher_warmup_epochs=o.warmup_epochs,
            k=m.k,
            stage_kernels=kernels,
            grad_clip_value=m.grad_clip_value,
            **common,
        )
    raise ValueError(f"unknown method {m.name!r}")  # pragma: no cover - MethodConfig validates the name


def _optimizer(supernet: torch.nn.Module, config: ExperimentConfig) -> torch.optim.Optimizer:
    o = config.optim
    decay, no_decay = [], []
    for name, p in supernet.named_parameters():
        (no_decay if any(key in name for key in o.no_decay) else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)
    if o.name == "rmsprop":
        return RMSpropTF(groups, lr=o.lr, decay=o.rms_decay, momentum=o.momentum, eps=o.rms_eps)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)


class _JsonLog:
    """Append-only JSONL; on resume, lines at or after the resumed step are dropped (they will be written again)."""

    def __init__(self, path: Path | None):
        self.path = path

    def truncate_from(self, key: str, value: int) -> None:
        if self.path is None or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get(key, -1) < value]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class Trainer:
    """Trains the supernet a config describes on ``train_loader``.

    ``out_dir`` receives ``config.json``, ``steps.jsonl``, ``epochs.jsonl`` and ``checkpoints/``; ``None`` keeps
    everything in memory (tests). Only rank 0 writes. ``on_epoch_end``: called with the trainer on every rank after
    each epoch's record and checkpoint (``deps train`` redraws ``training.png`` there).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        train_loader: Loader,
        *,
        num_classes: int,
        val_loader: Loader | None = None,
        calib_loader: Loader | None = None,
        ctx: DistContext | None = None,
        out_dir: str | Path | None = None,
        on_epoch_end: Callable[[Trainer], None] | None = None,
    ):
        self.config = config
        self.on_epoch_end = on_epoch_end
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device
        self.train_loader, self.val_loader, self.calib_loader = train_loader, val_loader, calib_loader
        self._calib = None
        self.num_classes = num_classes
        run = config.run
        torch.manual_seed(run.seed + self.ctx.rank)  # dropout masks; the run's one explicit seeding
        init = torch.Generator().manual_seed(run.seed)  # identical initial weights on every rank
        net = create_supernet(
            config.model.space,
            num_classes=num_classes,
            kernel_transform=config.model.kernel_transform,
            zero_init_residual=config.model.zero_init_residual,
            generator=init,
            **config.model.space_kwargs(),
        )
        self.supernet = net.to(self.device).train()
        self.strategy = build_strategy(config, self.supernet.spec)
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch < 1:
            raise ValueError("the training loader yields no batch per epoch (dataset smaller than one batch?)")
        self.params, self.buffers = detached_state(self.supernet)
        self.named_params = dict(self.supernet.named_parameters())
        self.accumulator = GradAccumulator(self.params)
        self.optimizer = _optimizer(self.supernet, config)
        self.loss_config = LossConfig(config.optim.label_smoothing, config.optim.kd_temperature, config.optim.kd_ratio)
        cuda = self.device.type == "cuda"
        self.amp = cuda if run.amp == "auto" else run.amp == "bf16"
        self.channels_last = cuda if run.channels_last == "auto" else run.channels_last == "on"
        backend = ops.resolve_depthwise_backend(run.dw_backend, torch.empty(0, device=self.device))
        for flag in ("fuse_dw_grad", "fuse_dw_bn_act"):
            if getattr(run, flag) and backend != "triton":
                raise ValueError(
                    f"run.{flag} needs the Triton depthwise backend; run.dw_backend={run.dw_backend!r} resolves to "
                    f"{backend} on {self.device}"
                )
        self.teacher: FrozenTeacher | None = None
        self.reorganized: list[str] = []
        self.epoch, self.step = 0, 0
        self._stop: _StopRequest | None = None  # fit's signal handlers
        self._stop_agreed: int | None = None  # the signal any rank got by the last step's reduction (distributed)
        self.epoch_stats: dict[str, float] = defaultdict(float)
        # seconds, steps, term-steps and data waits per phase; seconds per device (a run may resume on another)
        self.cost: dict[str, dict[str, float]] = {
            "seconds": {},
            "steps": {},
            "term_steps": {},
            "data_wait": {},
            "device_seconds": {},
            "macs": {},
        }
        self.device_name = device_name(self.device)
        self.history: list[dict[str, Any]] = []
        self.out_dir = Path(out_dir) if out_dir is not None else None
        main = self.ctx.is_main and self.out_dir is not None
        self.step_log = _JsonLog(self.out_dir / "steps.jsonl" if main else None)
        self.epoch_log = _JsonLog(self.out_dir / "epochs.jsonl" if main else None)
        self._writers = self._external_loggers() if main else []
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")

    # --- progress -------------------------------------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        return self.strategy.total_epochs

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step

    @property
    def _batch_splits(self) -> int:
        """How many parts each global batch is split into (each part's BN uses its own statistics)."""
        return self.ctx.world_size * self.config.run.grad_accum

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    # --- one step ---------------------------------------------------------------------------------------------------
    def _before_step(self, plan: Plan) -> None:
        r = plan.reorganize
        if r is not None and r.key not in self.reorganized:
            reorganize_channels(self.supernet, [self.optimizer], expand_stage=r.expand_stage)
            self.reorganized.append(r.key)
        if plan.needs_teacher and self.teacher is None:
            self.teacher = FrozenTeacher(self.supernet)

    def train_step(self, images: Tensor, labels: Tensor) -> dict[str, Any]:
        """One optimizer step on this rank's batch; returns the step's log record."""
        progress = Progress(self.epoch, self.step, self.steps_per_epoch)
        plan = self.strategy.plan(progress, self.config.run.seed)
        self._before_step(plan)
        for group in self.optimizer.param_groups:
            group["lr"] = plan.lr
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.accumulator.zero_()
        micro = self.config.run.grad_accum
        if images.shape[0] % micro:
            raise ValueError(
                f"a batch of {images.shape[0]} images does not split into run.grad_accum={micro} equal micro-batches"
            )
        losses, correct = [], torch.zeros((), device=self.device)
        for m in range(micro):
            x, y = self._micro_batch(images, labels, m, micro)
            # each micro-batch sums into its own buffer, added to the total after: the arithmetic of an all-reduce
            # over ranks, so micro-batches on one process reproduce ranks bit for bit (see _micro_batch)
            target = self.accumulator if m == 0 else self._scratch()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                teacher_logits = self.teacher(x) if plan.needs_teacher else None
                result = functional_step(
                    self.supernet,
                    self.params,
                    self.buffers,
                    target,
                    plan.terms,
                    x,
                    y,
                    loss_config=self.loss_config,
                    teacher_logits=teacher_logits,
                    dw_backend=self.config.run.dw_backend,
                    fuse_dw_grad=self.config.run.fuse_dw_grad,
                    fuse_dw_bn_act=self.config.run.fuse_dw_bn_act,
                )
            if m > 0:
                self.accumulator.flat.add_(target.flat)
                self.accumulator.touched |= target.touched
            losses.append(torch.stack(result.losses).float())
            if result.full_logits is not None:
                target = y.argmax(1) if y.ndim == 2 else y
                correct += (result.full_logits.argmax(1) == target).sum()
        term_losses = torch.stack(losses).mean(0)
        n = len(plan.terms)
        sync = torch.cat([term_losses, correct.view(1).float()])
        if self.ctx.distributed:
            sync = torch.cat([sync, self._agree(term_losses)])
        values = sync.tolist()  # the step's one host sync
        term_values, n_correct = values[:n], values[n]
        bad = [(self.ctx.rank, i) for i, v in enumerate(term_values) if not math.isfinite(v)]
        if self.ctx.distributed:
            flags = values[n + 1 :]
            self._stop_agreed = int(flags[-1]) or None
            bad = bad or [(r, int(f) - 1) for r, f in enumerate(flags[:-1]) if f > 0]
        if bad:
            rank, i = bad[0]
            t = plan.terms[i]
            value = f" {term_values[i]}" if rank == self.ctx.rank else ""
            where = f"epoch {self.epoch} step {self.step} (global step {self.global_step})"
            where += f" on rank {rank}" if self.ctx.distributed else ""
            last = f"; the last good checkpoint is {self.checkpoint_dir / 'last.pt'}" if self.checkpoint_dir else ""
            raise NonFiniteLoss(
                f"non-finite loss{value} at {where}, term {i} ({t.role}, loss {t.loss}) on arch {t.arch}{last}"
            )
        self.ctx.all_reduce_sum_(self.accumulator.flat)
        self.accumulator.flat.mul_(1.0 / (micro * self.ctx.world_size))
        self.accumulator.bind(self.named_params)
        clip_value = self.strategy.grad_clip_value
        if clip_value is not None:
            self.accumulator.flat.clamp_(-clip_value, clip_value)
        if self.config.optim.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.named_params.values() if p.grad is not None], self.config.optim.grad_clip_norm
            )
        self.optimizer.step()
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "phase": plan.phase,
            "lr": plan.lr,
            "epsilon": plan.epsilon,
            "losses": {f"{i}:{t.role}": v for i, (t, v) in enumerate(zip(plan.terms, term_values))},
        }
        stats = self.epoch_stats
        for key, v in record["losses"].items():
            stats[f"loss/{key.split(':', 1)[1]}"] += v
            stats[f"count/{key.split(':', 1)[1]}"] += 1
        if any(t.role == "full" for t in plan.terms):
            stats["full_correct"] += n_correct
            stats["full_seen"] += images.shape[0]
        return record | {"_terms": len(plan.terms), "_macs": self._step_macs(plan, images)}

    def _step_macs(self, plan: Plan, images: Tensor) -> float:
        """Multiply-accumulates of the step over all ranks: each term's forward and backward (counted as three
        forwards, the usual convention: the input and the weight gradients each cost about a forward), and the
        frozen teacher's forward."""
        resolution = images.shape[-1]  # 30 µs a subnet (OFA-MBV3): nothing to cache
        per_image = sum(3 * self.supernet.macs(t.arch, resolution) for t in plan.terms)
        if plan.needs_teacher:
            per_image += self.supernet.macs(self.supernet.max_arch(), resolution)
        return float(per_image) * images.shape[0] * self.ctx.world_size

    def _agree(self, term_losses: Tensor) -> Tensor:
        """What every rank must know before the gradient all-reduce, reduced with MAX: per rank, 1 + the index of its
        first non-finite term loss (0: none); last, the signal that asked this or any rank to stop (0: none)."""
        n = len(term_losses)
        index = torch.arange(1, n + 1, device=term_losses.device, dtype=torch.float32)
        first = torch.where(torch.isfinite(term_losses), n + 1, index).min()
        flags = torch.zeros(self.ctx.world_size + 1, device=term_losses.device)
        flags[self.ctx.rank] = torch.where(first <= n, first, 0)
        flags[-1] = self._local_stop() or 0
        return self.ctx.all_reduce_max_(flags)

    def _local_stop(self) -> int | None:
        return self._stop.signum if self._stop is not None else None

    def _stop_signal(self, *, reduce: bool) -> int | None:
        """The signal that asked the run to stop, if any: this process's own in a single process; in a distributed
        run the one all ranks agreed on, by the last step's reduction or (``reduce``) by a reduction now."""
        if not self.ctx.distributed:
            return self._local_stop()
        if reduce:
            flag = torch.tensor([float(self._local_stop() or 0)], device=self.device)
            self._stop_agreed = int(self.ctx.all_reduce_max_(flag).item()) or None
        return self._stop_agreed

    @staticmethod
    def _micro_batch(images: Tensor, labels: Tensor, m: int, micro: int) -> tuple[Tensor, Tensor]:
        """Micro-batch ``m`` of ``micro``: every ``micro``-th sample from ``m`` on, the split the loaders' strided
        sharding gives ranks, copied densely in the batch's own memory format as a rank's batch would be (the
        convolution kernels round differently on strided views)."""
        if micro == 1:
            return images, labels
        fmt = (
            torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        )
        return images[m::micro].contiguous(memory_format=fmt), labels[m::micro].contiguous()

    def _scratch(self) -> GradAccumulator:
        if not hasattr(self, "_scratch_acc"):
            self._scratch_acc = GradAccumulator(self.params)
        self._scratch_acc.zero_()
        return self._scratch_acc

    # --- loop ---------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the end (from wherever a restored checkpoint left off); returns the run summary."""
        from tqdm import tqdm

        run = self.config.run
        total_steps = self.total_epochs * self.steps_per_epoch
        self.step_log.truncate_from("global_step", self.global_step)
        self.epoch_log.truncate_from("epoch", self.epoch)
        bar = tqdm(
            total=total_steps,
            initial=self.global_step,
            disable=not (run.progress and self.ctx.is_main),
            unit="step",
            dynamic_ncols=True,
        )
        # under torchrun a second SIGINT within a second is the agent's copy of the first
        self._stop = _StopRequest(announce=self.ctx.is_main, repeat_window=1.0 if self.ctx.torchrun else 0.0)
        try:
            self._loop(bar)
        finally:
            self._stop = None
        return self.summary()

    def _loop(self, bar: Any) -> None:
        run = self.config.run
        with self._stop, contextlib.closing(bar):
            while True:
                # asked during the last step of an epoch (or the run): the epoch's checkpoint is saved
                signum = self._stop_signal(reduce=True)
                if signum is not None:
                    self._stopped(signum)
                if self.epoch >= self.total_epochs:
                    break
                epoch_start = time.perf_counter()
                batches = self.train_loader.epoch(self.epoch, start_step=self.step)
                try:
                    waited = time.perf_counter()
                    for images, labels in batches:
                        start = time.perf_counter()
                        record = self.train_step(images, labels)
                        seconds = time.perf_counter() - start
                        terms, macs = record.pop("_terms"), record.pop("_macs")
                        self._account(record["phase"], seconds, terms, start - waited, macs)
                        record |= {
                            "step_seconds": seconds,
                            "data_wait": start - waited,
                            "images_per_s": images.shape[0] * self.ctx.world_size / max(seconds, 1e-9),
                        }
                        self.step += 1
                        if self.step % run.log_every == 0 or self.step == self.steps_per_epoch:
                            self.step_log.write(record)
                            self._external_log(record)
                        bar.update(1)
                        bar.set_postfix(
                            phase=record["phase"],
                            lr=f"{record['lr']:.4g}",
                            eps=f"{record['epsilon']:.3g}",
                            loss=f"{next(iter(record['losses'].values())):.3f}",
                        )
                        signum = self._stop_signal(reduce=False)
                        if self.step < self.steps_per_epoch and (
                            self.global_step % run.checkpoint_every == 0 or signum is not None
                        ):
                            self.save()
                            if signum is not None:
                                self._stopped(signum)
                        waited = time.perf_counter()
                finally:
                    close = getattr(batches, "close", None)
                    if close is not None:
                        close()
                self._end_epoch(time.perf_counter() - epoch_start)

    def _stopped(self, signum: int) -> None:
        self.ctx.barrier()  # no rank leaves (and no launcher tears the others down) before rank 0 saved
        where = f"stopped by {signal.Signals(signum).name} at epoch {self.epoch}, step {self.step}"
        if self.checkpoint_dir is None:
            raise TrainingStopped(f"{where} (no out_dir: nothing saved)", signum)
        raise TrainingStopped(
            f"{where}, saved in {self.checkpoint_dir / 'last.pt'}; continue with deps train --resume {self.out_dir}",
            signum,
        )

    def _account(self, phase: str, seconds: float, terms: int, wait: float, macs: float) -> None:
        c = self.cost
        pairs = (("seconds", seconds), ("steps", 1), ("term_steps", terms), ("data_wait", wait), ("macs", macs))
        for key, v in pairs:
            c[key][phase] = c[key].get(phase, 0.0) + v
        c["device_seconds"][self.device_name] = c["device_seconds"].get(self.device_name, 0.0) + seconds

    def _end_epoch(self, wall: float) -> None:
        stats = dict(self.epoch_stats)
        keys = sorted(stats)
        if self.ctx.distributed:  # metrics over all ranks: one reduction per epoch
            t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
            self.ctx.all_reduce_sum_(t)
            stats = dict(zip(keys, t.tolist()))
        record: dict[str, Any] = {"epoch": self.epoch, "wall_seconds": wall}
        for k in keys:
            if k.startswith("loss/"):
                role = k[len("loss/") :]
                record[f"train_loss/{role}"] = stats[k] / max(stats[f"count/{role}"], 1)
        if stats.get("full_seen"):
            record["train_top1/full"] = stats["full_correct"] / stats["full_seen"]
        plan = self.strategy.plan(
            Progress(self.epoch, self.steps_per_epoch - 1, self.steps_per_epoch), self.config.run.seed
        )
        record |= {"phase": plan.phase, "lr": plan.lr, "epsilon": plan.epsilon}
        if self.val_loader is not None:
            record |= self._validate()
        record["cost"] = self.cost_report()
        self.history.append(record)
        self.epoch_log.write(record)
        self._external_log(record, step=self.epoch)
        self.epoch += 1
        self.step = 0
        self.epoch_stats = defaultdict(float)
        self.save()
        if self.on_epoch_end is not None:
            self.on_epoch_end(self)

    def _validate(self) -> dict[str, float]:
        """The full model on the validation set. Once subnets train, they move the shared BN statistics too, so
        with a calibration loader the full model's BN is recalibrated first (and the training statistics restored)."""
        from deps_core.evaluate import CachedBatches, evaluate, evaluate_archs

        arch = self.supernet.max_arch()
        if self.calib_loader is None:
            result = evaluate(self.supernet, arch, self.val_loader, ctx=self.ctx, amp=self.amp)
            self.supernet.train()
            return {"val_top1/full": result["top1"], "val_loss/full": result["loss"]}
        if self._calib is None:
            run = self.config.run
            self._calib = CachedBatches.from_loader(
                self.calib_loader.epoch(0), max_images=run.calib_images, batch_size=run.calib_batch
            )
        (result,) = evaluate_archs(
            self.supernet, [arch], self._calib, self.val_loader, amp=self.amp, ctx=self.ctx, progress=False
        )
        self.supernet.train()
        return {"val_top1/full": result.top1, "val_loss/full": result.loss}

    # --- cost -----------------------------------------------------------------------------------------------------
    def cost_report(self) -> dict[str, Any]:
        """Wall and device time per phase so far, and the projected cost of the whole run."""
        c, world = self.cost, self.ctx.world_size
        seconds = sum(c["seconds"].values())
        per_term = {p: c["seconds"][p] / c["term_steps"][p] for p in c["seconds"] if c["term_steps"][p]}
        mean_rate = seconds / max(sum(c["term_steps"].values()), 1)
        projected = 0.0
        seed = self.config.run.seed
        for epoch in range(self.total_epochs):
            plan = self.strategy.plan(Progress(epoch, 0, self.steps_per_epoch), seed)
            projected += self.steps_per_epoch * len(plan.terms) * per_term.get(plan.phase, mean_rate)
        return {
            "train_seconds_by_phase": dict(c["seconds"]),
            "data_wait_seconds": sum(c["data_wait"].values()),
            "train_seconds": seconds,
            "device_hours": seconds * world / 3600,
            "devices": world,
            "projected_train_hours": projected / 3600,
            "projected_device_hours": projected * world / 3600,
            # multiply-accumulates of the steps (forward + backward, all ranks): a cost no device or load changes;
            # a run resumed from a checkpoint of before 2026-12-07 counts only the steps since
            "train_macs": sum(c["macs"].values()),
            "train_macs_by_phase": dict(c["macs"]),
            # the device(s) the hours were spent on, most hours first (a resumed run may have moved)
            "device_name": ", ".join(sorted(c["device_seconds"], key=c["device_seconds"].get, reverse=True)) or None,
        }

    # --- checkpoints -------------------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Tensor]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def state_dict(self, rank_rngs: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
        """Everything a resume needs. ``rank_rngs``: every rank's RNG state in rank order (what :meth:`save` gathers);
        stored as ``rng["ranks"]`` next to this process's own."""
        rng = self._rng_state()
        if rank_rngs is not None:
            rng["ranks"] = rank_rngs
        return {
            "config": self.config.to_dict(),
            "num_classes": self.num_classes,
            "model": self.supernet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": {
                "epoch": self.epoch,
                "step": self.step,
                "steps_per_epoch": self.steps_per_epoch,
                "batch_splits": self._batch_splits,
            },
            "rng": rng,
            "strategy_state": {"reorganized": list(self.reorganized)},
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "epoch_stats": dict(self.epoch_stats),
            "cost": {k: dict(v) for k, v in self.cost.items()},
            "history": json.dumps(self.history),
        }

    def save(self) -> Path | None:
        """Rank 0 writes ``checkpoints/last.pt``; a collective (every rank's RNG state): all ranks call it."""
        rngs = self.ctx.gather_object(self._rng_state()) if self.ctx.distributed else None
        if not self.ctx.is_main or self.checkpoint_dir is None:
            return None
        summary = {"epoch": self.epoch, "step": self.step, "global_step": self.global_step}
        return save_checkpoint(self.state_dict(rngs), self.checkpoint_dir, summary=summary)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["progress"]["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"checkpoint has {state['progress']['steps_per_epoch']} steps per epoch, this loader "
                f"{self.steps_per_epoch}: resume with the same data, batch size and world size"
            )
        splits = state["progress"].get("batch_splits", self._batch_splits)
        if splits != self._batch_splits:
            world = self.ctx.world_size
            fix = f": run.grad_accum={splits // world} here" if splits % world == 0 else ""
            raise ValueError(
                f"the checkpoint's run split each batch over processes × run.grad_accum = {splits}, this one over "
                f"{world} × {self.config.run.grad_accum}: resume with the same product{fix} (BN normalises each part "
                "on its own, so another split trains another model)"
            )
        self.supernet.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = state["progress"]["epoch"], state["progress"]["step"]
        ranks = state["rng"].get("ranks") or [state["rng"]]  # each rank its own; from another world size, rank 0's
        rng = ranks[self.ctx.rank] if len(ranks) == self.ctx.world_size else ranks[0]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.reorganized = list(state["strategy_state"]["reorganized"])
        if state["teacher"] is not None:
            self.teacher = FrozenTeacher(self.supernet)
            self.teacher.load_state_dict(state["teacher"])
        self.epoch_stats = defaultdict(float, state["epoch_stats"])
        self.cost = {k: dict(v) for k, v in state["cost"].items()}
        for key in ("device_seconds", "macs"):  # checkpoints before 2026-12-07 did not record these
            self.cost.setdefault(key, {})
        self.history = json.loads(state["history"])

    def resume(self, path: str | Path) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))

    # --- summary and loggers -----------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {
            "epochs": self.total_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "history": self.history,
            "cost": self.cost_report(),
        }

    def _external_loggers(self) -> list[Any]:
        writers = []
        if self.config.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError(f"run.tensorboard=true needs the tensorboard package ({err})") from None
            writers.append(SummaryWriter(str(self.out_dir / "tensorboard")))
        if self.config.run.wandb:
            try:
                import wandb
            except ImportError as err:
                raise ValueError(f"run.wandb=true needs the wandb package ({err})") from None
            writers.append(wandb.init(project="deps", config=self.config.to_dict(), dir=str(self.out_dir)))
        return writers

    def _external_log(self, record: dict[str, Any], step: int | None = None) -> None:
        if not self._writers:
            return
        flat = {}
        for k, v in record.items():
            if isinstance(v, dict):
                flat |= {f"{k}/{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float))}
            elif isinstance(v, (int, float)):
                flat[k] = v
        step = record.get("global_step", 0) if step is None else step
        for w in self._writers:
            if hasattr(w, "add_scalar"):
                for k, v in flat.items():
                    w.add_scalar(k, v, step)
            else:
                w.log(flat, step=step)
