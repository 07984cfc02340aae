"""A rank of a 2-process gloo run under torchrun, for ``tests/test_trainer.py``: one rank meets a NaN or a signal.

``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_two_ranks.py MODE OUT``; MODE ``nan``: rank
1's batch 1 is NaN; ``sigterm``: rank 1 raises SIGTERM in itself just before it yields batch 1. Each rank writes what
``Trainer.fit`` raised to ``OUT/rank{r}.json``.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import torch

from deps_core.config import apply_overrides, load_preset
from deps_core.distributed import DistContext
from deps_core.trainer import NonFiniteLoss, Trainer, TrainingStopped

AT = 1


class _Batches:
    def __init__(self, rank: int, mode: str):
        g = torch.Generator().manual_seed(rank)
        self.batches = []
        for _ in range(4):
            self.batches.append((torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)))
        self.rank, self.mode = rank, mode

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int, start_step: int = 0):
        for i, (x, y) in enumerate(self.batches[start_step:], start_step):
            if epoch == 0 and i == AT and self.rank == 1:
                if self.mode == "nan":
                    x = torch.full_like(x, float("nan"))
                else:
                    signal.raise_signal(signal.SIGTERM)
            yield x, y


def main(mode: str, out: Path) -> int:
    ctx = DistContext.from_env("cpu")
    config = apply_overrides(
        load_preset("default"),
        ["model.width_mult=0.25", "model.d_choices=2", "data.batch_size=8", "data.resolution=8", "method.epochs=2",
         "method.p_fm=0", "method.k=2", "run.progress=false", "run.checkpoint_every=100"],
    )  # fmt: skip
    trainer = Trainer(config, _Batches(ctx.rank, mode), num_classes=10, ctx=ctx, out_dir=out / "run")
    try:
        trainer.fit()
        result = {"raised": None}
    except (NonFiniteLoss, TrainingStopped) as err:
        result = {"raised": type(err).__name__, "message": str(err)}
    result["position"] = [trainer.epoch, trainer.step]
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(result))
    ctx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
