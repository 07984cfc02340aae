"""Evolutionary search for the most accurate subnet under a MACs and/or latency budget.

The algorithm is OFA's regularized evolution (Cai et al., ICLR 2020, Sec. 3.3;
``ofa/nas/search_algorithm/evolution.py``), with its defaults:

- a population of ``population_size`` (100) archs drawn uniformly from those within the budget;
- each of ``generations`` (OFA's ``max_time_budget``, 500) rounds keeps the ``parent_ratio`` (0.25) most accurate as
  parents and refills the population with children: ``mutation_ratio`` (0.5) of them mutations of a random parent
  (each block's kernel and expand ratio, and each stage's depth, redrawn with probability ``mutate_prob`` 0.1; the
  resolution with probability ``resolution_mutate_prob`` 0.5), the rest crossovers of two random parents (every
  gene from either parent with probability 1/2); a child over the budget is redrawn.

Departures from OFA, each for a reason: redraws are bounded (``max_tries``; then the parent itself, or for the
initial population a mutation of the smallest subnet, stands in) where OFA loops forever on a tight budget; the
children of the last round are scored too (OFA stops before looking at them); every random draw comes from an
explicit ``torch.Generator``. As in OFA, an individual carries kernel and expand values for the blocks its depth
skips (its *genome*), so a deeper mutation activates blocks with random rather than maximal choices; accuracy is
scored and cached on the canonical arch (:meth:`Arch.canonical`).

Accuracy comes from a callable ``archs -> accuracies``: :class:`EvalAccuracy` (BN recalibration + top-1 on a
held-out split of the training data, cached per arch) or :class:`PredictorAccuracy` (an MLP predictor,
:mod:`deps_core.predictor`). Constraints use :mod:`deps_core.macs` and :class:`deps_core.latency.LatencyTable`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from deps_core.arch import Arch, min_arch
from deps_core.macs import subnet_macs
from deps_core.spaces.base import SpaceSpec

__all__ = [
    "Budget",
    "EvolutionConfig",
    "SearchResult",
    "EvalAccuracy",
    "PredictorAccuracy",
    "release_scorers",
    "evolution_search",
    "parse_macs",
    "parse_latency",
    "format_macs",
]

AccuracyFn = Callable[[Sequence[Arch]], Sequence[float]]

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_MACS_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_macs(text: str) -> int:
    """``"300M"`` → 300_000_000; units K, M, G (any case) or none; must be positive."""
    m = re.fullmatch(_NUMBER + r"\s*([kKmMgG]?)", text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"MACs budget {text!r}: expected a positive number with an optional unit K, M or G (300M)")
    return int(round(float(m.group(1)) * _MACS_UNITS[m.group(2).upper()]))


def parse_latency(text: str) -> float:
    """``"20ms"`` → 20.0 (milliseconds); units us, ms, s; must be positive."""
    m = re.fullmatch(_NUMBER + r"\s*(us|ms|s)", text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"latency budget {text!r}: expected a positive duration with a unit us, ms or s (20ms)")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def format_macs(macs: float) -> str:
    if macs >= 1e9:
        return f"{macs / 1e9:g}G"
    return f"{macs / 1e6:g}M" if macs >= 1e6 else f"{macs / 1e3:g}K"


@attrs.frozen
class Budget:
    """At most ``macs`` multiply-accumulates and/or ``latency_ms`` predicted milliseconds (``None``: no limit)."""

    macs: int | None = None
    latency_ms: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.macs is None and self.latency_ms is None:
            raise ValueError("a budget needs a MACs limit, a latency limit or both")
        if self.macs is not None and self.macs <= 0:
            raise ValueError(f"the MACs budget must be positive; got {self.macs}")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise ValueError(f"the latency budget must be positive; got {self.latency_ms} ms")

    def __str__(self) -> str:
        parts = []
        if self.macs is not None:
            parts.append(f"{format_macs(self.macs)} MACs")
        if self.latency_ms is not None:
            parts.append(f"{self.latency_ms:g} ms")
        return " & ".join(parts)

    @property
    def label(self) -> str:
        """A file-name-safe name, e.g. ``macs150M_lat20ms``."""
        parts = []
        if self.macs is not None:
            parts.append(f"macs{format_macs(self.macs)}")
        if self.latency_ms is not None:
            parts.append(f"lat{self.latency_ms:g}ms")
        return "_".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "latency_ms": self.latency_ms}


def _positive_int(_, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1; got {value!r}")


def _probability(_, attribute, value) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must lie in [0, 1]; got {value!r}")


@attrs.frozen
class EvolutionConfig:
    """OFA's evolution hyper-parameters (``EvolutionFinder`` defaults) and the redraw bound."""

    population_size: int = attrs.field(default=100, validator=_positive_int)
    generations: int = attrs.field(default=500, validator=_positive_int)
    mutate_prob: float = attrs.field(default=0.1, validator=_probability)
    resolution_mutate_prob: float = attrs.field(default=0.5, validator=_probability)
    parent_ratio: float = attrs.field(default=0.25, validator=_probability)
    mutation_ratio: float = attrs.field(default=0.5, validator=_probability)
    max_tries: int = attrs.field(default=100, validator=_positive_int)

    @property
    def num_parents(self) -> int:
        return max(1, int(round(self.parent_ratio * self.population_size)))

    @property
    def num_mutations(self) -> int:
        return int(round(self.mutation_ratio * self.population_size))


@attrs.frozen
class SearchResult:
    """The best arch found under ``budget``: its accuracy, MACs, predicted latency (``None`` without a table), the
    per-generation ``history`` and how many distinct archs were scored."""

    budget: Budget
    arch: Arch
    accuracy: float
    macs: int
    latency_ms: float | None
    history: tuple[dict[str, Any], ...]
    evaluated: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.to_dict(),
            "arch": self.arch.to_dict(),
            "accuracy": self.accuracy,
            "macs": self.macs,
            "latency_ms": self.latency_ms,
            "evaluated": self.evaluated,
            "history": list(self.history),
        }


# --- accuracy sources ---------------------------------------------------------------------------------------------


class EvalAccuracy:
    """Top-1 of each arch on held-out batches after BN recalibration on ``calib`` (both resized to the arch's
    resolution), cached per canonical arch; the supernet's BN statistics are restored after each call.

    New archs are scored in chunks of ``chunk`` (default 4 per rank); with a ``log``
    (:class:`~deps_core.evaluate.ResultLog`) the scores it holds are used, and each chunk's are added to it as soon as
    they are known.

    With a distributed ``ctx`` (torchrun) rank 0 calls it and every rank scores a share of each chunk (rank r the
    r-th of every ``world_size``): the other ranks run :meth:`serve` until rank 0 calls :meth:`release`. An arch's
    top-1 does not depend on the rank that scores it: each rank calibrates and evaluates on all the batches.
    """

    def __init__(
        self,
        supernet,
        calib,
        heldout,
        *,
        amp: bool = False,
        progress: bool = False,
        ctx=None,
        log=None,
        chunk: int | None = None,
    ):
        from deps_core.distributed import DistContext
        from deps_core.evaluate import CachedBatches

        for name, batches in (("calibration", calib), ("held-out", heldout)):
            if not isinstance(batches, CachedBatches):
                raise TypeError(f"the {name} set must be CachedBatches; got {type(batches).__name__}")
        self.supernet, self.calib, self.heldout = supernet, calib, heldout
        self.amp, self.progress = amp, progress
        self.ctx = ctx if ctx is not None else DistContext()
        self.log, self.chunk = log, chunk or 4 * self.ctx.world_size
        saved = log.load() if log is not None and self.ctx.is_main else {}
        self.cache: dict[Arch, float] = {a: float(r["top1"]) for a, r in saved.items()}
        self.reused = len(self.cache)  # scores read from the log
        self.scored_per_rank = [0] * self.ctx.world_size  # on rank 0: how many archs each rank scored

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        from tqdm import tqdm

        if not self.ctx.is_main:
            raise RuntimeError(f"rank {self.ctx.rank} scores the archs rank 0 sends it: call serve(), not the scorer")
        keys = [a.canonical(self.supernet.spec) for a in archs]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        quiet = not self.progress or not todo
        with tqdm(total=len(todo), desc="evaluating subnets", disable=quiet, leave=False) as bar:
            for start in range(0, len(todo), self.chunk):
                part = todo[start : start + self.chunk]
                self.ctx.broadcast_object(part)
                scores = self._share(part)
                self.cache.update(zip(part, scores))
                if self.log is not None:
                    self.log.append([(a, {"top1": v}) for a, v in zip(part, scores)])
                bar.update(len(part))
        return [self.cache[k] for k in keys]

    def serve(self) -> None:
        """On a rank other than 0: score shares of rank 0's calls until it calls :meth:`release`."""
        while (todo := self.ctx.broadcast_object(None)) is not None:
            self._share(todo)

    def release(self) -> None:
        """On rank 0, once: let the other ranks' :meth:`serve` return."""
        release_scorers(self.ctx)

    def _share(self, todo: list[Arch]) -> list[float]:
        """Score this rank's share of ``todo``; on rank 0 return all the scores, in order."""
        ctx = self.ctx
        error = None
        try:
            mine = self._score(todo[ctx.rank :: ctx.world_size])
        except Exception as err:  # told to rank 0, which raises it, so no rank waits for a reply that never comes
            if not ctx.distributed:
                raise
            error, mine = err, f"{type(err).__name__}: {err}"
        replies = ctx.gather_object(mine)
        if error is not None and ctx.is_main:
            raise error
        if not ctx.is_main:
            return []
        for rank, reply in enumerate(replies):
            if isinstance(reply, str):
                raise RuntimeError(f"scoring subnets on rank {rank} failed: {reply}")
        scores: list[float] = [0.0] * len(todo)
        for rank, reply in enumerate(replies):
            scores[rank :: ctx.world_size] = reply
            self.scored_per_rank[rank] += len(reply)
        return scores

    def _score(self, archs: list[Arch]) -> list[float]:
        from deps_core.evaluate import calibrate_bn, evaluate

        net, out = self.supernet, []
        if not archs:
            return out
        saved = {k: v.clone() for k, v in net.named_buffers()}
        try:
            for arch in archs:
                calibrate_bn(net, arch, self.calib, resolution=arch.resolution, amp=self.amp)
                out.append(evaluate(net, arch, self.heldout.at(arch.resolution), amp=self.amp)["top1"])
        finally:
            with torch.no_grad():
                for k, v in net.named_buffers():
                    v.copy_(saved[k])
        return out


def release_scorers(ctx) -> None:
    """On rank 0 of a distributed ``ctx``, once: end the other ranks' :meth:`EvalAccuracy.serve` (also where rank 0
    stopped before it made its :class:`EvalAccuracy`)."""
    if ctx.distributed:
        ctx.broadcast_object(None)


class PredictorAccuracy:
    """Accuracies from an :class:`~deps_core.predictor.AccuracyPredictor`."""

    def __init__(self, predictor):
        self.predictor = predictor

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        return self.predictor.predict(list(archs)).tolist()


# --- evolution ------------------------------------------------------------------------------------------------------


class _Space:
    """Sampling, mutation, crossover and cost of genomes in one space (every draw from ``generator``)."""

    def __init__(self, spec, resolutions, num_classes, budget, latency_table, generator, config):
        self.spec, self.resolutions, self.num_classes = spec, resolutions, num_classes
        self.budget, self.table, self.g, self.config = budget, latency_table, generator, config
        self._cost: dict[Arch, tuple[int, float | None]] = {}

    def _choice(self, choices: Sequence[int]) -> int:
        return int(choices[int(torch.randint(len(choices), (), generator=self.g))])

    def _coin(self, p: float) -> bool:
        return p > 0 and float(torch.rand((), generator=self.g)) < p

    def cost(self, genome: Arch) -> tuple[int, float | None]:
        arch = genome.canonical(self.spec)
        if arch not in self._cost:
            macs = subnet_macs(self.spec, arch, num_classes=self.num_classes)
            timed = self.budget.latency_ms is not None  # the table is filled only where the budget needs it
            latency = self.table.predict(self.spec, arch, self.num_classes) if timed else None
            self._cost[arch] = (macs, latency)
        return self._cost[arch]

    def fits(self, genome: Arch) -> bool:
        macs, latency = self.cost(genome)
        b = self.budget
        return (b.macs is None or macs <= b.macs) and (b.latency_ms is None or latency <= b.latency_ms)

    def random(self) -> Arch:
        s = self.spec
        ks = [self._choice(s.ks_choices) for _ in range(s.n_blocks)]
        e = [self._choice(s.e_choices) for _ in range(s.n_blocks)]
        d = [self._choice(stage.d_choices) for stage in s.stages]
        return Arch(s.name, ks, e, d, self._choice(self.resolutions))

    def mutate(self, genome: Arch) -> Arch:
        s, p = self.spec, self.config.mutate_prob
        res = genome.resolution
        if len(self.resolutions) > 1 and self._coin(self.config.resolution_mutate_prob):
            res = self._choice(self.resolutions)
        ks, e = list(genome.ks), list(genome.e)
        for i in range(s.n_blocks):
            if self._coin(p):
                ks[i], e[i] = self._choice(s.ks_choices), self._choice(s.e_choices)
        d = [self._choice(stage.d_choices) if self._coin(p) else x for x, stage in zip(genome.d, s.stages)]
        return Arch(s.name, ks, e, d, res)

    def crossover(self, a: Arch, b: Arch) -> Arch:
        pick = lambda x, y: y if self._coin(0.5) else x  # noqa: E731
        ks = [pick(x, y) for x, y in zip(a.ks, b.ks)]
        e = [pick(x, y) for x, y in zip(a.e, b.e)]
        d = [pick(x, y) for x, y in zip(a.d, b.d)]
        return Arch(self.spec.name, ks, e, d, pick(a.resolution, b.resolution))

    def valid(self, draw: Callable[[], Arch], fallback: Callable[[], Arch]) -> Arch:
        for _ in range(self.config.max_tries):
            genome = draw()
            if self.fits(genome):
                return genome
        return fallback()


def _draw(parents: list[tuple[float, Arch]], generator: torch.Generator) -> Arch:
    return parents[int(torch.randint(len(parents), (), generator=generator))][1]


def smallest_arch(spec: SpaceSpec, resolutions: Sequence[int]) -> Arch:
    """The subnet with the fewest MACs: the smallest choice everywhere at the smallest resolution."""
    return min_arch(spec, resolution=min(resolutions))


def check_budget(
    spec: SpaceSpec,
    budget: Budget,
    *,
    resolutions: Sequence[int],
    num_classes: int,
    latency_table=None,
) -> None:
    """``ValueError`` when no subnet fits ``budget``: it is below the smallest subnet's MACs (or latency)."""
    smallest = smallest_arch(spec, resolutions)
    if budget.macs is not None:
        least = subnet_macs(spec, smallest, num_classes=num_classes)
        if budget.macs < least:
            raise ValueError(
                f"MACs budget {format_macs(budget.macs)} is below the smallest subnet's {least / 1e6:.2f}M MACs "
                f"({smallest})"
            )
    if budget.latency_ms is not None:
        if latency_table is None:
            raise ValueError("a latency budget needs a latency table (deps_core.latency.LatencyTable)")
        least = latency_table.predict(spec, smallest, num_classes)
        if budget.latency_ms < least:
            raise ValueError(
                f"latency budget {budget.latency_ms:g} ms is below the smallest subnet's predicted {least:.3f} ms "
                f"on {latency_table.meta['device']} ({smallest})"
            )


def evolution_search(
    spec: SpaceSpec,
    accuracy: AccuracyFn,
    budget: Budget,
    *,
    generator: torch.Generator,
    config: EvolutionConfig | None = None,
    resolutions: Sequence[int] | None = None,
    num_classes: int = 1000,
    latency_table=None,
    progress: bool = True,
) -> SearchResult:
    """The most accurate arch of ``spec`` within ``budget`` found by OFA's regularized evolution (module docstring).

    ``accuracy``: scores a list of canonical archs (called once per generation with its new children).
    ``resolutions``: the searched input resolutions (default: the space's default one). ``latency_table``: needed for
    a latency budget; when given, the result's latency is its prediction.
    """
    from tqdm import tqdm

    config = config or EvolutionConfig()
    resolutions = tuple(sorted({int(r) for r in resolutions})) if resolutions else (spec.default_resolution,)
    bad = [r for r in resolutions if r not in spec.resolutions]
    if bad:
        raise ValueError(f"resolutions {bad} are not in {spec.name}'s {list(spec.resolutions)}")
    check_budget(spec, budget, resolutions=resolutions, num_classes=num_classes, latency_table=latency_table)
    space = _Space(spec, resolutions, num_classes, budget, latency_table, generator, config)
    scores: dict[Arch, float] = {}

    def score(genomes: list[Arch]) -> list[tuple[float, Arch]]:
        keys = [g.canonical(spec) for g in genomes]
        new = list(dict.fromkeys(k for k in keys if k not in scores))
        if new:
            values = list(accuracy(new))
            if len(values) != len(new):
                raise ValueError(f"the accuracy source returned {len(values)} values for {len(new)} archs")
            scores.update(zip(new, map(float, values)))
        return [(scores[k], g) for k, g in zip(keys, genomes)]

    smallest = smallest_arch(spec, resolutions)
    population = score(
        [
            space.valid(space.random, lambda: space.valid(lambda: space.mutate(smallest), lambda: smallest))
            for _ in range(config.population_size)
        ]
    )
    n_parents, n_mutations = config.num_parents, config.num_mutations
    history = []
    bar = tqdm(range(config.generations), desc=f"searching ({budget})", disable=not progress, dynamic_ncols=True)
    for generation in bar:
        # a stable sort: among equal accuracies the earlier individual (an older parent) ranks first
        parents = sorted(population, key=lambda t: -t[0])[:n_parents]
        history.append(
            {
                "generation": generation,
                "best_accuracy": parents[0][0],
                "parents_mean_accuracy": sum(p[0] for p in parents) / len(parents),
                "evaluated": len(scores),
            }
        )
        bar.set_postfix(best=f"{parents[0][0]:.4f}")

        children = []
        for _ in range(n_mutations):
            p = _draw(parents, generator)
            children.append(space.valid(lambda p=p: space.mutate(p), lambda p=p: p))
        for _ in range(config.population_size - n_mutations):
            a, b = _draw(parents, generator), _draw(parents, generator)
            children.append(space.valid(lambda a=a, b=b: space.crossover(a, b), lambda a=a: a))
        population = parents + score(children)
    best_acc, best = max(population, key=lambda t: t[0])  # first of equals: parents come before children
    arch = best.canonical(spec)
    macs = space.cost(arch)[0]
    latency = latency_table.predict(spec, arch, num_classes) if latency_table is not None else None
    history.append({"generation": config.generations, "best_accuracy": best_acc, "evaluated": len(scores)})
    return SearchResult(budget, arch, best_acc, macs, latency, tuple(history), len(scores))
