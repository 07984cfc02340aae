"""Search, latency table, accuracy predictor and the ``deps search`` command.

- the evolution finds the exact constrained optimum of a separable synthetic accuracy (brute force over a small
  restricted space) with a fixed generator, and is reproducible;
- the latency table is filled lazily, round-trips through JSON, and its sums track measured whole-subnet latencies
  (a loose factor, and the ranking of the smallest vs the largest subnet — never an absolute time);
- the predictor beats a constant on a synthetic function and refuses another space;
- ``deps search`` end to end on a tiny checkpoint, its arch JSON accepted by ``deps export``; one clear error (exit 2)
  for each bad input.

The CLI runs use an untrained tiny supernet saved as a checkpoint (the training run of ``test_trainer.py`` takes
minutes on a shared CPU; search and export read a checkpoint the same way whatever its weights).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import TINY, _run, _torchrun

from deps_core.arch import Arch, max_arch, min_arch, uniform_arch
from deps_core.checkpoint import CheckpointError, save_checkpoint, supernet_from_checkpoint
from deps_core.cli import main
from deps_core.config import apply_overrides, load_preset
from deps_core.evaluate import ResultLog
from deps_core.latency import LatencyTable, block_keys, measure_subnet_latency
from deps_core.macs import subnet_macs
from deps_core.predictor import AccuracyPredictor, ArchEncoder, fit_predictor
from deps_core.search import (
    Budget,
    EvalAccuracy,
    EvolutionConfig,
    evolution_search,
    parse_latency,
    parse_macs,
)
from deps_core.spaces import create_supernet, space_spec

# --- budgets ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [("300M", 300_000_000), ("1.5G", 1_500_000_000), ("250k", 250_000), ("42", 42), (" 80 m ", 80_000_000)],
)
def test_parse_macs(text, value):
    assert parse_macs(text) == value


@pytest.mark.parametrize("text, value", [("20ms", 20.0), ("0.5s", 500.0), ("750us", 0.75), ("1e1 ms", 10.0)])
def test_parse_latency(text, value):
    assert parse_latency(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["300X", "-5M", "0M", "M", "", "3.0.0M"])
def test_bad_macs_budget(text):
    with pytest.raises(ValueError, match="expected a positive number with an optional unit K, M or G"):
        parse_macs(text)


@pytest.mark.parametrize("text", ["20", "20 sec", "-1ms", "0ms", "fast"])
def test_bad_latency_budget(text):
    with pytest.raises(ValueError, match="expected a positive duration with a unit us, ms or s"):
        parse_latency(text)


# --- evolution on a synthetic accuracy --------------------------------------------------------------------------------

# DεpS's fixed kernel 7, expand {3, 6}, depth {2, 3}: 12 configurations per stage, 12^5 = 248,832 subnets.
SMALL = dict(width_mult=0.5, ks_choices=(7,), e_choices=(3, 6), d_choices=(2, 3))


def _synthetic(spec, seed: int = 1):
    """A separable accuracy: a weight per (block, expand) of the active blocks plus a weight per (stage, depth)."""
    g = torch.Generator().manual_seed(seed)
    w_e = torch.rand(spec.n_blocks, len(spec.e_choices), generator=g, dtype=torch.float64).tolist()
    w_d = torch.rand(len(spec.stages), 2, generator=g, dtype=torch.float64).tolist()

    def accuracy(arch: Arch) -> float:
        acc = sum(w_e[i][spec.e_choices.index(arch.e[i])] for i in arch.active_blocks(spec))
        return acc + sum(w_d[s][stage.d_choices.index(d)] for s, (stage, d) in enumerate(zip(spec.stages, arch.d)))

    return accuracy


def _brute_force(spec, accuracy, budget: int, num_classes: int) -> tuple[float, int]:
    """The best accuracy within ``budget`` over every subnet, and its MACs.

    MACs and accuracy are sums over stages (a block's MACs depend on its own choices only: a stage's stride sits in
    its first block, which every depth keeps), so each stage's 12 configurations are scored against the smallest
    subnet and the 12^5 combinations are added up with numpy."""
    base = min_arch(spec)
    base_macs, base_acc = subnet_macs(spec, base, num_classes=num_classes), accuracy(base)
    tables = []
    for s, stage in enumerate(spec.stages):
        rows = []
        for d in stage.d_choices:
            for es in itertools.product(spec.e_choices, repeat=d):
                e, dd = list(base.e), list(base.d)
                e[stage.first_block : stage.first_block + d], dd[s] = es, d
                arch = base.replace(e=e, d=dd)
                rows.append((subnet_macs(spec, arch, num_classes=num_classes) - base_macs, accuracy(arch) - base_acc))
        tables.append(np.array(rows))
    macs = base_macs + sum(np.ix_(*[t[:, 0] for t in tables])).ravel()
    acc = base_acc + sum(np.ix_(*[t[:, 1] for t in tables])).ravel()
    assert macs.size == 12**5
    best = int(np.argmax(np.where(macs <= budget, acc, -np.inf)))
    return float(acc[best]), int(macs[best])


# Budgets at 50% and 70% of the MAC range: seeds 0-5 of the search and two accuracy draws found the optimum 24/24
# times (100 x 50). At 30% the search stalls on a near-optimal knapsack solution in 3 of 12 runs (OFA's algorithm,
# not a bug), so that budget is not asserted.
@pytest.mark.parametrize("fraction", [0.5, 0.7])
def test_evolution_finds_the_constrained_optimum_of_a_separable_accuracy(fraction):
    spec = space_spec("ofa_mbv3_32", **SMALL)
    accuracy = _synthetic(spec)
    lo, hi = (subnet_macs(spec, a(spec), num_classes=10) for a in (min_arch, max_arch))
    budget = int(lo + fraction * (hi - lo))
    best_acc, best_macs = _brute_force(spec, accuracy, budget, num_classes=10)
    result = evolution_search(
        spec,
        lambda archs: [accuracy(a) for a in archs],
        Budget(macs=budget),
        generator=torch.Generator().manual_seed(0),
        config=EvolutionConfig(population_size=100, generations=50),
        num_classes=10,
        progress=False,
    )
    assert result.accuracy == pytest.approx(best_acc, abs=1e-12)
    assert result.accuracy == pytest.approx(accuracy(result.arch), abs=1e-12)
    assert result.macs == subnet_macs(spec, result.arch, num_classes=10) <= budget
    assert result.macs == best_macs  # the optimum is unique here
    assert result.arch == result.arch.canonical(spec) and result.latency_ms is None
    best = [h["best_accuracy"] for h in result.history]
    assert best == sorted(best) and len(best) == 51  # one record per generation and the final population


def test_evolution_is_reproducible_with_the_same_generator():
    spec = space_spec("ofa_mbv3_32", **SMALL)
    accuracy = _synthetic(spec, seed=2)
    calls = []

    def score(archs):
        calls.append(len(archs))
        return [accuracy(a) for a in archs]

    run = lambda seed: evolution_search(  # noqa: E731
        spec,
        score,
        Budget(macs=25_000_000),
        generator=torch.Generator().manual_seed(seed),
        config=EvolutionConfig(population_size=12, generations=4),
        num_classes=10,
        progress=False,
    )
    a, b = run(7), run(7)
    assert a == b
    assert sum(calls) == a.evaluated + b.evaluated  # each distinct arch scored once per search
    state = torch.random.get_rng_state()
    run(8)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is never read


def test_evolution_config_is_validated():
    with pytest.raises(ValueError, match="population_size must be an int >= 1"):
        EvolutionConfig(population_size=0)
    with pytest.raises(ValueError, match=r"mutate_prob must lie in \[0, 1\]"):
        EvolutionConfig(mutate_prob=1.5)


def test_a_budget_below_the_smallest_subnet_names_its_macs():
    spec = space_spec("ofa_mbv3_32", **SMALL)
    least = subnet_macs(spec, min_arch(spec), num_classes=10)
    with pytest.raises(ValueError, match=rf"below the smallest subnet's {least / 1e6:.2f}M MACs"):
        evolution_search(
            spec, lambda a: [0.0] * len(a), Budget(macs=least - 1), generator=torch.Generator(), num_classes=10
        )
    with pytest.raises(ValueError, match="needs a latency table"):
        evolution_search(spec, lambda a: [0.0] * len(a), Budget(latency_ms=5.0), generator=torch.Generator())


# --- latency ----------------------------------------------------------------------------------------------------------


def test_latency_table_is_lazy_round_trips_and_tracks_measured_latency(tmp_path):
    net = create_supernet("ofa_mbv3_32", num_classes=10, width_mult=0.25).eval()
    small, large = net.min_arch(), net.max_arch()
    path = tmp_path / "lut.json"
    table = LatencyTable("cpu", warmup=3, repeats=15, path=path)
    assert len(table) == 0
    predicted = {a: table.predict(net.spec, a, 10) for a in (small, large)}
    keys = {str(k) for a in (small, large) for k in block_keys(net.spec, a, 10)}
    assert table.measured == len(table) == len(keys)
    assert predicted[small] == pytest.approx(sum(table.entries[str(k)] for k in block_keys(net.spec, small, 10)))
    table.save()

    again = LatencyTable("cpu", warmup=3, repeats=15, path=path)
    assert again.entries == table.entries and again.predict(net.spec, large, 10) == predicted[large]
    assert again.measured == 0  # read from the file, nothing measured
    data = json.loads(path.read_text())
    assert data["device"].startswith("cpu: ") and data["batch_size"] == 1 and data["measured_at"]

    measured = {a: measure_subnet_latency(net, a, warmup=3, repeats=15) for a in (small, large)}
    # 10 vs 20 blocks and 4.5x the MACs: both orderings must agree; the sum tracks a real run within 3x either way
    assert predicted[small] < predicted[large] and measured[small] < measured[large]
    for a in (small, large):
        assert 1 / 3 < predicted[a] / measured[a] < 3, (predicted, measured)

    with pytest.raises(ValueError, match="was measured with batch_size 1, not 4"):
        LatencyTable("cpu", batch_size=4, path=path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_latency_table_on_cuda_tracks_measured_latency(tmp_path):
    net = create_supernet("ofa_mbv3_32", num_classes=10, width_mult=0.25).eval().cuda()
    small, large = net.min_arch(), net.max_arch()
    table = LatencyTable("cuda", batch_size=16, warmup=10, repeats=30, path=tmp_path / "lut.json")
    predicted = {a: table.predict(net.spec, a, 10) for a in (small, large)}
    measured = {a: measure_subnet_latency(net, a, batch_size=16, warmup=10, repeats=30) for a in (small, large)}
    assert table.meta["device"].startswith("cuda: ") and table.measured == len(table) > 0
    # launch-bound at this size: each block measured alone pays its own synchronization, so the sum runs high
    assert predicted[small] < predicted[large] and measured[small] < measured[large]
    for a in (small, large):
        assert 1 / 5 < predicted[a] / measured[a] < 5, (predicted, measured)


# --- predictor --------------------------------------------------------------------------------------------------------


def test_encoder_one_hot_layout():
    spec = space_spec("ofa_mbv3_32", ks_choices=(3, 7), e_choices=(3, 6))
    enc = ArchEncoder.for_space(spec, resolutions=[28, 32])
    assert enc.n_dim == 20 * (2 + 2) + 5 * 3 + 2
    arch = Arch("ofa_mbv3_32", [7] + [3] * 19, [6] + [3] * 19, [2, 3, 4, 2, 2], 28)
    x = enc.encode(arch)
    blocks = x[:80].view(20, 4)
    assert blocks[0].tolist() == [0, 1, 0, 1] and blocks[1].tolist() == [1, 0, 1, 0]  # k7 e6, then k3 e3
    assert blocks[2:4].sum() == 0  # stage 0 has depth 2: blocks 2 and 3 are skipped
    assert x[80:95].view(5, 3).argmax(1).tolist() == [0, 1, 2, 0, 0] and x[80:95].sum() == 5
    assert x[95:].tolist() == [1, 0]
    assert torch.equal(enc.encode(arch.canonical()), x)  # skipped blocks' entries do not matter
    assert ArchEncoder.for_space(spec).n_dim == 95  # one resolution: no resolution feature
    with pytest.raises(ValueError, match="encodes resolutions"):
        enc.encode(arch.replace(resolution=24))


@pytest.fixture
def one_thread():
    """Small MLP steps run fastest, and steadiest on a shared machine, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_predictor_fits_a_synthetic_accuracy_better_than_a_constant(tmp_path, one_thread):
    spec = space_spec("ofa_mbv3_32", width_mult=0.25)
    g = torch.Generator().manual_seed(5)
    archs = list(dict.fromkeys(uniform_arch(spec, g) for _ in range(300)))
    lo, hi = (subnet_macs(spec, a(spec), num_classes=10) for a in (min_arch, max_arch))
    # an accuracy that grows with MACs and saturates, plus kernel-size and depth terms
    accs = [
        0.5
        + 0.3 * (1 - np.exp(-3 * (subnet_macs(spec, a, num_classes=10) - lo) / (hi - lo)))
        + 0.01 * np.mean(a.ks)
        - 0.02 * a.d[0]
        for a in archs
    ]
    enc = ArchEncoder.for_space(spec)
    predictor, report = fit_predictor(archs, accs, enc, generator=g)
    assert report["n_val"] == round(0.2 * len(archs)) and report["n_train"] + report["n_val"] == len(archs)
    assert report["val_rmse"] < 0.5 * report["baseline_val_rmse"], report

    path = predictor.save(tmp_path / "p.pt", report=report)
    loaded = AccuracyPredictor.load(path, spec=spec)
    torch.testing.assert_close(loaded.predict(archs[:20]), predictor.predict(archs[:20]))
    assert loaded.report["val_rmse"] == report["val_rmse"]
    with pytest.raises(ValueError, match="predicts archs of space 'ofa_mbv3_32', not 'ofa_mbv3_w1.0'"):
        AccuracyPredictor.load(path, spec=space_spec("ofa_mbv3_w1.0"))
    with pytest.raises(ValueError, match="trained on other choices of ofa_mbv3_32"):
        AccuracyPredictor.load(path, spec=space_spec("ofa_mbv3_32", ks_choices=(7,)))

    # too few archs: no training pair, or a validation split that holds out none (its RMSE would be NaN)
    with pytest.raises(ValueError, match="needs at least 2 training archs; got 2 archs, 1 held out"):
        fit_predictor(archs[:2], accs[:2], enc, generator=g, val_fraction=0.5)
    with pytest.raises(ValueError, match="val_fraction=0.2 of 2 archs holds out none"):
        fit_predictor(archs[:2], accs[:2], enc, generator=g, epochs=1)
    _, small = fit_predictor(archs[:2], accs[:2], enc, generator=g, epochs=1, val_fraction=0.0)
    assert (small["n_train"], small["n_val"]) == (2, 0)


# --- the deps search command ------------------------------------------------------------------------------------------

# the checkpoints' data: a tiny ImageFolder read by the torchvision loader (an FFCV loader compiles its pipeline with
# numba in every new process, ~20 s here); 80 training images: one calibration batch of 32, then the held-out split
SEARCH_TINY = [*TINY, "data.source=imagefolder", "run.calib_images=32", "run.calib_batch=32"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(25 * c, 40, (36, 36, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")
    return [f"data.train={root / 'train'}", f"data.val={root / 'val'}"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _tiny_checkpoint(run_dir: Path, overrides: list[str], seed: int = 0) -> Path:
    """A run directory holding a checkpoint of an untrained 10-class supernet, as the trainer writes it."""
    config = apply_overrides(load_preset("default"), [*overrides, f"run.out_dir={run_dir}"])
    net = create_supernet(
        config.model.space, num_classes=10, generator=torch.Generator().manual_seed(seed), **config.model.space_kwargs()
    )
    save_checkpoint(
        {"config": config.to_dict(), "num_classes": net.num_classes, "model": net.state_dict()},
        run_dir / "checkpoints",
    )
    return run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, image_folder):
    return _tiny_checkpoint(tmp_path_factory.mktemp("runs") / "tiny", [*SEARCH_TINY, *image_folder])


@pytest.fixture(scope="module")
def k7_run(tmp_path_factory, image_folder):
    """A checkpoint of a restricted space: kernel size 7 only (DεpS's recipe)."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("runs") / "k7", [*SEARCH_TINY, *image_folder, "model.ks_choices=7"])


def _deps(*args: str) -> list[str]:
    return [sys.executable, "-m", "deps_core.cli", *args]


def test_a_holdout_is_kept_out_of_training_and_calibration_and_is_what_search_evaluates(image_folder):
    import deps_loaders as L

    from deps_core.data import build_data, search_splits, train_holdout
    from deps_core.distributed import DistContext

    config = apply_overrides(load_preset("default"), [*SEARCH_TINY, *image_folder, "data.holdout=16"])
    held = train_holdout(config, "held").indices(80)
    data = build_data(config, DistContext(device=torch.device("cpu")))
    assert data.train.num_samples == data.calib.num_samples == 64 and len(data.val.indices(0)) == 40
    for epoch in range(3):
        assert not set(data.train.indices(epoch).tolist()) & set(held.tolist())
    assert not set(data.calib.indices(0).tolist()) & set(held.tolist())

    calib, heldout, classes = search_splits(config, torch.device("cpu"), heldout_images=16)
    assert classes == 10 and calib.num_images == 32 and heldout.num_images == 16
    # which images: each held-out image is, pixel for pixel, the full-square view of one held-out training image
    res = config.data.val_resolution or max(config.data.resolution)
    everything = L.torchvision_train_loader(
        data.train_path, 80, resolution=res, seed=0, num_workers=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False,
        drop_last=False,
    )  # fmt: skip
    (x_all, y_all), order = next(iter(everything)), everything.indices(0).astype(int)
    x_held = torch.cat([x for x, _ in heldout.at(res)])
    y_held = torch.cat([y for _, y in heldout.at(res)])
    matched = []
    for x, y in zip(x_held, y_held):
        same = [i for i, xa in zip(order, x_all) if torch.equal(xa, x)]
        assert len(same) == 1 and y_all[order.tolist().index(same[0])] == y
        matched += same
    assert sorted(matched) == held.tolist()
    with pytest.raises(ValueError, match="17 held-out images asked for, but the run held out data.holdout=16"):
        search_splits(config, torch.device("cpu"), heldout_images=17)
    too_many = apply_overrides(config, ["data.holdout=80"])
    with pytest.raises(ValueError, match="80 samples held out of a dataset of 80 leaves none to train on"):
        build_data(too_many, DistContext(device=torch.device("cpu")))


SEARCH_COMMON = ["--heldout-images", "32", "--latency-warmup", "1", "--latency-repeats", "3", "--seed", "1"]


def _search_args(run: Path, out: Path) -> list[str]:
    """Two MACs budgets (30 % and 70 % of the way up the range), a small evolution, overrides a search reads."""
    net, _ = supernet_from_checkpoint(run)
    lo, hi = net.macs(net.min_arch()), net.macs(net.max_arch())
    macs = ",".join(f"{(lo + f * (hi - lo)) / 1e6:.3f}M" for f in (0.3, 0.7))
    return ["search", "--checkpoint", str(run), "--macs", macs, "--population", "4", "--generations", "2"] + [
        *SEARCH_COMMON, "--out", str(out), "data.num_workers=1", "run.calib_batch=16",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def searched(tiny_run, env, tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "one"
    proc = _run(_deps(*_search_args(tiny_run, out)), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_search_command_writes_arch_files_that_export_accepts(tiny_run, searched, env, tmp_path, capsys):
    net, _ = supernet_from_checkpoint(tiny_run)
    out, proc = searched
    budgets = [parse_macs(b) for b in _search_args(tiny_run, out)[4].split(",")]
    summary = json.loads((out / "search.json").read_text())
    assert summary["accuracy"] == "eval" and summary["heldout_images"] == 32 and summary["calib_images"] == 32
    assert summary["heldout_trained"] and "were trained on, so the accuracies are optimistic" in proc.stderr
    assert len(summary["results"]) == 2
    for r, budget in zip(summary["results"], budgets):
        arch = Arch.from_dict(json.loads(Path(r["arch_file"]).read_text()))
        assert net.macs(arch) == r["macs"] <= budget and r["heldout_top1"] == r["accuracy"]
        assert len(r["history"]) == 3 and r["latency_ms"] > 0
        assert str(arch) in proc.stdout
    assert "held-out top-1 %" in proc.stdout and (out / "latency_table.json").is_file()

    # deps export reads the arch file (in this process: without recalibration it sets up nothing process-wide)
    arch_file = summary["results"][0]["arch_file"]
    argv = ["export", "--checkpoint", str(tiny_run), "--arch", arch_file, "--out", str(tmp_path / "x")]
    assert main([*argv, "--no-calibrate"]) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "x" / "subnet.json").read_text())
    assert config["arch"] == json.loads(Path(arch_file).read_text())

    # the predictor path, under a latency budget: fitted on evaluated archs, saved; the latency table is reused
    measured = json.loads((out / "latency_table.json").read_text())["entries_ms"]
    out = tmp_path / "predictor"  # the first search's directory is shared with other tests: a copy of its table
    out.mkdir()
    (out / "latency_table.json").write_bytes((searched[0] / "latency_table.json").read_bytes())
    proc = _run(
        _deps("search", "--checkpoint", str(tiny_run), "--accuracy", "predictor", "--predictor-archs", "6")
        + ["--latency", "1s", "--population", "8", "--generations", "3", *SEARCH_COMMON, "--out", str(out)],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy predictor on" in proc.stderr and "validation RMSE" in proc.stderr
    predictor = AccuracyPredictor.load(out / "predictor.pt", spec=net.spec)
    assert predictor.report["n_train"] + predictor.report["n_val"] == 8  # 6 uniform + max + min
    result = json.loads((out / "search.json").read_text())["results"][0]
    assert result["latency_ms"] <= 1000 and "predicted top-1 %" in proc.stdout
    table = json.loads((out / "latency_table.json").read_text())["entries_ms"]
    assert all(table[k] == v for k, v in measured.items())  # earlier entries were read back, not re-measured


def test_search_under_torchrun_shares_the_scoring_and_finds_what_one_process_finds(tiny_run, searched, env, tmp_path):
    out = tmp_path / "two"
    proc = _run(_torchrun("-m", "deps_core.cli", *_search_args(tiny_run, out)), env | {"TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((d / "search.json").read_text()) for d in (searched[0], out))
    keys = ("budget", "arch", "accuracy", "heldout_top1", "macs", "evaluated", "history")
    assert [{k: r[k] for k in keys} for r in one["results"]] == [{k: r[k] for k in keys} for r in two["results"]]
    assert len(one["scored_per_rank"]) == 1 and len(two["scored_per_rank"]) == 2
    assert sum(two["scored_per_rank"]) == sum(one["scored_per_rank"]) and min(two["scored_per_rank"]) > 0
    assert proc.stdout.count("held-out top-1 %") == 1  # rank 0 alone reports
    lines = Path(two["scores"]["path"]).read_text().splitlines()  # rank 0 saved every rank's scores
    assert len(lines) == 1 + sum(two["scored_per_rank"])


def test_under_torchrun_an_error_on_rank_0_is_one_line_and_keeps_its_measurements(tiny_run, env, tmp_path):
    # the latency budget is found infeasible on rank 0 alone (it measures), after the other rank began to wait; rank 0
    # lets it go (whether it then ends by itself or by torchrun's SIGTERM once rank 0 has failed is a race)
    args = ["search", "--checkpoint", str(tiny_run), "--latency", "1us", *SEARCH_COMMON, "--out", str(tmp_path)]
    proc = _run(_torchrun("-m", "deps_core.cli", *args), env | {"TMPDIR": str(tmp_path)}, timeout=180)
    assert proc.returncode != 0 and "exitcode  : 2" in proc.stderr  # rank 0's exit status for a bad input
    assert proc.stderr.count("deps search: error: latency budget 0.001 ms is below the smallest subnet's") == 1
    assert (tmp_path / "latency_table.json").is_file()  # what rank 0 measured is kept


def test_a_second_search_of_the_same_setup_scores_nothing_anew(tiny_run, searched, env, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(searched[0], out)
    proc = _run(_deps(*_search_args(tiny_run, out)), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((d / "search.json").read_text()) for d in (searched[0], out))
    keys = ("budget", "arch", "accuracy", "heldout_top1", "macs", "evaluated", "history")
    assert [{k: r[k] for k in keys} for r in one["results"]] == [{k: r[k] for k in keys} for r in two["results"]]
    assert two["scored_per_rank"] == [0] and two["scores"]["reused"] == sum(one["scored_per_rank"]) > 0
    assert f"reusing {two['scores']['reused']} scored subnets from {out}" in proc.stderr


def _scoring_setup():
    """A tiny untrained supernet, 6 distinct archs of it, random calibration and held-out batches (all seeded)."""
    from deps_core.evaluate import CachedBatches

    config = apply_overrides(load_preset("default"), TINY)
    g = torch.Generator().manual_seed(0)
    net = create_supernet(config.model.space, num_classes=10, generator=g, **config.model.space_kwargs()).eval()
    archs = list(dict.fromkeys(uniform_arch(net.spec, g) for _ in range(12)))[:6]
    calib = CachedBatches([(torch.randn(16, 3, 32, 32, generator=g), torch.randint(10, (16,), generator=g))])
    heldout = CachedBatches([(torch.randn(24, 3, 32, 32, generator=g), torch.randint(10, (24,), generator=g))])
    return net, archs, calib, heldout


def test_scores_are_saved_as_they_come_and_a_search_of_the_same_setup_reuses_them(tmp_path):
    net, archs, calib, heldout = _scoring_setup()
    expected = EvalAccuracy(net, calib, heldout)(archs)
    setup = {"weights_sha256": "ab12", "heldout_images": 24}
    log = ResultLog(tmp_path, setup, "scores")
    scorer = EvalAccuracy(net, calib, heldout, log=log, chunk=2)
    chunks, score = [], scorer._score

    def stopped_in_the_third_chunk(part):
        if len(chunks) == 2:
            raise KeyboardInterrupt
        chunks.append(part)
        return score(part)

    scorer._score = stopped_in_the_third_chunk
    with pytest.raises(KeyboardInterrupt):
        scorer(archs)
    assert len(log.path.read_text().splitlines()) == 1 + 4  # the setup, then the two chunks scored before the stop
    with open(log.path, "a") as f:
        f.write('{"arch": {"space": "ofa_mb')  # and a line a kill cut short

    again = EvalAccuracy(net, calib, heldout, log=ResultLog(tmp_path, dict(reversed(setup.items())), "scores"), chunk=2)
    assert again.reused == 4
    calls, score = [], again._score
    again._score = lambda part: calls.append(part) or score(part)
    assert again(archs) == expected and calls == [archs[4:]]  # the same scores, bit for bit; only two scored anew
    assert ResultLog(tmp_path, setup, "scores").load() == {a: {"top1": v} for a, v in zip(archs, expected)}
    other = ResultLog(tmp_path, setup | {"weights_sha256": "cd34"}, "scores")  # another checkpoint: another file
    assert other.path != log.path and other.load() == {}

    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([*lines[:2], '{"top1": 0.5}', *lines[3:]]) + "\n")
    with pytest.raises(ValueError, match=r"line 3: missing key 'arch'; move the file away to evaluate anew"):
        log.load()
    log.path.write_text("\n".join(['{"setup": {"heldout_images": 25}}', *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"scores-\w+\.jsonl line 1: it is not the header of this setup"):
        log.load()


def _score_on_rank(rank: int, folder: str) -> None:
    """One rank of a 2-process gloo group scoring archs with :class:`EvalAccuracy`; rank 1 fails on its second call."""
    import torch.distributed as dist

    from deps_core.distributed import DistContext

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        net, archs, calib, heldout = _scoring_setup()
        scorer = EvalAccuracy(net, calib, heldout, ctx=DistContext(rank=rank, world_size=2))
        if rank == 1:
            calls, score = [], scorer._score

            def fails_the_second_time(archs):
                calls.append(archs)
                if len(calls) == 2:
                    raise RuntimeError("out of memory (injected)")
                return score(archs)

            scorer._score = fails_the_second_time
            with pytest.raises(RuntimeError, match="rank 1 scores the archs rank 0 sends it: call serve"):
                scorer(archs)
            scorer.serve()  # returns when rank 0 releases it, after its error too
            assert len(calls) == 2
            return
        result = {"alone": EvalAccuracy(net, calib, heldout)(archs)}
        try:
            result["first"] = scorer(archs[:3])
            result["per_rank"] = list(scorer.scored_per_rank)
            scorer(archs)  # the first three come from the cache; of the others rank 1 gets one, and fails
        except RuntimeError as err:
            result["error"] = str(err)
        finally:
            scorer.release()
        (Path(folder) / "result.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _wait_on_rank(rank: int, port: int, folder: str) -> None:
    """A rank of a 2-process group made by ``DistContext.from_env`` with a 2 s timeout: rank 1 waits for a broadcast
    that rank 0 sends only after 5 s."""
    import datetime

    from deps_core.distributed import DistContext

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK="0")
    ctx = DistContext.from_env("cpu", timeout=datetime.timedelta(seconds=2))
    if rank == 0:
        time.sleep(5)
    start = time.monotonic()
    try:
        ctx.broadcast_object("late")
        outcome = "received"
    except RuntimeError as err:
        outcome = f"{type(err).__name__}: {err}"
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps([outcome, time.monotonic() - start]))
    os._exit(0)  # (no teardown of a group whose peer gave up)


def test_a_process_group_waits_as_long_as_its_timeout_says(tmp_path):
    import socket

    import torch.multiprocessing as mp

    from deps_core.cli import SEARCH_WAIT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_wait_on_rank, args=(port, str(tmp_path)), nprocs=2)
    outcome, waited = json.loads((tmp_path / "rank1.json").read_text())
    assert outcome != "received" and "timed out" in outcome.lower() and 1.5 < waited < 4.5, (outcome, waited)
    # deps search's ranks wait for rank 0 inside a collective far longer than torch's defaults (NCCL: 10 minutes)
    assert SEARCH_WAIT.total_seconds() >= 3600


def test_eval_accuracy_shares_each_call_over_the_ranks_and_names_a_rank_that_failed(tmp_path):
    import torch.multiprocessing as mp

    procs = mp.spawn(_score_on_rank, args=(str(tmp_path),), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not procs.join(timeout=5):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("a rank hung")
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["first"] == result["alone"][:3] and result["per_rank"] == [2, 1]
    assert len(set(result["alone"])) > 1  # the archs score differently: a mixed-up order would show
    assert result["error"] == "scoring subnets on rank 1 failed: RuntimeError: out of memory (injected)"


def _main_error(capsys, argv: list[str]) -> str:
    """Run ``deps`` in this process; it must fail with exit 2 and one line on stderr, which is returned."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--macs", "300X"], "argument --macs: MACs budget '300X': expected a positive number"),
        (["--macs", "10M,abc"], "MACs budget 'abc'"),
        (["--latency", "20"], "argument --latency: latency budget '20': expected a positive duration"),
        ([], "give a budget: --macs (e.g. 300M) and/or --latency (e.g. 20ms)"),
        (["--macs", "1M"], "MACs budget 1M is below the smallest subnet's"),
        (["--macs", "2.5K"], "MACs budget 2.5K is below the smallest subnet's"),
        (["--macs", "10M", "--predictor", "p.pt"], "--predictor needs --accuracy predictor"),
        (["--macs", "10M", "--resolutions", "33"], "--resolutions [33] are not in ofa_mbv3_32's"),
        (["--macs", "10M", "--population", "0"], "argument --population: expected a positive integer"),
        (["--macs", "1M", "--predictor-archs", "0"], "argument --predictor-archs: expected a positive integer"),
    ],
)
def test_search_bad_input_is_one_line_and_exit_2(tiny_run, capsys, extra, message):
    err = _main_error(capsys, ["search", "--checkpoint", str(tiny_run), *extra])
    assert message in err


def test_budget_below_the_smallest_subnet_names_its_macs_in_the_cli(tiny_run, capsys):
    net, _ = supernet_from_checkpoint(tiny_run)
    least = net.macs(net.min_arch())
    err = _main_error(capsys, ["search", "--checkpoint", str(tiny_run), "--macs", f"{(least - 1e5) / 1e6}M"])
    assert f"below the smallest subnet's {least / 1e6:.2f}M MACs" in err and str(net.min_arch()) in err


def test_a_latency_budget_below_the_smallest_subnet_keeps_the_latencies_it_measured(tiny_run, capsys, tmp_path):
    fast = ["--latency-warmup", "1", "--latency-repeats", "3", "--out", str(tmp_path)]
    err = _main_error(capsys, ["search", "--checkpoint", str(tiny_run), "--latency", "1us", *fast])
    assert "latency budget 0.001 ms is below the smallest subnet's predicted" in err
    net, _ = supernet_from_checkpoint(tiny_run)
    saved = json.loads((tmp_path / "latency_table.json").read_text())["entries_ms"]
    assert set(saved) == {str(k) for k in block_keys(net.spec, net.min_arch(), net.num_classes)}  # for the next run


def test_a_predictor_of_another_space_is_refused(tiny_run, capsys, tmp_path):
    spec = space_spec("ofa_mbv3_w1.0")
    archs = [uniform_arch(spec, torch.Generator().manual_seed(i)) for i in range(4)]
    predictor, _ = fit_predictor(
        archs, [0.1, 0.2, 0.3, 0.4], ArchEncoder.for_space(spec), generator=torch.Generator(), epochs=1, hidden=8
    )
    path = predictor.save(tmp_path / "p.pt")
    argv = ["search", "--checkpoint", str(tiny_run), "--macs", "20M", "--accuracy", "predictor", "--predictor"]
    err = _main_error(capsys, [*argv, str(path)])
    assert "predicts archs of space 'ofa_mbv3_w1.0', not 'ofa_mbv3_32'" in err


@pytest.mark.parametrize("command", ["export", "eval"])
@pytest.mark.parametrize(
    "arch, message",
    [
        # a value the registered space has but this checkpoint's (restricted: kernel 7 only) space lacks
        (Arch.from_ofa([3] * 20, [3] * 20, [2] * 5, space="ofa_mbv3_32"), "arch.ks has [3]; allowed values"),
        (Arch.from_ofa([7] * 20, [3] * 20, [2] * 5), "arch belongs to space 'ofa_mbv3_w1.0', not 'ofa_mbv3_32'"),
        ({"space": "ofa_mbv3_32", "ks": [9] * 20, "e": [3] * 20, "d": [2] * 5, "resolution": 32}, "arch.ks has [9]"),
    ],
)
def test_an_arch_outside_the_space_is_one_clear_error(k7_run, tmp_path, capsys, command, arch, message):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch.to_dict() if isinstance(arch, Arch) else arch))
    argv = ["--checkpoint", str(k7_run), "--arch", str(path)] + (
        ["--out", str(path.parent / "x")] * (command == "export")
    )
    err = _main_error(capsys, [command, *argv])
    assert message in err and str(path) in err


def test_missing_arch_file_is_named(tiny_run, capsys, tmp_path):
    err = _main_error(capsys, ["export", "--checkpoint", str(tiny_run), "--arch", "nope.json", "--out", str(tmp_path)])
    assert "--arch 'nope.json' is neither max, min, an arch JSON file nor a JSON string" in err


_FOREIGN = [{"arch": Arch.from_ofa([7] * 20, [6] * 20, [4] * 5, space="ofa_mbv3_32").to_dict(), "macs": 10**9,
             "top1": 0.5, "top5": 0.9, "loss": 1.0}]  # fmt: skip


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file (expected a subnets.json that deps train or deps eval wrote)"),
        ("nope", "is not a JSON file: Expecting value"),
        ('{"a": 1}', "is not a list of subnet results as subnets.json holds: a dict, not a list"),
        ('[{"macs": 1}]', "is not a list of subnet results as subnets.json holds: missing key 'arch'"),
        ('[{"arch": {"space": "ofa_mbv3_32"}}]', "an arch dict has exactly the keys"),
        (json.dumps(_FOREIGN), "has 1000000000 MACs, outside the supernet's range"),
    ],
)
def test_a_bad_overlay_stops_eval_before_it_evaluates_or_writes(tiny_run, tmp_path, capsys, content, message):
    path = tmp_path / "subnets.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "eval"
    err = _main_error(capsys, ["eval", "--checkpoint", str(tiny_run), "--out", str(out), "--overlay", f"b={path}"])
    assert err.startswith("deps eval: error: --overlay: ") and message in err, err
    assert str(path) in err or "MACs" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "model.width_mult=1.0"], "model.width_mult has no effect here: the checkpoint fixes it"),
        (["eval", "run.eval_archs=3"], "run.eval_archs has no effect here"),
        (["search", "--macs", "10M", "optim.lr=1"], "optim.lr has no effect here"),
        (["search", "--macs", "10M", "data.holdout=5"], "data.holdout is the run's own (its held-out split"),
        (["export", "--out", "x", "method.k=2"], "method.k has no effect here"),
        (["export", "--out", "x", "run.device=cuda"], "run.device has no effect here"),
        (["export", "--out", "x", "--no-calibrate", "data.num_workers=1"], "--no-calibrate reads no data"),
    ],
)
def test_overrides_a_checkpoint_fixes_or_a_command_ignores_are_refused(tiny_run, capsys, argv, message):
    err = _main_error(capsys, [argv[0], "--checkpoint", str(tiny_run), *argv[1:]])
    assert message in err, err


@pytest.mark.parametrize("command", ["eval", "export", "search"])
def test_an_output_path_that_is_a_file_is_refused_before_any_work(tiny_run, tmp_path, capsys, command):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    extra = {"eval": ["--archs", "0"], "export": [], "search": ["--macs", "10M"]}[command]
    err = _main_error(capsys, [command, "--checkpoint", str(tiny_run), "--out", str(taken), *extra])
    assert f"--out {taken} is a file, not a directory" in err and taken.read_text() == "keep me"
    err = _main_error(capsys, [command, "--checkpoint", str(tiny_run), "--out", str(taken / "sub"), *extra])
    assert f"--out {taken / 'sub'} cannot be created" in err


def test_a_checkpoint_whose_weights_are_of_another_space_is_one_clear_error(tmp_path, capsys, image_folder):
    run = _tiny_checkpoint(tmp_path / "run", [*SEARCH_TINY, *image_folder])
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    other = create_supernet("ofa_proxyless_w1.3", num_classes=10)  # another space's weights
    state["model"] = other.state_dict()
    torch.save(state, run / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match="do not fit the ofa_mbv3_32 supernet"):
        supernet_from_checkpoint(run)
    err = _main_error(capsys, ["search", "--checkpoint", str(run), "--macs", "10M"])
    assert "e.g." in err and "trained on another space or width" in err


def test_search_help_lists_the_budgets(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--macs" in out and "--latency" in out and "--accuracy {eval,predictor}" in out
