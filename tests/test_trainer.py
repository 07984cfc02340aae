"""The trainer end to end through FFCV: outputs, exact resume after SIGKILL and Ctrl-C (one process, and two under
torchrun), 2-process gloo, NaN (on every rank, or one) and bad checkpoints.

The runs are real ``deps train`` processes on a tiny synthetic dataset (built once into a temporary cache).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import torch

from deps_core.checkpoint import CheckpointError, load_checkpoint
from deps_core.cli import main
from deps_core.config import (
    LR_SCHEDULES,
    METHOD_FIELDS,
    METHODS,
    OPTIM_FIELDS,
    OPTIMIZERS,
    SCHEDULE_FIELDS,
    ExperimentConfig,
    MethodConfig,
    apply_overrides,
    list_presets,
    load_preset,
)
from deps_core.distributed import DistContext
from deps_core.optim import RMSpropTF
from deps_core.schedules import Progress
from deps_core.spaces import create_supernet, space_spec
from deps_core.trainer import Trainer, TrainingStopped, _optimizer, _StopRequest, build_strategy

TINY = [
    "model.width_mult=0.25",
    "model.dropout=0",
    "data.synthetic_train_size=384",
    "data.holdout=0",
    "data.synthetic_val_size=128",
    "data.resolution=16",  # the 32-pixel synthetic images, cropped and resized to 16: a TINY run takes ~40 % less
    "data.batch_size=32",
    "data.val_batch_size=64",
    "data.num_workers=1",
    "method.epochs=3",
    "method.p_fm=0.34",
    "method.ramp_epochs=0.5",
    "method.reorganize=true",
    "optim.name=sgd",  # the regime these tests were written for (AdamW, RMSProp: test_adamw_and_rmsprop_step_...)
    "optim.lr=0.05",
    "optim.lr_batch=32",
    "run.checkpoint_every=3",
    "run.log_every=1",
    "run.eval_archs=2",
    "run.calib_images=64",
    "run.calib_batch=32",
    "run.progress=false",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return os.environ | {"DEPS_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "deps_core.cli", "train", *args]


def _run(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("runs") / "full"
    proc = _run(_train_cmd(*TINY, f"run.out_dir={out}"), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


# --- presets and configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_is_valid_and_builds_its_strategy(name):
    config = load_preset(name)
    spec = space_spec(config.model.space, **config.model.space_kwargs())
    strategy = build_strategy(config, spec)
    assert strategy.total_epochs >= 1
    assert ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_bignas_imagenet_preset_runs_bignas_rmsprop_with_its_exponential_decay_and_constant_ending():
    config = load_preset("bignas-mbv3-imagenet")  # DεpS §5: BigNAS on ImageNet-1k with its own RMSProp recipe
    spec = space_spec("ofa_mbv3_w1.0", **config.model.space_kwargs())
    strategy = build_strategy(config, spec)
    peak = 0.016 * 2048 / 256
    n = 625  # steps per epoch: 1.28 M images at 2048
    assert strategy.total_epochs == 400 and strategy.lr_at(Progress(0, 0, n)) == pytest.approx(peak / (5 * n))
    assert strategy.lr_at(Progress(5, 0, n)) == strategy.lr_at(Progress(6, n - 1, n)) == pytest.approx(peak)
    assert strategy.lr_at(Progress(7, 0, n)) == pytest.approx(peak * 0.973)
    assert strategy.lr_at(Progress(399, n - 1, n)) == pytest.approx(peak * 0.05)  # 0.973¹⁹⁷ ≈ 0.005 < 0.05
    optimizer = _optimizer(create_supernet(config.model.space, **config.model.space_kwargs()), config)
    assert type(optimizer) is RMSpropTF
    assert {k: optimizer.defaults[k] for k in ("decay", "momentum", "eps")} == dict(decay=0.9, momentum=0.9, eps=1e-3)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-5, 0.0]


def test_seed_recipe_preset_matches_the_readme():
    config = load_preset("deps-mbv3-imagenet")
    strategy = build_strategy(config, space_spec("ofa_mbv3_w1.0", **config.model.space_kwargs()))
    assert strategy.total_epochs == 270 and config.model.ks_choices == (7,) and config.method.k == 4
    assert strategy.plan(Progress(144, 99, 100), 0).phase == "fm_warmup"
    first = strategy.plan(Progress(145, 0, 100), 0)
    assert first.phase == "shrinking" and first.epsilon < 1e-2
    assert strategy.plan(Progress(150, 0, 100), 0).epsilon == 1.0
    assert strategy.lr_at(Progress(0, 0, 100)) == pytest.approx(0.1625 * 2048 / 128)
    assert build_strategy(load_preset("ofa-mbv3-imagenet"), space_spec("ofa_mbv3_w1.0")).total_epochs == 605
    assert build_strategy(load_preset("compofa-mbv3-imagenet"), space_spec("ofa_mbv3_w1.0")).total_epochs == 330


_ALTERED = dict(epochs=7, p_fm=0.3, k=2, ramp_epochs=2.0, eps_form="none", eps_start=0.01, all_uniform=True,
                subnet_loss="ce", subnet_bn_stats=False, reorganize=True, grad_clip_value=2.0, phase_warmup_epochs=2,
                compound_fixed_kernels=False)  # fmt: skip


@pytest.mark.parametrize("name", METHODS)
def test_method_fields_name_exactly_what_each_strategy_reads_and_the_rest_is_refused(name):
    spec = space_spec("ofa_mbv3_32")
    base = ExperimentConfig().merged({"method": {"name": name}})
    altered = _ALTERED | (
        {"phases": {"ofa": (3, 2, 1, 2, 1, 2), "compofa": (3, 1, 2)}[name]} if name in ("ofa", "compofa") else {}
    )
    assert set(_ALTERED) | {"name", "phases"} == {f.name for f in attrs.fields(MethodConfig)}  # every field is tried
    strategy = build_strategy(base, spec)
    for field, value in altered.items():
        changed = build_strategy(base.merged({"method": {field: value}}), spec)
        assert (changed != strategy) == (field in METHOD_FIELDS[name]), field
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value).lower()
        if field in METHOD_FIELDS[name]:
            assert (
                apply_overrides(base, [f"method.{field}={text}"]).method
                == base.merged({"method": {field: value}}).method
            )
        else:
            with pytest.raises(ValueError, match=rf"^method.{field} does not apply to method '{name}', which reads"):
                apply_overrides(base, [f"method.{field}={text}"])


@pytest.mark.parametrize(
    "key, chosen",
    [("name", name) for name in OPTIMIZERS] + [("schedule", schedule) for schedule in LR_SCHEDULES],
)
def test_optim_fields_of_another_optimizer_or_schedule_are_refused_on_the_command_line_and_in_a_config_file(
    key, chosen, tmp_path, capsys
):
    choices, table = (OPTIMIZERS, OPTIM_FIELDS) if key == "name" else (LR_SCHEDULES, SCHEDULE_FIELDS)
    base = apply_overrides(load_preset("default"), [f"optim.{key}={chosen}"])
    values = {"momentum": "0.8", "nesterov": "false", "betas": "0.8,0.99", "rms_decay": "0.8", "rms_eps": "1e-4"}
    values |= {"final_lr": "1e-5", "lr_decay": "0.9", "lr_decay_epochs": "3", "lr_floor": "0.1"}
    fields = {f: [c for c in choices if f in table[c]] for c in choices for f in table[c]}
    assert set(fields) <= set(values) and any(len(readers) > 1 for readers in fields.values()) == (key == "name")
    for field, readers in fields.items():
        if chosen in readers:
            assert str(getattr(apply_overrides(base, [f"optim.{field}={values[field]}"]).optim, field)) != str(
                getattr(base.optim, field)
            )
            continue
        which = " or ".join(f"optim.{key}='{r}'" for r in readers)
        with pytest.raises(ValueError, match=rf"^optim.{field} applies to {which}, not to the chosen '{chosen}'$"):
            apply_overrides(base, [f"optim.{field}={values[field]}"])
        edited = tmp_path / f"{field}.json"
        parsed = apply_overrides(ExperimentConfig(), [f"optim.{key}={readers[0]}", f"optim.{field}={values[field]}"])
        edited.write_text(json.dumps({"optim": {key: chosen, field: getattr(parsed.optim, field)}}))
        assert main(["train", "--config", str(edited), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert f"optim.{field}=" in err and f"in {edited} applies to {which}, not to" in err, err
    assert main(["train", f"optim.{key}={chosen}", "--dry-run"]) == 0  # the dump holds every field, at its default
    (tmp_path / "dump.json").write_text(capsys.readouterr().out)  # where nothing chosen reads it: it loads back
    assert main(["train", "--config", str(tmp_path / "dump.json"), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["optim"] == base.to_dict()["optim"]


@pytest.mark.parametrize(
    "overrides, reference, defaults",
    [
        (
            ["optim.name=adamw", "optim.betas=0.8,0.99"],
            lambda groups: torch.optim.AdamW(groups, lr=1.0, betas=(0.8, 0.99)),
            {"betas": (0.8, 0.99)},
        ),
        (  # TF's RMSProp with BigNAS's staircase: the rate halves every half epoch (3 steps an epoch), floor 30 %
            ["optim.name=rmsprop", "optim.momentum=0.8", "optim.rms_decay=0.95", "optim.rms_eps=1e-4"]
            + ["optim.schedule=exponential", "optim.lr_decay=0.5", "optim.lr_decay_epochs=0.5", "optim.lr_floor=0.3"],
            lambda groups: RMSpropTF(groups, lr=1.0, decay=0.95, momentum=0.8, eps=1e-4),
            {"decay": 0.95, "momentum": 0.8, "eps": 1e-4},
        ),
    ],
    ids=["adamw", "rmsprop"],
)
def test_adamw_and_rmsprop_step_as_their_reference_on_the_accumulated_gradient_and_resume_from_disk(
    overrides, reference, defaults, tmp_path
):
    config = apply_overrides(
        load_preset("default"),
        ["model.width_mult=0.25", "data.batch_size=8", "method.epochs=2", "run.progress=false"]
        + overrides
        + ["optim.weight_decay=0.1", "optim.lr=0.01"],
    )
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    trainer = Trainer(config, batches, num_classes=10, out_dir=tmp_path / "a")
    named = dict(trainer.supernet.named_parameters())
    ref = {n: p.detach().clone() for n, p in named.items()}
    initial = {n: p.clone() for n, p in ref.items()}
    plain = [n for n in named if not any(key in n for key in config.optim.no_decay)]
    assert plain and len(plain) < len(named)  # both groups are exercised
    groups = [
        {"params": [ref[n] for n in plain], "weight_decay": 0.1},
        {"params": [ref[n] for n in named if n not in plain], "weight_decay": 0.0},
    ]
    optimizer = reference(groups)
    rates = []
    for x, y in batches[:2]:
        record = trainer.train_step(x, y)
        rates.append(record["lr"])
        for n, p in named.items():
            ref[n].grad = None if p.grad is None else p.grad.detach().clone()  # untouched: no step, as in torch
        for group in optimizer.param_groups:
            group["lr"] = record["lr"]
        optimizer.step()
        for n, p in named.items():
            torch.testing.assert_close(p.detach(), ref[n], rtol=1e-6, atol=1e-7, msg=n)
    assert sum(not torch.equal(p.detach(), initial[n]) for n, p in named.items()) > len(named) // 2
    if config.optim.schedule == "exponential":  # 0.01 per 32 images at 8: 0.0025, halved at step 2 (1.5 steps)
        assert rates == pytest.approx([0.0025, 0.0025])
        assert trainer.strategy.lr_at(Progress(0, 2, 3)) == pytest.approx(0.00125)
        assert trainer.strategy.lr_at(Progress(1, 2, 3)) == pytest.approx(0.0025 * 0.3)  # the floor, not 0.5³
    saved = trainer.save()
    rng = torch.get_rng_state()
    resumed = Trainer(config, batches, num_classes=10, out_dir=tmp_path / "b")
    resumed.resume(saved)  # also sets the RNG state back to the checkpoint's (dropout)
    assert type(resumed.optimizer) is type(optimizer)
    assert {k: resumed.optimizer.defaults[k] for k in defaults} == defaults
    resumed.train_step(*batches[2])
    torch.set_rng_state(rng)
    trainer.train_step(*batches[2])
    for n, p in resumed.supernet.named_parameters():
        assert torch.equal(p.detach(), named[n].detach()), n


@pytest.mark.parametrize(
    "args, message",
    [
        (["optim.lrr=3"], "unknown key 'optim.lrr'"),
        (["optim.name=lamb"], "optim.name must be one of ['sgd', 'adamw', 'rmsprop']; got 'lamb'"),
        (["optim.betas=0.9"], "optim.betas must be two numbers in [0, 1); got [0.9]"),
        (["optim.betas=0.9,1"], "optim.betas must be two numbers in [0, 1); got [0.9, 1.0]"),
        (["optim.lr=fast"], "optim.lr='fast': expected float"),
        (["method.name=sgd"], "method.name must be one of"),
        (["run.eval_sampler=random"], "eval_sampler must be one of ['buckets', 'uniform']"),
        (["data.batch_size=0"], "data.batch_size must be a finite number >= 1"),
        (["run.grad_accum=3"], "data.batch_size=32 does not split into run.grad_accum=3 equal micro-batches"),
        (["data.train=/x.beton"], "data.train=/x.beton would be ignored because data.source is 'synthetic'"),
        (["run.out_dir=/dev/null"], "run.out_dir /dev/null is a file, not a directory"),
        (["lr=3"], "is not of the form section.field=value"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--config", "/nonexistent.json"], "config file not found: /nonexistent.json"),
        (["--resume", "/nonexistent-run"], "checkpoint not found: /nonexistent-run/checkpoints/last.pt"),
    ],
)
def test_bad_cli_values_are_one_line_errors_with_exit_2(args, message, capsys):
    threads = torch.get_num_threads()
    assert main(["train", *args]) == 2  # in this process: each is refused before the command sets anything up
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert torch.get_num_threads() == threads  # (the thread count is the first process-wide setting it makes)


def test_a_value_only_the_data_can_refute_is_one_line_and_exit_2(env, tmp_path):
    proc = _run(_train_cmd("data.holdout=4500", f"run.out_dir={tmp_path / 'run'}"), env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("deps train: error: data.holdout=4500 holds out all 4500 synthetic training images"), err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "item",
    [
        "optim.lr=nan",
        "optim.lr=inf",
        "optim.weight_decay=nan",
        "optim.grad_clip_norm=inf",
        "method.ramp_epochs=nan",
        "data.mixup_alpha=inf",
        "model.width_mult=nan",
        "optim.kd_temperature=-inf",
    ],
)
def test_non_finite_numbers_are_refused_from_the_command_line_and_from_json(item):
    key, _, text = item.partition("=")
    with pytest.raises(ValueError, match=rf"^{key} must be a finite number >= .*; got {text}$"):
        apply_overrides(load_preset("default"), [item])
    section, field = key.split(".")
    parsed = json.loads(json.dumps({section: {field: float(text)}}))  # Python's json writes and reads NaN/Infinity
    with pytest.raises(ValueError, match=rf"^{key} must be a finite number"):
        load_preset("default").merged(parsed)


@pytest.mark.parametrize(
    "item, message",
    [
        ("model.ks_choices=3,9", r"model\.ks_choices must be a non-empty subset of \[3, 5, 7\]; got \[3, 9\]"),
        ("model.e_choices=5", r"model\.e_choices must be a non-empty subset of \[3, 4, 6\]"),
        ("model.d_choices=1,2", r"model\.d_choices must be a non-empty subset of \[2, 3, 4\]"),
    ],
)
def test_choices_outside_the_space_are_refused_with_the_config_not_at_training(item, message):
    with pytest.raises(ValueError, match=rf"^{message}"):
        apply_overrides(load_preset("default"), [item])
    assert apply_overrides(load_preset("default"), ["model.ks_choices=3,7"]).model.ks_choices == (3, 7)


def test_a_batch_that_does_not_split_into_equal_micro_batches_is_refused_before_any_step():
    from deps_core.data import build_data

    config = apply_overrides(load_preset("default"), ["run.grad_accum=16"])  # one process: 2 images per micro-batch
    with pytest.raises(ValueError, match=r"^data.batch_size=32 is not divisible by the 4 processes × run.grad_accum"):
        build_data(config, DistContext(world_size=4))  # a rank's 8 images in 16 micro-batches: empty ones, NaN
    config = apply_overrides(load_preset("default"), ["model.width_mult=0.25", "data.batch_size=8", "run.grad_accum=4"])
    g = torch.Generator().manual_seed(0)
    trainer = Trainer(config, [(torch.randn(6, 3, 8, 8, generator=g), torch.arange(6))], num_classes=10)
    with pytest.raises(ValueError, match=r"^a batch of 6 images does not split into run.grad_accum=4 equal micro"):
        trainer.train_step(torch.randn(6, 3, 8, 8, generator=g), torch.arange(6))  # a library user's loader


def test_data_paths_the_synthetic_source_would_ignore_are_refused():
    default, cifar = load_preset("default"), load_preset("deps-mbv3-cifar10")
    with pytest.raises(ValueError, match=r"^data.val=v.beton would be ignored because data.source is 'synthetic'"):
        apply_overrides(default, ["data.val=v.beton"])
    with pytest.raises(ValueError, match=r"^data.train=data/cifar10/train.beton and data.val=data/cifar10/val.beton"):
        apply_overrides(cifar, ["data.source=synthetic"])
    synthetic = apply_overrides(cifar, ["data.source=synthetic", "data.train=none", "data.val=none"])
    assert (synthetic.data.source, synthetic.data.train, synthetic.data.val) == ("synthetic", None, None)
    beton = apply_overrides(default, ["data.source=beton", "data.train=t.beton", "data.val=v.beton"])
    assert (beton.data.train, beton.data.val) == ("t.beton", "v.beton")


def test_a_config_file_setting_a_method_field_the_method_ignores_is_refused_but_a_dump_loads_back(tmp_path, capsys):
    from deps_core.cli import main

    def dry_run(*args: str) -> tuple[int, str, str]:
        code = main(["train", *args, "--dry-run"])
        out, err = capsys.readouterr()
        return code, out, err

    edited = tmp_path / "ofa_longer.json"
    edited.write_text(json.dumps({"method": {"name": "ofa", "epochs": 100}, "optim": {"name": "sgd"}}))  # OFA: phases
    code, _, err = dry_run("--config", str(edited))
    assert code == 2 and f"method.epochs=100 in {edited} does not apply to method 'ofa', which reads" in err, err
    code, dump, _ = dry_run("--preset", "ofa-mbv3-imagenet")  # every field, the unread ones at their defaults
    (tmp_path / "ofa.json").write_text(dump)
    code, out, err = dry_run("--config", str(tmp_path / "ofa.json"))
    assert code == 0 and ExperimentConfig.from_dict(json.loads(out)) == load_preset("ofa-mbv3-imagenet"), err
    # the preset's DεpS epochs stay; OFA's phases have SGD rates, so the default's AdamW is refused
    (tmp_path / "name.json").write_text(json.dumps({"method": {"name": "ofa"}}))
    code, out, err = dry_run("--config", str(tmp_path / "name.json"))
    assert code == 2 and "method 'ofa' trains the phases after the full model's at its paper's fixed SGD rates" in err
    assert "optim.name='adamw' would take as its own: set optim.name=sgd" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "name.json").write_text(json.dumps({"method": {"name": "ofa"}, "optim": {"name": "sgd"}}))
    code, out, err = dry_run("--config", str(tmp_path / "name.json"))
    assert code == 0 and json.loads(out)["method"]["epochs"] == load_preset("default").method.epochs, err
    code, _, err = dry_run("method.name=compofa")
    assert code == 2 and "method 'compofa' trains the phases" in err, err


def test_dry_run_prints_the_resolved_config(env, tmp_path):
    override = tmp_path / "o.json"
    override.write_text(json.dumps({"optim": {"lr": 0.3}}))
    proc = _run(_train_cmd("--preset", "deps-mbv3-cifar10", "--config", str(override), "method.k=3", "--dry-run"), env)
    config = ExperimentConfig.from_dict(json.loads(proc.stdout))
    expected = apply_overrides(load_preset("deps-mbv3-cifar10").merged({"optim": {"lr": 0.3}}), ["method.k=3"])
    assert proc.returncode == 0 and config == expected


# --- a real run --------------------------------------------------------------------------------------------------


def test_a_tiny_run_writes_logs_checkpoints_report_and_plot(full_run):
    out, proc = full_run
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert [s["global_step"] for s in steps] == list(range(len(steps))) and len(epochs) == 3
    assert {s["phase"] for s in steps} == {"fm_warmup", "shrinking"}
    shrink = [s for s in steps if s["phase"] == "shrinking"]
    assert shrink[0]["epsilon"] == pytest.approx(1e-4) and shrink[-1]["epsilon"] == 1.0
    assert set(shrink[0]["losses"]) == {"0:full", "1:min", "2:uniform"}  # the default preset: k = 3
    assert all("val_top1/full" in e and "cost" in e for e in epochs)
    report = json.loads((out / "report.json").read_text())
    assert report["pareto"]["buckets"] and 0 <= report["pareto"]["mean_pareto_accuracy"] <= 1
    assert report["cost"]["train_seconds"] > 0 and set(report["cost"]["train_seconds_by_phase"]) == {
        "fm_warmup",
        "shrinking",
    }
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "last.pt").exists() and (out / "checkpoints" / "prev.pt").exists()
    # the final evaluation's results as they came (a run stopped in it goes on from them): those of subnets.json
    (log,) = out.glob("subnets-*.jsonl")
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert "weights_sha256" in logged[0]["setup"]
    assert logged[1:] == json.loads((out / "subnets.json").read_text())
    assert "mean pareto accuracy" in proc.stdout
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["strategy_state"]["reorganized"] == ["shrink"]
    assert state["progress"]["epoch"] == 3 and state["progress"]["step"] == 0


def test_the_training_curves_show_the_logs_and_the_phases(full_run, tmp_path):
    from deps_core.curves import plot_training, read_jsonl, training_series

    out, _ = full_run
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"
    epochs, steps = read_jsonl(out / "epochs.jsonl"), read_jsonl(out / "steps.jsonl")
    series = training_series(epochs, steps, 12)  # 384 images in batches of 32
    last_fm = max(s["global_step"] for s in steps if s["phase"] == "fm_warmup")
    assert series["phases"] == [("fm_warmup", 0.0, (last_fm + 1) / 12), ("shrinking", (last_fm + 1) / 12, 3.0)]
    assert series["top1"]["validation"] == ([1, 2, 3], [100 * e["val_top1/full"] for e in epochs])
    assert set(series["loss"]) == {"full", "min", "uniform"} and series["loss"]["min"][0] == [2, 3]  # from epoch 1 on
    x, eps = series["epsilon"]
    assert x == [(s["global_step"] + 1) / 12 for s in steps] and eps[-1] == 1.0 and eps[0] == 0.0
    assert plot_training(epochs, steps, 12, tmp_path / "t.png") == series and (tmp_path / "t.png").stat().st_size
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        training_series(epochs, steps, 0)


def test_curves_overlays_runs_against_epochs_or_device_hours_and_tabulates_them(full_run, tmp_path, capsys):
    from deps_core.cli import main
    from deps_core.curves import compare_series, read_jsonl

    full, _ = full_run
    epochs = read_jsonl(full / "epochs.jsonl")
    (tmp_path / "short").mkdir()  # a run stopped after two epochs
    (tmp_path / "short" / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs[:2]))
    png = tmp_path / "cmp.png"
    assert main(["curves", str(full), str(tmp_path / "short"), "--x", "device-hours", "--out", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    final = f"{100 * epochs[-1]['val_top1/full']:.2f}"
    assert out[2].split()[:2] == ["full", "3"] and out[2].split()[3] == final and out[3].split()[:2] == ["short", "2"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    series = compare_series({"full": epochs}, "device-hours")["full"]
    assert series["x"] == [e["cost"]["device_hours"] for e in epochs] and series["x"] == sorted(series["x"])
    assert series["best_val_top1"] == max(100 * e["val_top1/full"] for e in epochs)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "epochs.jsonl").write_text("")
    for argv, message in [
        ([str(tmp_path)], f"{tmp_path}: no epochs.jsonl (not a deps train run directory?)"),
        ([str(tmp_path / "empty")], "no finished epoch yet"),
        ([str(full), str(full)], "a run is given twice"),
        ([str(full), "--out", str(tmp_path)], "is a directory; give the PNG's path"),
    ]:
        assert main(["curves", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_compare_tabulates_fronts_against_cost_and_names_what_differs(full_run, tmp_path, capsys):
    from deps_core.cli import main

    full, _ = full_run
    report = json.loads((full / "report.json").read_text())
    pareto, cost = report["pareto"], report["cost"]
    assert cost["device_name"].startswith("cpu: ")  # what the device-hours were spent on
    # the training MACs: every term's forward and backward (3 forwards) on every image of every step's plan
    from deps_core.macs import subnet_macs

    config = ExperimentConfig.from_dict(report["config"])
    spec = space_spec(config.model.space, **config.model.space_kwargs())
    steps = 384 // 32
    by_phase = {}
    for epoch in range(3):
        for step in range(steps):
            plan = build_strategy(config, spec).plan(Progress(epoch, step, steps), config.run.seed)
            macs = sum(3 * subnet_macs(spec, t.arch, num_classes=10, resolution=16) * 32 for t in plan.terms)
            by_phase[plan.phase] = by_phase.get(plan.phase, 0) + macs
    assert cost["train_macs_by_phase"] == by_phase and cost["train_macs"] == sum(by_phase.values())
    assert f"training MACs (forward + backward): {cost['train_macs'] / 1e9:.3g}G\n" in full_run[1].stdout

    def variant(name: str, **changes) -> Path:
        r = json.loads(json.dumps(report))
        for path, value in changes.items():
            *keys, last = path.split("__")
            d = r
            for k in keys:
                d = d[int(k)] if isinstance(d, list) else d[k]
            d[last] = value
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(r))
        return tmp_path / name

    other = variant(
        "other",
        cost__device_hours=2 * cost["device_hours"],
        cost__device_name="cuda: NVIDIA H100",
        cost__train_macs=3 * cost["train_macs"],
        pareto__mean_pareto_accuracy=pareto["mean_pareto_accuracy"] - 0.05,
        pareto__buckets__0__best__top1=0.123,
        config__data__synthetic_val_size=999,
        config__method__name="bignas",
    )
    png, summary = tmp_path / "cmp.png", tmp_path / "cmp.json"
    assert main(["compare", str(full), str(other), "--out", str(png), "--json", str(summary)]) == 0
    out = capsys.readouterr().out
    figures = json.loads(summary.read_text())
    assert [r["run"] for r in figures["runs"]] == ["full", "other"] and figures["notes"] == [
        line[len("note: ") :] for line in out.splitlines() if line.startswith("note: ")
    ]
    theirs = figures["runs"][1]
    assert theirs["hours_ratio"] == pytest.approx(2.0) and theirs["macs_ratio"] == pytest.approx(3.0)
    assert theirs["mean_pareto_delta"] == pytest.approx(-0.05) and theirs["method"] == "bignas"
    assert figures["buckets"]["top1"]["other"][0] == 0.123 and len(figures["buckets"]["ranges"]) == 6
    lines = out.splitlines()
    minutes = f"{cost['train_seconds'] / 60 / 3:.3g}"
    assert lines[2].split()[:6] == ["full", "deps", "3", minutes, f"{cost['device_hours']:.4g}", "1.00×"]
    assert lines[3].split()[:10] == [
        "other",
        "bignas",
        "3",
        minutes,
        f"{2 * cost['device_hours']:.4g}",
        "2.00×",
        f"{3 * cost['train_macs'] / 1e9:.3g}G",
        "3.00×",
        f"{100 * pareto['mean_pareto_accuracy'] - 5:.2f}",
        "-5.00",
    ]
    n = round(
        (pareto["macs_range"][1] - pareto["macs_range"][0]) / (pareto["buckets"][0]["hi"] - pareto["buckets"][0]["lo"])
    )
    per_bucket = {b["bucket"]: f"{100 * b['best']['top1']:.2f}" for b in pareto["buckets"]}
    assert lines[5] == "best top-1 % per MAC bucket (MMACs)" and len(lines[6].split()) == n + 1
    assert lines[8].split() == ["full"] + [per_bucket.get(i, "-") for i in range(n)]
    assert lines[9].split()[:2] == ["other", "12.30"]
    assert "note: other was evaluated on other data than full: data.synthetic_val_size 999 (not 128)" in out
    assert f"note: device-hours of different devices (full: {cost['device_name']}, other: cuda: NVIDIA H100)" in out
    assert png.read_bytes()[:4] == b"\x89PNG"

    wide = variant("wide", pareto__macs_range=[pareto["macs_range"][0], 2 * pareto["macs_range"][1]])
    assert main(["compare", str(full), str(wide), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "per MAC bucket" not in out and "is an area over each run's own MAC range, and these differ" in out

    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "report.json").write_text(json.dumps({"cost": cost, "history": []}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{")
    for argv, message in [
        ([str(tmp_path)], f"{tmp_path}: no report.json (not a finished deps train run, nor a deps eval output)"),
        ([str(tmp_path / "unfinished")], "its report has no Pareto front (the run's final evaluation did not run"),
        ([str(tmp_path / "broken")], "report.json is not JSON"),
        ([str(full), str(full) + "/"], "a run is given twice"),
        ([str(full), "--out", str(tmp_path)], f"--out {tmp_path} is a directory; give the file's path"),
        ([str(full), "--json", str(tmp_path)], f"--json {tmp_path} is a directory; give the file's path"),
    ]:
        assert main(["compare", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_checkpoint_without_the_device_and_mac_counts_resumes_and_counts_from_there():
    # checkpoints written before the cost recorded devices and MACs
    config = apply_overrides(load_preset("default"), ["model.width_mult=0.25", "run.progress=false"])
    batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)))]
    state = Trainer(config, batches, num_classes=10).state_dict()
    for key in ("device_seconds", "macs"):
        del state["cost"][key]
    state["cost"]["seconds"] = {"fm_warmup": 10.0}
    resumed = Trainer(config, batches, num_classes=10)
    resumed.load_state_dict(state)
    resumed._account("fm_warmup", 2.0, 1, 0.0, 5e9)
    cost = resumed.cost_report()
    assert cost["train_seconds"] == 12.0 and cost["train_macs"] == 5e9  # the MACs since the resume
    assert cost["device_name"] == resumed.device_name and resumed.device_name.startswith("cpu: ")


def test_model_zero_init_residual_starts_the_trainers_residual_blocks_at_the_identity():
    batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)))]
    scales = {}
    for flag in ("false", "true"):
        config = apply_overrides(load_preset("default"), ["model.width_mult=0.25", f"model.zero_init_residual={flag}"])
        net = Trainer(config, batches, num_classes=10).supernet
        scales[flag] = {
            b.index: float(net.blocks[b.index].project_bn.weight.detach().abs().sum()) for b in net.spec.blocks
        }
        residual = {b.index for b in net.spec.blocks if b.residual}
    assert all(v > 0 for v in scales["false"].values())
    assert {i for i, v in scales["true"].items() if v == 0} == residual and len(residual) < len(scales["true"])


def test_on_epoch_end_sees_each_finished_epoch_after_its_checkpoint(tmp_path):
    config = apply_overrides(
        load_preset("default"),
        ["model.width_mult=0.25", "model.d_choices=2", "data.batch_size=4", "method.epochs=2", "run.progress=false"],
    )
    seen = []

    def on_epoch_end(trainer: Trainer) -> None:
        saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["progress"]
        seen.append((trainer.epoch, len(trainer.history), saved["epoch"]))

    loader = _SignalledBatches(2, at=-1, signum=signal.SIGINT)  # at -1: never signalled
    Trainer(config, loader, num_classes=10, out_dir=tmp_path, on_epoch_end=on_epoch_end).fit()
    assert seen == [(1, 1, 1), (2, 2, 2)]


def test_rerunning_into_an_existing_run_directory_is_refused(full_run, env):
    out, _ = full_run
    proc = _run(_train_cmd(*TINY, f"run.out_dir={out}"), env)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr


def _ctrl_c(cmd: list[str], env: dict, out: Path, after_steps: int, *, group: bool = False) -> tuple[int, str]:
    """Start ``cmd`` (a ``deps train`` into ``out``, logging every step) as from a terminal and press Ctrl-C once
    ``steps.jsonl`` holds ``after_steps`` lines: to the process, or (``group``) to its process group, as a terminal
    does to a launcher and its workers. Returns the exit code and stderr."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=group,
        # as from a terminal: a suite started in the background inherits an ignored SIGINT, which deps leaves alone
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = out / "steps.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= after_steps:
            os.killpg(proc.pid, signal.SIGINT) if group else proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_ctrl_c_stops_at_a_step_boundary_with_a_checkpoint_and_the_resume_is_bit_identical(full_run, env, tmp_path):
    full, _ = full_run
    out = tmp_path / "interrupted"
    # one command, run again as a requeued job would be: --auto-resume starts the run, then continues it
    command = _train_cmd(*TINY, f"run.out_dir={out}", "--auto-resume")
    # into the shrinking phase, between two periodic checkpoints (every 3 steps)
    code, err = _ctrl_c(command, env, out, 14)
    assert code == 130, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert message.startswith("deps train: stopped by SIGINT at epoch ") and f"--resume {out}" in message, message
    position = json.loads((out / "checkpoints" / "last.json").read_text())
    done = [json.loads(line)["global_step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert position["global_step"] == done[-1] + 1  # the checkpoint holds every step that ran, not the last periodic
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"  # drawn at the end of epoch 0, before the stop
    other = _run([*command, "optim.lr=0.1"], env)
    assert other.returncode == 2, other.stderr[-3000:]
    assert f"--auto-resume: {out} holds a run of another config (optim.lr: 0.05 there, 0.1 here)" in other.stderr
    resumed = _run([*command, "run.checkpoint_every=5"], env)  # what --resume may change, it may change here too
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-3000:]
    a, b = _model(full), _model(out)
    assert all(torch.equal(a[k], b[k]) for k in a), f"the resume from {position} differs"


class _SignalledBatches:
    """Random batches as a loader that raises ``signum`` in this process just before it yields batch ``at`` of
    epoch 0 (as if Ctrl-C came during that step)."""

    def __init__(self, steps: int, at: int, signum: int):
        g = torch.Generator().manual_seed(0)
        self.batches = [
            (torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(steps)
        ]
        self.at, self.signum = at, signum

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int, start_step: int = 0):
        for i, batch in enumerate(self.batches[start_step:], start_step):
            if epoch == 0 and i == self.at:
                signal.raise_signal(self.signum)
            yield batch


@pytest.mark.parametrize(
    "at, signum, stop",
    [(1, signal.SIGINT, (0, 2)), (2, signal.SIGTERM, (1, 0))],  # mid-epoch; in the epoch's last step
    ids=["mid_epoch", "last_step"],
)
def test_a_signal_stops_the_loop_at_the_next_step_boundary_with_its_checkpoint(tmp_path, at, signum, stop):
    def outside(signum, frame):  # what the test process does with a signal the loop did not take
        raise AssertionError(f"{signal.Signals(signum).name} reached the handler outside the training loop")

    before = {s: signal.signal(s, outside) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        config = apply_overrides(
            load_preset("default"),
            ["model.width_mult=0.25", "model.d_choices=2", "data.batch_size=4", "data.resolution=8", "method.epochs=2",
             "method.p_fm=0", "method.k=2", "run.progress=false", "run.checkpoint_every=100"],
        )  # fmt: skip
        trainer = Trainer(config, _SignalledBatches(3, at, signum), num_classes=10, ctx=DistContext(), out_dir=tmp_path)
        with pytest.raises(TrainingStopped) as info:
            trainer.fit()
        name = signal.Signals(signum).name
        assert str(info.value).startswith(f"stopped by {name} at epoch {stop[0]}, step {stop[1]}, saved in ")
        assert info.value.signum == signum
        state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
        assert (state["progress"]["epoch"], state["progress"]["step"]) == stop
        assert signal.getsignal(signal.SIGINT) is outside and signal.getsignal(signal.SIGTERM) is outside  # restored
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_a_second_ctrl_c_stops_at_once_unless_it_is_a_launchers_copy_of_the_first():
    before = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = _StopRequest(announce=False, repeat_window=0.5)
        with stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.signum == signal.SIGTERM
            signal.raise_signal(signal.SIGTERM)  # a scheduler's repeat: still the same request
            signal.raise_signal(signal.SIGINT)  # within the window: torchrun passing the terminal's Ctrl-C on
            assert stop.signum == signal.SIGTERM
            time.sleep(0.6)
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with _StopRequest(announce=False):  # no window (outside torchrun): the second Ctrl-C stops at once
            signal.raise_signal(signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_the_context_knows_torchrun_started_it(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert not DistContext.from_env("cpu").torchrun
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun --nproc_per_node 1: one process, still its agent
    assert DistContext.from_env("cpu").torchrun and not DistContext.from_env("cpu").distributed


def test_resume_after_sigkill_is_bit_identical(full_run, env, tmp_path):
    full, _ = full_run
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(*TINY, f"run.out_dir={out}"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    side = out / "checkpoints" / "last.json"
    deadline = time.time() + 600
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if side.exists():
            try:
                pos = json.loads(side.read_text())
            except ValueError:
                pos = None
            # mid-epoch, after shrinking (and the channel re-organization) started
            if pos and pos["epoch"] >= 1 and pos["step"] > 0 and pos["global_step"] >= 18:
                proc.send_signal(signal.SIGKILL)
                killed_at = pos
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run ended before it could be killed"
    resumed = _run(_train_cmd("--resume", str(out)), env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    a, b = _model(full), _model(out)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume at {killed_at}"
    sa = load_checkpoint(full / "checkpoints" / "last.pt")
    sb = load_checkpoint(out / "checkpoints" / "last.pt")
    assert sb["strategy_state"]["reorganized"] == ["shrink"]  # sorted once, never again after the resume
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    steps = [json.loads(line)["global_step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(len(steps)))  # the log continues without duplicates


def test_two_gloo_processes_match_one_process_with_the_same_global_batch_and_a_run_moves_between_them(
    env, tmp_path, capsys
):
    one, two, moved = tmp_path / "one", tmp_path / "two", tmp_path / "moved"
    common = [*TINY, "method.epochs=2", "run.eval_archs=0", "run.device=cpu"]
    env = env | {"TMPDIR": str(tmp_path)}  # torchrun's torchelastic_* folder goes with tmp_path
    single = _run(_train_cmd(*common, f"run.out_dir={one}", "run.grad_accum=2"), env)
    assert single.returncode == 0, single.stderr[-3000:]
    double = _run(_torchrun("-m", "deps_core.cli", "train", *common, f"run.out_dir={two}"), env)
    assert double.returncode == 0, double.stderr[-3000:]
    a, b = _model(one), _model(two)
    params = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    worst = max((a[k] - b[k]).abs().max().item() for k in params)
    assert worst <= 1e-5, worst
    bn = max((a[k] - b[k]).abs().max().item() for k in a if k.endswith("running_mean"))
    assert bn > 0  # BN statistics are per rank (each saw half the batch): only the weights must agree

    # one process with 2 micro-batches, stopped mid-epoch 1, goes on as 2 processes with 1 each: the same arithmetic
    code, err = _ctrl_c(_train_cmd(*common, f"run.out_dir={moved}", "run.grad_accum=2"), env, moved, 14)
    assert code == 130, err[-3000:]
    assert main(["train", "--resume", str(moved), "model.width_mult=0.5"]) == 2  # refused before any setting
    message = "model.width_mult cannot change when a run resumes (it would change what the run"
    assert message in capsys.readouterr().err
    proc = _run(_train_cmd("--resume", str(moved), "run.grad_accum=1"), env)  # refused once the checkpoint is read
    message = "split each batch over processes × run.grad_accum = 2, this one over 1 × 1: resume"
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-3000:]
    resumed = _run(_torchrun("-m", "deps_core.cli", "train", "--resume", str(moved), "run.grad_accum=1"), env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((moved / "config.json").read_text())["run"]["grad_accum"] == 1  # the run's config says so now
    c = _model(moved)
    worst = max((a[k] - c[k]).abs().max().item() for k in params)
    assert worst <= 1e-5, worst


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def test_under_torchrun_an_input_error_shows_once_and_a_rank_alone_with_one_still_says_it(env, tmp_path, monkeypatch):
    # every rank reads the same command line, so every rank meets it; torchrun ends rank 1 within its grace
    proc = _run(_torchrun("-m", "deps_core.cli", "train", "model.bogus=1"), env | {"TMPDIR": str(tmp_path)})
    assert proc.returncode != 0 and "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("deps train: error: unknown key 'model.bogus'") == 1, proc.stderr[-3000:]
    # a rank other than 0 whose error is its alone (rank 0 did not exit) prints it after the grace
    monkeypatch.setattr("deps_core.cli.ERROR_GRACE", 0.01)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", "1")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["train", "model.bogus=1"]) == 2
    assert err.getvalue().startswith("deps train: error: unknown key 'model.bogus'")


@pytest.mark.parametrize("mode", ["nan", "sigterm"])
def test_every_rank_stops_after_the_same_step_when_one_rank_meets_a_nan_or_a_signal(env, tmp_path, mode):
    worker = Path(__file__).with_name("_two_ranks.py")  # rank 1 alone meets it, in step 1 of 4
    proc = _run(_torchrun(str(worker), mode, str(tmp_path)), env | {"TMPDIR": str(tmp_path)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    if mode == "nan":  # rank 0's own loss is finite: it learns of rank 1's from the step's reduction, not a hang
        assert r0["raised"] == r1["raised"] == "NonFiniteLoss"
        assert r0["message"].startswith("non-finite loss at epoch 0 step 1 (global step 1) on rank 1, term 0 (full")
        assert r1["message"].startswith("non-finite loss nan at epoch 0 step 1 (global step 1) on rank 1, term 0 (")
        assert r0["position"] == r1["position"] == [0, 1]  # no update was made with it
    else:
        assert r0["raised"] == r1["raised"] == "TrainingStopped"
        assert r0["message"].startswith("stopped by SIGTERM at epoch 0, step 2, saved in ")
        assert r0["position"] == r1["position"] == [0, 2]
        state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
        assert (state["progress"]["epoch"], state["progress"]["step"]) == (0, 2)
        assert len(state["rng"]["ranks"]) == 2 and not torch.equal(*(r["torch"] for r in state["rng"]["ranks"]))


def test_ctrl_c_under_torchrun_stops_both_ranks_with_a_checkpoint_and_the_resume_is_bit_identical(env, tmp_path):
    # dropout on: the ranks draw different masks, so the resume must give each rank its own RNG state back
    common = [*TINY, "method.epochs=2", "model.dropout=0.2", "run.eval_archs=0", "run.device=cpu"]
    common += ["run.checkpoint_every=1000"]  # within an epoch, only the stop saves
    env = env | {"TMPDIR": str(tmp_path)}
    full, out = tmp_path / "full", tmp_path / "interrupted"
    done = _run(_torchrun("-m", "deps_core.cli", "train", *common, f"run.out_dir={full}"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    # mid-epoch 1, in the shrinking phase; Ctrl-C reaches torchrun and both ranks, then torchrun sends each its own
    train = _torchrun("-m", "deps_core.cli", "train", *common, f"run.out_dir={out}")
    code, err = _ctrl_c(train, env, out, 14, group=True)
    assert code != 0, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("deps train: stopped by SIGINT at epoch ")]
    assert len(stopped) == 1 and f"--resume {out}" in stopped[0], err[-3000:]  # rank 0 says it, once
    assert "deps train: interrupted" not in err, err[-3000:]  # no rank took torchrun's SIGINT for a second Ctrl-C
    position = json.loads((out / "checkpoints" / "last.json").read_text())
    logged = [json.loads(line)["global_step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert position["global_step"] == logged[-1] + 1 and position["step"] > 0
    resumed = _run(_torchrun("-m", "deps_core.cli", "train", "--resume", str(out)), env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _model(full), _model(out)
    assert all(torch.equal(a[k], b[k]) for k in a), f"the resume from {position} differs"


def test_nan_loss_stops_naming_step_term_and_arch_and_keeps_the_checkpoint(env, tmp_path):
    out = tmp_path / "nan"
    proc = _run(
        _train_cmd(*TINY, f"run.out_dir={out}", "optim.lr=1e6", "optim.lr_batch=32", "run.checkpoint_every=1"), env
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert "non-finite loss" in message and "epoch 0 step" in message and "term 0 (full" in message
    assert "ofa_mbv3_32@32[" in message and "last.pt" in message
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.dtype.is_floating_point)


def test_corrupt_checkpoint_is_a_clear_error_naming_the_file(full_run, env, tmp_path):
    out = tmp_path / "corrupt"
    (out / "checkpoints").mkdir(parents=True)
    good = (full_run[0] / "checkpoints" / "last.pt").read_bytes()
    (out / "checkpoints" / "last.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt is truncated or corrupt \(not a complete PyTorch zip"):
        load_checkpoint(out / "checkpoints" / "last.pt")
    torch.save({"format": "x", "obj": Path("a")}, tmp_path / "foreign.pt")  # a pickle weights_only refuses
    with pytest.raises(CheckpointError, match=r"foreign\.pt is not a deps checkpoint: it holds objects other than"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": "x"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt is not a deps checkpoint \(format"):
        load_checkpoint(tmp_path / "other.pt")
    proc = _run(_train_cmd("--resume", str(out)), env)
    assert proc.returncode == 2 and "last.pt is truncated or corrupt" in proc.stderr
    (out / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint at all")
    proc = _run(_train_cmd("--resume", str(out)), env)
    assert proc.returncode == 2 and str(out / "checkpoints" / "last.pt") in proc.stderr


def test_eval_command_recalibrates_and_writes_the_pareto_report(full_run, env, tmp_path):
    out, _ = full_run
    (tmp_path / "a").mkdir()  # the run's data as .beton files, as a job that copies them to its node's scratch has
    for split, n in (("train", 384), ("val", 128)):
        (beton,) = (Path(env["DEPS_CACHE"]) / "synthetic").glob(f"synthetic-*-n{n}-s0-{split}.beton")
        shutil.copy(beton, tmp_path / "a" / f"{split}.beton")

    def evaluate(where: str) -> subprocess.CompletedProcess:
        data = [f"data.{split}={tmp_path / where / f'{split}.beton'}" for split in ("train", "val")]
        args = ["--archs", "3", "--out", str(tmp_path / "eval"), "--overlay", f"again={out / 'subnets.json'}"]
        cmd = [sys.executable, "-m", "deps_core.cli", "eval", "--checkpoint", str(out), *args, "data.source=beton"]
        return _run([*cmd, *data], env)

    proc = evaluate("a")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mean pareto accuracy" in proc.stdout
    results = json.loads((tmp_path / "eval" / "subnets.json").read_text())
    assert len(results) >= 3 and all(0 <= r["top1"] <= 1 for r in results)
    assert (tmp_path / "eval" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # the next job's scratch is elsewhere: the results are keyed by what the data files hold, not where they lie
    (tmp_path / "a").rename(tmp_path / "b")
    again = evaluate("b")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"reusing {len(results)} evaluated subnets" in again.stderr
    assert json.loads((tmp_path / "eval" / "subnets.json").read_text()) == results
    # deps compare reads the evaluation beside the run: the same checkpoint, so the same cost and MAC range
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    trained = json.loads((out / "report.json").read_text())
    assert report["cost"] == trained["cost"] and report["trained_epochs"] == len(trained["history"]) == 3
    assert report["config"]["data"]["source"] == "beton" and report["checkpoint"].endswith("last.pt")
    png = tmp_path / "cmp.png"
    proc = _run(
        [sys.executable, "-m", "deps_core.cli", "compare", str(out), str(tmp_path / "eval"), "--out", str(png)], env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = proc.stdout.splitlines()
    minutes = f"{report['cost']['train_seconds'] / 60 / 3:.3g}"
    assert rows[3].split()[:6] == ["eval", "deps", "3", minutes, f"{report['cost']['device_hours']:.4g}", "1.00×"]
    assert rows[3].split()[7:9] == ["1.00×", f"{100 * report['mean_pareto_accuracy']:.2f}"]
    assert "note: eval was evaluated on other data than full: data.source 'beton' (not 'synthetic')" in proc.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_under_torchrun_gives_the_one_process_accuracies(full_run, env, tmp_path):
    # every rank calibrates BN on the same images and evaluates its shard of the validation set; 127 images: shards
    # of 64 and 63, none padded or repeated
    out, _ = full_run
    args = ["eval", "--checkpoint", str(out), "--archs", "2", "data.synthetic_val_size=127", "run.device=cpu"]
    one = _run([sys.executable, "-m", "deps_core.cli", *args, "--out", str(tmp_path / "one")], env)
    assert one.returncode == 0, one.stderr[-3000:]
    # as if an earlier evaluation had stopped after the first subnet: every rank skips it (rank 0 read the results)
    (log,) = (tmp_path / "one").glob("subnets-*.jsonl")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / log.name).write_text("".join(log.read_text().splitlines(keepends=True)[:2]))
    two = _run(_torchrun("-m", "deps_core.cli", *args, "--out", str(tmp_path / "two")), env | {"TMPDIR": str(tmp_path)})
    assert two.returncode == 0, two.stderr[-3000:]
    assert f"reusing 1 evaluated subnets from {tmp_path / 'two' / log.name}" in two.stderr
    a, b = (json.loads((tmp_path / d / "subnets.json").read_text()) for d in ("one", "two"))
    assert [r["arch"] for r in a] == [r["arch"] for r in b] and len(a) == 4
    logged = [json.loads(line) for line in (tmp_path / "two" / log.name).read_text().splitlines()]
    assert [r["arch"] for r in logged[1:]] == [r["arch"] for r in a]  # rank 0 logged the other three, once each
    for ra, rb in zip(a, b):
        assert (ra["top1"], ra["top5"]) == (rb["top1"], rb["top5"])  # counts over 127 images: exact
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
    assert {round(r["top1"] * 127, 6) % 1 for r in a} == {0.0}  # fractions of 127 images


def test_export_writes_a_static_subnet_and_onnx_that_match_the_supernet(full_run, env, tmp_path):
    import onnx

    from deps_core.checkpoint import supernet_from_checkpoint
    from deps_core.export import load_static

    out, _ = full_run
    proc = _run(
        [
            sys.executable,
            "-m",
            "deps_core.cli",
            "export",
            "--checkpoint",
            str(out),
            "--arch",
            "min",
            "--format",
            "torch",
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "min"),
            "--no-calibrate",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    static = load_static(tmp_path / "min")
    net, _ = supernet_from_checkpoint(out)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(static(x), net.eval()(x, net.min_arch()), atol=1e-5, rtol=1e-5)
    graph = onnx.load(str(tmp_path / "min" / "subnet.onnx"))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input][:1] == ["images"]
    bad = _run(
        [
            sys.executable,
            "-m",
            "deps_core.cli",
            "export",
            "--checkpoint",
            str(out),
            "--arch",
            '{"space": "x"}',
            "--out",
            str(tmp_path / "bad"),
        ],
        env,
    )
    assert bad.returncode == 2 and "exactly the keys" in bad.stderr
