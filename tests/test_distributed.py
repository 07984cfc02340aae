"""`DistContext`'s process group: it ends with the command, threads and all; what rank 0 alone works out."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch

from deps_core.cli import _results_log
from deps_core.config import apply_overrides, load_preset
from deps_core.distributed import DistContext
from deps_core.evaluate import data_digest
from deps_core.spaces import create_supernet


def _threads() -> list[str]:
    return sorted((p / "comm").read_text().strip() for p in Path("/proc/self/task").iterdir())


def _rank(rank: int, port: int, folder: str) -> None:
    """A rank of a 2-process gloo group that does what a training run does with it, then shuts it down."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK="0")
    torch.set_num_threads(1)
    seen = {"dynamo_before": "torch._dynamo" in sys.modules, "before": _threads()}
    ctx = DistContext.from_env("cpu")
    # the trainer's optimizer: torch.optim imports torch._dynamo on first use, after the group exists
    torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1).step()
    ctx.all_reduce_sum_(torch.ones(3))
    ctx.all_reduce_max_(torch.ones(3))
    ctx.broadcast_object({"rank": rank})
    ctx.gather_object(rank)
    ctx.barrier()
    # the results log's setup of an evaluation: rank 0 reads the data files (here only its node has them) and tells
    config = apply_overrides(
        load_preset("default"),
        ["data.source=beton", *(f"data.{s}={folder}/rank{rank}/{s}.beton" for s in ("train", "val"))],
    )
    net = create_supernet("ofa_mbv3_32", num_classes=10, width_mult=0.25, generator=torch.Generator().manual_seed(0))
    try:
        seen["setup"] = _results_log(folder, "subnets", net, config, ctx, False, reads_val=True).setup
    except ValueError as err:
        seen["setup"] = str(err)
    seen |= {"dynamo_after": "torch._dynamo" in sys.modules, "during": _threads()}
    ctx.shutdown()
    seen["after"] = _threads()
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(seen))


def test_shutdown_ends_the_gloo_group_and_its_threads_and_rank_0_alone_reads_the_data_for_the_setup(tmp_path):
    # A group left alive past shutdown keeps gloo's worker threads into the interpreter's exit, where one that frees
    # its last collective's tensors must take the GIL and aborts the process ("terminate called without an active
    # exception", rarely, under load; torchrun reports exit -6 after a finished run). torch._dynamo, imported after
    # the group exists, held references to it that destroy_process_group does not drop.
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "rank0").mkdir()
    for split in ("train", "val"):
        (tmp_path / "rank0" / f"{split}.beton").write_bytes(split.encode() * 1000)
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2)
    setups = [json.loads((tmp_path / f"rank{r}.json").read_text())["setup"] for r in (0, 1)]
    assert setups[0] == setups[1] and setups[0]["data"]["train"] == data_digest(tmp_path / "rank0" / "train.beton")
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert not seen["dynamo_before"] and seen["dynamo_after"]  # the order a training run imports them in
        assert len(seen["during"]) >= len(seen["before"]) + 2, seen  # gloo's threads while the group lives
        assert seen["after"] == seen["before"], seen
