"""End-to-end epochs of the embedded default (``deps train`` with no arguments): FM-warmup vs ε-shrinking.

One epoch = the trainer's own loop body over the FFCV loader of the bundled synthetic set: data loading, the plan,
the functional step, the all-reduce (a no-op on one process), the optimizer: everything ``Trainer.fit`` times per
epoch except validation and checkpoints. ``fm_warmup`` runs epoch 0 of the default (the full model alone),
``shrinking`` its last epoch (full + k − 1 = 2 subnets at ε = 1, in-place KD). The DεpS claim behind the goal: an
FM-warmup epoch costs about 1/k of a shrinking epoch (less compute per step: the subnets are smaller than the full
model, so the ratio's MAC-predicted value is in ``extra_info["mac_ratio"]``).

Same CPU settings as the ``deps`` program (allocator, threads). The synthetic set is generated once into the cache.
"""

from __future__ import annotations

import platform
import tempfile

import pytest
import torch

from deps_core.config import apply_overrides, load_preset
from deps_core.data import build_data
from deps_core.distributed import DistContext
from deps_core.runtime import cpu_threads, tune_cpu_allocator
from deps_core.schedules import Progress
from deps_core.trainer import Trainer


def _trainer(tmp: str):
    config = apply_overrides(load_preset("default"), [f"run.out_dir={tmp}", "run.progress=false"])
    ctx = DistContext.from_env(config.run.device)
    if ctx.device.type == "cpu":
        tune_cpu_allocator()
        cpu_threads(loader_threads=config.data.num_workers or 1)
    data = build_data(config, ctx)
    return Trainer(config, data.train, num_classes=data.num_classes, ctx=ctx, out_dir=None)


def _epoch(trainer: Trainer, epoch: int):
    def run():
        trainer.epoch, trainer.step = epoch, 0
        for images, labels in trainer.train_loader.epoch(epoch):
            trainer.train_step(images, labels)
            trainer.step += 1
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    return run


@pytest.mark.parametrize("phase", ["fm_warmup", "shrinking"])
def test_bench_default_epoch(benchmark, phase):
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(tmp)
        epoch = 0 if phase == "fm_warmup" else trainer.total_epochs - 1
        plan = trainer.strategy.plan(Progress(epoch, 0, trainer.steps_per_epoch), trainer.config.run.seed)
        assert plan.phase.startswith("fm") == (phase == "fm_warmup"), plan.phase
        net, steps, seed = trainer.supernet, trainer.steps_per_epoch, trainer.config.run.seed
        full = net.macs(net.max_arch())
        plans = [trainer.strategy.plan(Progress(epoch, s, steps), seed) for s in range(steps)]
        macs = sum(net.macs(t.arch) for p in plans for t in p.terms) / steps  # per step, over the epoch
        benchmark.group = "epoch of the embedded default (deps train), FM-warmup vs shrinking"
        benchmark.extra_info.update(
            device=torch.cuda.get_device_name() if trainer.device.type == "cuda" else platform.machine(),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            provider=phase,
            steps=trainer.steps_per_epoch,
            terms=len(plan.terms),
            step_mmacs=round(macs / 1e6, 2),
            mac_ratio=round(macs / full, 3),
        )
        benchmark.pedantic(_epoch(trainer, epoch), rounds=3, warmup_rounds=1)
