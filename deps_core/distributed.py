"""The process group of a run: rank, world size, device; the few collectives the trainer needs.

Launched by ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the environment) the run joins a process group —
NCCL on CUDA, gloo on CPU; otherwise it is a single process and every collective is a no-op.
"""

from __future__ import annotations

import datetime
import importlib
import os

import attrs
import torch
import torch.distributed as dist

__all__ = ["DistContext"]


@attrs.frozen
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    # started by torchrun (also with one process): its agent passes the terminal's Ctrl-C on to the workers, which
    # got it from the terminal already, so each worker sees it twice
    torchrun: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str = "auto", *, timeout: datetime.timedelta | None = None) -> DistContext:
        """Join the process group named by torchrun's environment (if any) and pick this rank's device.

        ``timeout``: how long a collective may wait for the other ranks (torch's default: 10 minutes with NCCL, 30 with
        gloo); a command whose ranks wait while rank 0 works alone needs more.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("run.device is 'cuda' but no CUDA device is available")
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
        if world > 1 and not dist.is_initialized():
            # torch.optim imports torch._dynamo on first use; imported after the group exists, it keeps references to
            # the group that destroy_process_group does not drop, so gloo's worker threads live on into the
            # interpreter's exit, where one freeing its last collective's tensors needs the GIL and aborts the
            # process ("terminate called without an active exception"; torchrun reports -6 after a finished run)
            importlib.import_module("torch._dynamo")

            extra = {"timeout": timeout} if timeout is not None else {}
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **extra)
        torchrun = "TORCHELASTIC_RUN_ID" in os.environ
        return cls(rank=rank, world_size=world, local_rank=local, device=dev, torchrun=torchrun)

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def gather_object(self, obj: object) -> list[object] | None:
        """``obj`` of every rank in rank order on rank 0, ``None`` on the others (``[obj]`` in a single process)."""
        if not self.distributed:
            return [obj]
        out: list[object] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (what the other ranks pass is ignored)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shutdown(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
