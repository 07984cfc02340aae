"""Evaluation of subnets: BN recalibration, accuracy, the paper's Pareto buckets and mean pareto accuracy, plots.

- :func:`calibrate_bn` — OFA's ``set_running_statistics`` without its deep copy and monkey-patched ``forward``: the
  subnet runs in training mode over a fixed calibration set and its active BN channels take the *cumulative* average
  of the batch statistics (momentum ``1 / (b + 1)`` at batch ``b``, PyTorch's ``momentum=None`` rule: mean of batch
  means, mean of unbiased batch variances); every other channel keeps its statistics.
- :func:`evaluate` — top-1 / top-5 / cross-entropy of an arch on a loader (bf16 on CUDA), reduced across ranks.
- :func:`pareto_buckets` and :func:`mean_pareto_accuracy` — DεpS Sec. 5 ("the subnets are present in six different
  FLOP buckets that uniformly divide the supernet's FLOP range"; "mean pareto accuracy … the area under the curve of
  accuracy and normalized FLOPs"), defined precisely in their docstrings since no public code implements them.
- :func:`bucket_archs` — the subnets to evaluate: the largest, the smallest and a sample spread evenly over the
  buckets, so each bucket's "most accurate subnet" is picked from several (uniform sampling leaves the top buckets
  of OFA-MBV3 empty); :func:`eval_archs` picks it or OFA's uniform sampling.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from deps_core.arch import Arch, sized_arch, uniform_arch
from deps_core.config import EVAL_SAMPLERS
from deps_core.distributed import DistContext
from deps_core.supernet import Supernet

__all__ = [
    "CachedBatches",
    "calibrate_bn",
    "evaluate",
    "ArchResult",
    "pareto_buckets",
    "bucket_archs",
    "eval_archs",
    "EVAL_SAMPLERS",
    "mean_pareto_accuracy",
    "plot_pareto",
    "evaluate_archs",
    "pareto_report",
    "format_pareto_table",
    "report_to_json",
    "save_results",
    "load_results",
    "ResultLog",
    "weights_digest",
    "data_digest",
]


class CachedBatches:
    """A fixed list of ``(images, labels)`` batches kept on the device, resized once per resolution and cached, so
    calibrating and evaluating many subnets reads the data once (OFA: 2,000 training images in batches of 200)."""

    def __init__(self, batches: Sequence[tuple[Tensor, Tensor]]):
        if not batches:
            raise ValueError("an empty calibration/evaluation set: it needs at least one batch")
        self._native = [(x, y) for x, y in batches]
        self.resolution = int(self._native[0][0].shape[-1])
        self._by_resolution = {self.resolution: self._native}

    @classmethod
    def from_loader(
        cls,
        batches: Iterable[tuple[Tensor, Tensor]],
        *,
        max_images: int | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
    ) -> CachedBatches:
        """Take up to ``max_images`` images from ``batches``, re-batched to ``batch_size``."""
        xs, ys, n = [], [], 0
        for x, y in batches:
            xs.append(x.to(device) if device is not None else x)
            ys.append(y.to(device) if device is not None else y)
            n += x.shape[0]
            if max_images is not None and n >= max_images:
                break
        if n == 0:
            raise ValueError("an empty calibration/evaluation set: the loader yielded no images")
        x, y = torch.cat(xs), torch.cat(ys)
        if max_images is not None:
            x, y = x[:max_images], y[:max_images]
        size = batch_size or x.shape[0]
        return cls([(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)])

    def at(self, resolution: int | None) -> list[tuple[Tensor, Tensor]]:
        if resolution is None or resolution == self.resolution:
            return self._native
        if resolution not in self._by_resolution:
            self._by_resolution[resolution] = [
                (
                    F.interpolate(
                        x.float(), size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
                    ).to(x.dtype),
                    y,
                )
                for x, y in self._native
            ]
        return self._by_resolution[resolution]

    @property
    def num_images(self) -> int:
        return sum(x.shape[0] for x, _ in self._native)

    def __iter__(self):
        return iter(self._native)


@torch.no_grad()
def calibrate_bn(
    supernet: Supernet,
    arch: Arch,
    batches: CachedBatches | Sequence[tuple[Tensor, Tensor]],
    *,
    resolution: int | None = None,
    amp: bool = False,
) -> None:
    """Recompute the running statistics of ``arch``'s active BN channels from ``batches``, in place.

    ``resolution``: resize the (cached) calibration images to it (default: as stored).
    """
    supernet.check(arch)
    data = batches.at(resolution) if isinstance(batches, CachedBatches) else list(batches)
    if not data:
        raise ValueError("an empty calibration set: it needs at least one batch")
    views = supernet.active_params(arch)
    buffers = supernet.active_buffers(arch)
    device = next(supernet.parameters()).device
    for b, (images, _) in enumerate(data):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            supernet.functional_forward(
                views, buffers, images.to(device), arch, training=True, bn_momentum=1.0 / (b + 1)
            )


@torch.no_grad()
def evaluate(
    supernet: Supernet,
    arch: Arch,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    ctx: DistContext | None = None,
    amp: bool = False,
    epoch: int = 0,
) -> dict[str, float]:
    """Top-1, top-5 (fractions) and mean cross-entropy of ``arch`` on ``loader`` in eval mode (all ranks' data)."""
    supernet.check(arch)
    was_training = supernet.training
    supernet.eval()
    device = next(supernet.parameters()).device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    views, buffers = supernet.active_params(arch), supernet.active_buffers(arch)
    batches = loader.epoch(epoch) if hasattr(loader, "epoch") else loader
    try:
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            if labels.ndim == 2:
                labels = labels.argmax(1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = supernet.functional_forward(views, buffers, images, arch, training=False)
            logits = logits.float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit = top5 == labels[:, None]
            totals += torch.stack(
                [
                    F.cross_entropy(logits, labels, reduction="sum").double(),
                    hit[:, 0].sum().double(),
                    hit.any(1).sum().double(),
                    torch.tensor(labels.shape[0], dtype=torch.float64, device=device),
                ]
            )
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    supernet.train(was_training)
    if ctx is not None:
        ctx.all_reduce_sum_(totals)
    loss, top1, top5, n = totals.tolist()
    if n == 0:
        raise ValueError("the evaluation loader yielded no images")
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n, "images": int(n)}


# --- Pareto --------------------------------------------------------------------------------------------------------


@attrs.frozen
class ArchResult:
    arch: Arch
    macs: int
    top1: float
    top5: float = float("nan")
    loss: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "macs": self.macs, "top1": self.top1, "top5": self.top5, "loss": self.loss}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchResult:
        return cls(Arch.from_dict(d["arch"]), int(d["macs"]), float(d["top1"]), float(d["top5"]), float(d["loss"]))


def pareto_buckets(
    results: Sequence[ArchResult], macs_min: int, macs_max: int, n_buckets: int = 6
) -> list[dict[str, Any]]:
    """Split ``[macs_min, macs_max]`` into ``n_buckets`` equal intervals (the last one closed) and keep the most
    accurate result in each; empty buckets are left out. Returns ``[{bucket, lo, hi, best}]`` by MACs."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1; got {n_buckets}")
    if macs_max <= macs_min:
        raise ValueError(f"the MAC range must be non-empty; got [{macs_min}, {macs_max}]")
    width = (macs_max - macs_min) / n_buckets
    best: dict[int, ArchResult] = {}
    for r in results:
        if not macs_min <= r.macs <= macs_max:
            raise ValueError(f"{r.arch} has {r.macs} MACs, outside the supernet's range [{macs_min}, {macs_max}]")
        b = _bucket_of(r.macs, macs_min, macs_max, n_buckets)
        if b not in best or r.top1 > best[b].top1:
            best[b] = r
    return [
        {"bucket": b, "lo": macs_min + b * width, "hi": macs_min + (b + 1) * width, "best": best[b]}
        for b in sorted(best)
    ]


def _bucket_of(macs: int, macs_min: int, macs_max: int, n_buckets: int) -> int:
    return min(int((macs - macs_min) / ((macs_max - macs_min) / n_buckets)), n_buckets - 1)


def bucket_archs(
    supernet: Supernet, generator: torch.Generator, n: int, *, n_buckets: int = 6, max_draws: int | None = None
) -> list[Arch]:
    """The largest and the smallest subnet, then ``n`` distinct others spread over the ``n_buckets`` equal MAC
    intervals of :func:`pareto_buckets`: bucket ``i`` gets ``n // n_buckets``, and one more for ``i < n % n_buckets``.

    Candidates are :func:`~deps_core.arch.sized_arch` subnets with a size drawn uniformly from [0, 1], kept while
    their bucket has room. If ``max_draws`` candidates (default ``100 * n + 1000``) do not fill a bucket (a space with
    few subnets in that MAC range), the bucket keeps what was found. The result is a function of the generator's
    state; the subnets come in bucket order, each bucket's in the order drawn.
    """
    if n < 0 or n_buckets < 1:
        raise ValueError(f"need n >= 0 and n_buckets >= 1; got n={n}, n_buckets={n_buckets}")
    spec = supernet.spec
    big, small = supernet.max_arch(), supernet.min_arch()
    lo, hi = supernet.macs(small), supernet.macs(big)
    if hi <= lo:  # one subnet only
        return [big]
    quota = [n // n_buckets + (i < n % n_buckets) for i in range(n_buckets)]
    chosen: list[list[Arch]] = [[] for _ in range(n_buckets)]
    seen = {big, small}
    draws = 100 * n + 1000 if max_draws is None else max_draws
    for _ in range(draws):
        if all(len(c) == q for c, q in zip(chosen, quota)):
            break
        arch = sized_arch(spec, generator, float(torch.rand((), generator=generator, dtype=torch.float64)))
        b = _bucket_of(supernet.macs(arch), lo, hi, n_buckets)
        if arch not in seen and len(chosen[b]) < quota[b]:
            seen.add(arch)
            chosen[b].append(arch)
    return [big, small] + [a for c in chosen for a in c]


def eval_archs(
    supernet: Supernet, generator: torch.Generator, n: int, *, sampler: str = "buckets", n_buckets: int = 6
) -> list[Arch]:
    """The subnets a final evaluation looks at: the largest, the smallest and ``n`` more, drawn per MAC bucket
    (``sampler="buckets"``: :func:`bucket_archs`) or uniformly (``"uniform"``, OFA's sampler; duplicates dropped)."""
    if sampler == "buckets":
        return bucket_archs(supernet, generator, n, n_buckets=n_buckets)
    if sampler == "uniform":
        archs = [supernet.max_arch(), supernet.min_arch()] + [uniform_arch(supernet.spec, generator) for _ in range(n)]
        return list(dict.fromkeys(archs))
    raise ValueError(f"sampler must be one of {EVAL_SAMPLERS}; got {sampler!r}")


def mean_pareto_accuracy(points: Sequence[tuple[float, float]], macs_min: float, macs_max: float) -> float:
    """DεpS's mean pareto accuracy: the area under accuracy vs normalized MACs.

    ``points``: the bucket-best ``(macs, accuracy)``. MACs map to ``x = (macs - macs_min) / (macs_max - macs_min)``
    in [0, 1]; the curve is the trapezoidal interpolation of the points sorted by ``x``, held flat from ``x = 0`` to
    the first point and from the last point to ``x = 1``. The area under it over [0, 1] is in accuracy units: the mean
    accuracy of the front across the supernet's MAC range.
    """
    if not points:
        raise ValueError("mean pareto accuracy needs at least one point")
    if macs_max <= macs_min:
        raise ValueError(f"the MAC range must be non-empty; got [{macs_min}, {macs_max}]")
    xs_ys = sorted(((m - macs_min) / (macs_max - macs_min), a) for m, a in points)
    if xs_ys[0][0] < -1e-9 or xs_ys[-1][0] > 1 + 1e-9:
        raise ValueError("a point lies outside the MAC range")
    area = xs_ys[0][0] * xs_ys[0][1] + (1.0 - xs_ys[-1][0]) * xs_ys[-1][1]
    for (x0, y0), (x1, y1) in zip(xs_ys, xs_ys[1:]):
        area += (x1 - x0) * (y0 + y1) / 2
    return area


def plot_pareto(
    runs: dict[str, Sequence[dict[str, Any]]],
    path: str | os.PathLike,
    *,
    title: str = "",
    styles: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Accuracy vs MACs of each run's bucket-best subnets (``pareto_buckets`` output), overlaid, as a PNG.
    ``styles``: per run, matplotlib line settings that replace the defaults (``color``, ``alpha``, ``label``; a label
    starting with ``_`` keeps the run out of the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, buckets in runs.items():
        pts = sorted((b["best"].macs / 1e6, 100 * b["best"].top1) for b in buckets)
        style = {"marker": "o", "label": name} | (styles or {}).get(name, {})
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **style)
    ax.set_xlabel("MMACs")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_results(results: Sequence[ArchResult], path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        json.dump([r.to_dict() for r in results], f, indent=1)


def load_results(path: str | os.PathLike) -> list[ArchResult]:
    """The results :func:`save_results` wrote (a run's ``subnets.json``); one ``ValueError`` naming the file if it is
    missing, not JSON, or not a list of results."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (expected a subnets.json that deps train or deps eval wrote)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a JSON file: {err}") from None
    try:
        if not isinstance(data, list):
            raise TypeError(f"a {type(data).__name__}, not a list")
        return [ArchResult.from_dict(d) for d in data]
    except (KeyError, TypeError, ValueError) as err:
        detail = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"{path} is not a list of subnet results as subnets.json holds: {detail}") from None


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes of every parameter and buffer): equal for equal
    weights wherever they live and however their checkpoint was written."""
    import hashlib

    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


DIGEST_CHUNKS = 16  # data_digest reads this many 1 MiB chunks of a larger file, evenly spread, first and last included
_CHUNK = 1 << 20


def data_digest(path: str | os.PathLike) -> str:
    """SHA-256 of what a data path holds, not of where it lies: a copy at another path (a job's node-local scratch, a
    moved dataset) gives the same digest. A file of up to 16 MiB is read whole; a larger one gives its size and 16 MiB
    read in 1 MiB chunks spread evenly over it, first and last included (an ImageNet .beton's header, its metadata
    table's start and its allocation table's end among them), in well under a second; a folder (ImageFolder) gives
    every file's relative path and size."""
    import hashlib
    from pathlib import Path

    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}|{f.stat().st_size}\n".encode())
        return h.hexdigest()
    if not path.is_file():
        raise ValueError(f"{path}: no such data file or folder")
    size = path.stat().st_size
    h.update(f"{size}|".encode())
    with open(path, "rb") as f:
        if size <= DIGEST_CHUNKS * _CHUNK:
            h.update(f.read())
        else:
            for i in range(DIGEST_CHUNKS):
                f.seek(i * (size - _CHUNK) // (DIGEST_CHUNKS - 1))
                h.update(f.read(_CHUNK))
    return h.hexdigest()


class ResultLog:
    """Results of one evaluation setup on disk, one JSON line per arch, appended as they come: a command that stops
    (Ctrl-C, a crash, a scheduler) keeps every subnet it evaluated, and the next one of the same setup reuses them.

    ``setup``: what decides a result (the weights' digest, the data, the calibration and evaluation splits); the file
    is ``<name>-<digest of setup>.jsonl`` in ``folder`` and begins with a line holding ``setup``, so another setup
    never reads this one's results. A last line cut short by a kill is dropped; any other bad line is an error.
    """

    def __init__(self, folder: str | os.PathLike, setup: dict[str, Any], name: str = "results"):
        import hashlib
        from pathlib import Path

        self.setup = json.loads(json.dumps(setup))  # as it reads back
        digest = hashlib.sha256(json.dumps(self.setup, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(folder) / f"{name}-{digest}.jsonl"

    def load(self) -> dict[Arch, dict[str, Any]]:
        """The results saved so far, by arch (none when the file does not exist yet)."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        if lines[-1]:  # a line a kill cut short: dropped, so the next append starts a line of its own
            with open(self.path, "r+b") as f:
                f.truncate(len(data) - len(lines[-1]))
        results: dict[Arch, dict[str, Any]] = {}
        for number, line in enumerate(lines[:-1], 1):
            try:
                record = json.loads(line)
                if number == 1 and record != {"setup": self.setup}:
                    raise ValueError("it is not the header of this setup")
                if number > 1:
                    results[Arch.from_dict(record.pop("arch"))] = record
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                what = f"missing key {err}" if isinstance(err, KeyError) else str(err)
                raise ValueError(f"{self.path} line {number}: {what}; move the file away to evaluate anew") from None
        return results

    def append(self, results: Sequence[tuple[Arch, dict[str, Any]]]) -> None:
        """Add ``(arch, values)`` records and flush them to the file."""
        if not results:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0  # (a kill may have cut its header short)
        head = json.dumps({"setup": self.setup}) + "\n" if fresh else ""
        body = "".join(json.dumps({"arch": a.to_dict()} | values) + "\n" for a, values in results)
        with open(self.path, "a") as f:
            f.write(head + body)
            f.flush()


def evaluate_archs(
    supernet: Supernet,
    archs: Sequence[Arch],
    calib: CachedBatches,
    val: Iterable[tuple[Tensor, Tensor]],
    *,
    amp: bool = False,
    progress: bool = True,
    keep_bn: bool = True,
    ctx: DistContext | None = None,
    log: ResultLog | None = None,
) -> list[ArchResult]:
    """Calibrate BN and evaluate each arch; ``keep_bn`` restores the supernet's BN statistics afterwards.

    ``log``: results it holds are taken as they are (rank 0 reads it and tells the other ranks), each new one is
    added to it (by rank 0) as soon as it is known.
    """
    from tqdm import tqdm

    ctx = ctx if ctx is not None else DistContext()
    done = {}
    if log is not None:
        done = ctx.broadcast_object(log.load() if ctx.is_main else None)
    saved = {k: v.clone() for k, v in supernet.named_buffers()} if keep_bn else None
    out = []
    try:
        for arch in tqdm(archs, desc="evaluating subnets", disable=not progress, dynamic_ncols=True):
            key = arch.canonical(supernet.spec)
            if key in done:
                out.append(ArchResult.from_dict(done[key] | {"arch": arch.to_dict()}))
                continue
            calibrate_bn(supernet, arch, calib, amp=amp)
            r = evaluate(supernet, arch, val, amp=amp, ctx=ctx)
            out.append(ArchResult(arch, supernet.macs(arch), r["top1"], r["top5"], r["loss"]))
            if log is not None and ctx.is_main:
                log.append([(key, {k: v for k, v in out[-1].to_dict().items() if k != "arch"})])
    finally:
        if saved is not None:
            with torch.no_grad():
                for k, v in supernet.named_buffers():
                    v.copy_(saved[k])
    return out


def pareto_report(supernet: Supernet, results: Sequence[ArchResult], n_buckets: int = 6) -> dict[str, Any]:
    """Buckets over the supernet's MAC range, the bucket-best subnets and the mean pareto accuracy."""
    lo, hi = supernet.macs(supernet.min_arch()), supernet.macs(supernet.max_arch())
    buckets = pareto_buckets(results, lo, hi, n_buckets)
    mpa = mean_pareto_accuracy([(b["best"].macs, b["best"].top1) for b in buckets], lo, hi)
    by_arch = {r.arch: r for r in results}
    return {
        "macs_range": [lo, hi],
        "buckets": buckets,
        "mean_pareto_accuracy": mpa,
        "max": by_arch.get(supernet.max_arch()),
        "min": by_arch.get(supernet.min_arch()),
    }


def format_pareto_table(report: dict[str, Any]) -> str:
    rows = [["bucket", "MMACs range", "MMACs", "top-1 %", "top-5 %", "depths"]]
    for b in report["buckets"]:
        r: ArchResult = b["best"]
        rows.append(
            [
                str(b["bucket"] + 1),
                f"{b['lo'] / 1e6:.2f}-{b['hi'] / 1e6:.2f}",  # the MMACs column's precision: it reads inside
                f"{r.macs / 1e6:.2f}",
                f"{100 * r.top1:.2f}",
                f"{100 * r.top5:.2f}",
                "".join(map(str, r.arch.d)),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"mean pareto accuracy: {100 * report['mean_pareto_accuracy']:.2f} %")
    for key in ("max", "min"):
        r = report.get(key)
        if r is not None:
            lines.append(f"{key} subnet: {r.macs / 1e6:.2f} MMACs, top-1 {100 * r.top1:.2f} %")
    return "\n".join(lines)


def report_to_json(report: dict[str, Any]) -> dict[str, Any]:
    out = dict(report)
    out["buckets"] = [b | {"best": b["best"].to_dict()} for b in report["buckets"]]
    for key in ("max", "min"):
        if out.get(key) is not None:
            out[key] = out[key].to_dict()
    return out
