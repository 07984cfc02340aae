"""Latency of subnets on the current device: measured, and predicted from a per-block lookup table.

OFA (Cai et al., ICLR 2020, Sec. 3.3 and ``ofa/nas/efficiency_predictor/latency_lookup_table.py``) predicts a
subnet's latency as the sum of per-layer entries of a table measured once per device. Here the table is measured by
the library itself, lazily: the first query of a block configuration runs that block alone on the device and stores
its median time; later queries read the stored value. The table round-trips through a JSON file so a device is
measured once.

A table entry is keyed by the block's kind (``stem``, ``first`` — the fixed expand-ratio-1 block —, ``mbconv``,
``head``), its input/output channels, kernel size, expand ratio, stride, activation, squeeze-excite and input
resolution. The head entry covers everything after the last block (the pre-pool convs, the global pool, the
post-pool convs and the classifier). A subnet's predicted latency is ``stem + first + Σ active blocks + head``: it
leaves out what running the layers back to back saves or costs (caches, Python dispatch), which is why predicted and
measured whole-subnet latencies agree only up to a factor (see ``tests/test_search.py``).

Timing (:func:`measure_latency`): ``warmup`` untimed calls, then the median of ``repeats`` timed calls, each call
bracketed by ``torch.cuda.synchronize()`` on CUDA; inference mode, eval-mode BN, float32, a fixed batch size.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn as nn
from torch import Tensor

from deps_core import ops
from deps_core.arch import Arch
from deps_core.export import _ConvBNAct, _MBConv, extract_subnet  # the static layers a deployed subnet runs
from deps_core.spaces.base import SpaceSpec, mid_channels, se_channels

__all__ = ["LATENCY_FORMAT", "BlockKey", "LatencyTable", "block_keys", "measure_latency", "measure_subnet_latency"]

LATENCY_FORMAT = "deps.latency_table/1"


def _out(h: int, stride: int) -> int:
    return -(-h // stride)


@attrs.frozen
class BlockKey:
    """One table entry's block configuration. ``resolution`` is the input's height (= width); ``expand`` the expand
    ratio (1 for ``first``); ``head`` carries the head's layer widths and activations in ``extra``."""

    kind: str
    cin: int
    cout: int
    kernel: int = 1
    expand: int = 1
    stride: int = 1
    resolution: int = 1
    act: str = "none"
    se: bool = False
    extra: str = ""

    def __str__(self) -> str:
        s = (
            f"{self.kind}:i{self.cin}:o{self.cout}:k{self.kernel}:e{self.expand}:s{self.stride}:r{self.resolution}"
            f":{self.act}:{'se' if self.se else 'nose'}"
        )
        return s + (f":{self.extra}" if self.extra else "")


def block_keys(spec: SpaceSpec, arch: Arch, num_classes: int) -> list[BlockKey]:
    """The table entries whose sum predicts ``arch``'s latency: stem, first block, each active block, head."""
    spec.check(arch)
    h = arch.resolution
    s = spec.stem
    keys = [BlockKey("stem", 3, s.cout, s.kernel_size, 1, s.stride, h, s.act, False, "bn" if s.bn else "nobn")]
    h = _out(h, s.stride)
    f = spec.first
    keys.append(BlockKey("first", f.cin, f.cout, f.kernel_size, 1, f.stride, h, f.act, f.se))
    h = _out(h, f.stride)
    for i in arch.active_blocks(spec):
        b = spec.blocks[i]
        keys.append(BlockKey("mbconv", b.cin, b.cout, arch.ks[i], arch.e[i], b.stride, h, b.act, b.se))
        h = _out(h, b.stride)
    layers = [f"{c.cout}{c.act}k{c.kernel_size}s{c.stride}{'bn' if c.bn else ''}" for c in spec.head_pre_pool]
    layers += ["pool"] + [f"{c.cout}{c.act}k{c.kernel_size}{'bn' if c.bn else ''}" for c in spec.head_post_pool]
    keys.append(BlockKey("head", spec.stages[-1].width, num_classes, resolution=h, extra="-".join(layers)))
    return keys


class _Head(nn.Module):
    """Everything after the last block: pre-pool convs, global pool, post-pool convs, classifier."""

    def __init__(self, spec: SpaceSpec, num_classes: int):
        super().__init__()
        eps, momentum = spec.bn_eps, spec.bn_momentum
        cin, pre, post = spec.stages[-1].width, [], []
        for c in spec.head_pre_pool:
            pre.append(_ConvBNAct(cin, c.cout, c.kernel_size, c.stride, 1, c.bn, c.act, eps, momentum))
            cin = c.cout
        for c in spec.head_post_pool:
            post.append(_ConvBNAct(cin, c.cout, c.kernel_size, 1, 1, c.bn, c.act, eps, momentum))
            cin = c.cout
        self.pre, self.post = nn.ModuleList(pre), nn.ModuleList(post)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.pre:
            x = layer(x)
        x = ops.global_pool(x)
        for layer in self.post:
            x = layer(x)
        return self.classifier(x.flatten(1))


def _block_module(key: BlockKey, spec: SpaceSpec) -> nn.Module:
    eps, momentum = spec.bn_eps, spec.bn_momentum
    if key.kind == "stem":
        return _ConvBNAct(3, key.cout, key.kernel, key.stride, 1, key.extra == "bn", key.act, eps, momentum)
    if key.kind in ("first", "mbconv"):
        expand = key.kind == "mbconv"
        mid = mid_channels(key.cin, key.expand) if expand else key.cin
        config = dict(
            cin=key.cin,
            mid=mid,
            cout=key.cout,
            k=key.kernel,
            stride=key.stride,
            act=key.act,
            expand=expand,
            se_mid=se_channels(mid) if key.se else None,
            residual=key.stride == 1 and key.cin == key.cout,
        )
        return _MBConv(config, eps, momentum)
    if key.kind == "head":
        return _Head(spec, key.cout)
    raise ValueError(f"unknown block kind {key.kind!r}")


@contextlib.contextmanager
def cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op CPU threads (``None``: leave torch's setting), then restore it."""
    if device.type != "cpu" or threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(fn: Callable[[], Any], device: torch.device | str, *, warmup: int = 10, repeats: int = 30) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup`` untimed ones; on CUDA the
    device is synchronized before and after each timed call."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1; got {warmup}, {repeats}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure_subnet_latency(
    supernet,
    arch: Arch,
    *,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    device=None,
    threads: int | None = 1,
) -> float:
    """Median latency (ms) of ``arch`` run as its extracted static network (eval mode) on ``device`` (default: the
    supernet's), with ``threads`` CPU threads."""
    device = torch.device(device) if device is not None else next(supernet.parameters()).device
    net = extract_subnet(supernet, arch).eval().to(device)
    with torch.random.fork_rng(devices=[]):
        x = torch.randn(batch_size, 3, arch.resolution, arch.resolution).to(device)
    with cpu_threads(device, threads):
        return measure_latency(lambda: net(x), device, warmup=warmup, repeats=repeats)


def device_name(device: torch.device, threads: int | None = None) -> str:
    """What the measurements depend on: the GPU's name, or the CPU model and the intra-op thread count."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model}, {threads or torch.get_num_threads()} threads"


class LatencyTable:
    """A per-device latency lookup table, filled lazily and saved to / loaded from a JSON file.

    ``path``: the file; when it exists it is loaded, and it must have been measured on the same device (name, thread
    count) with the same batch size, else ``ValueError``. ``save()`` writes it (atomically). ``threads``: intra-op
    threads of CPU measurements (default 1: a single-thread latency, which a machine shared with other processes
    measures far more steadily than a multi-threaded one; ``None`` uses torch's current setting).
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        batch_size: int = 1,
        warmup: int = 10,
        repeats: int = 30,
        path: str | os.PathLike | None = None,
        threads: int | None = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.warmup, self.repeats = warmup, repeats
        self.threads = threads if self.device.type == "cpu" else None
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, float] = {}
        self.measured = 0  # entries this object measured (not loaded)
        self.meta = {
            "format": LATENCY_FORMAT,
            "device": device_name(self.device, self.threads),
            "batch_size": batch_size,
            "dtype": "float32",
            "torch": torch.__version__.split("+")[0],
        }
        if self.path is not None and self.path.is_file():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"latency table {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != LATENCY_FORMAT:
            raise ValueError(f"{path} is not a latency table (format {LATENCY_FORMAT!r})")
        for field in ("device", "batch_size", "dtype"):
            if data.get(field) != self.meta[field]:
                raise ValueError(
                    f"latency table {path} was measured with {field} {data.get(field)!r}, not {self.meta[field]!r}; "
                    "pass another table file to measure this device"
                )
        self.entries.update({str(k): float(v) for k, v in data["entries_ms"].items()})
        self.meta["measured_at"] = data.get("measured_at")

    def save(self, path: str | os.PathLike | None = None) -> Path:
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("no path to save the latency table to")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.meta | {
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "entries_ms": dict(sorted(self.entries.items())),
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
        return path

    def lookup(self, key: BlockKey, spec: SpaceSpec) -> float:
        """The entry of ``key`` in milliseconds, measured now if the table lacks it (``spec``: BN constants and the
        head's layers)."""
        name = str(key)
        if name not in self.entries:
            cin = 3 if key.kind == "stem" else key.cin
            with torch.random.fork_rng(devices=[]):  # random weights and input; the caller's RNG state is kept
                module = _block_module(key, spec).eval().to(self.device)
                x = torch.randn(self.batch_size, cin, key.resolution, key.resolution).to(self.device)
            with cpu_threads(self.device, self.threads):
                self.entries[name] = measure_latency(
                    lambda: module(x), self.device, warmup=self.warmup, repeats=self.repeats
                )
            self.measured += 1
        return self.entries[name]

    def predict(self, spec: SpaceSpec, arch: Arch, num_classes: int = 1000) -> float:
        """Predicted latency of ``arch`` in milliseconds: the sum of its blocks' entries (stem and head included)."""
        return sum(self.lookup(k, spec) for k in block_keys(spec, arch, num_classes))

    def __len__(self) -> int:
        return len(self.entries)
