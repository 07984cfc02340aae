"""Experiment configuration: frozen attrs classes validated at construction, presets as data, ``key=value`` overrides.

An :class:`ExperimentConfig` has five parts — ``model``, ``data``, ``optim``, ``method``, ``run`` — each a frozen
value. ``ExperimentConfig.from_dict`` builds one from nested dicts (a preset's JSON, a ``--config`` file, a
checkpoint), rejecting unknown keys; :func:`apply_overrides` applies ``section.field=value`` strings, parsing each
value by the field's type. Every invalid value raises ``ValueError`` naming the field and what it allows.

Presets live in ``deps_core/presets/*.json`` as overrides of the defaults below; ``list_presets()`` names them.
"""

from __future__ import annotations

import json
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "MethodConfig",
    "RunConfig",
    "ExperimentConfig",
    "apply_overrides",
    "list_presets",
    "load_preset",
    "METHODS",
    "METHOD_FIELDS",
    "check_config_file_methods",
    "DATA_SOURCES",
    "EVAL_SAMPLERS",
    "OPTIMIZERS",
    "OPTIM_FIELDS",
    "LR_SCHEDULES",
    "SCHEDULE_FIELDS",
]

METHODS = ("deps", "ofa", "bignas", "compofa")
# the method.* fields each method reads (deps_core.trainer.build_strategy); the others are ignored by it
METHOD_FIELDS = {
    "deps": ("epochs", "p_fm", "k", "ramp_epochs", "eps_form", "eps_start", "all_uniform", "subnet_loss",
             "subnet_bn_stats", "reorganize", "grad_clip_value"),
    "bignas": ("epochs", "k", "subnet_bn_stats", "grad_clip_value"),
    "ofa": ("phases", "phase_warmup_epochs", "grad_clip_value"),
    "compofa": ("phases", "phase_warmup_epochs", "k", "compound_fixed_kernels", "grad_clip_value"),
}  # fmt: skip
OPTIMIZERS = ("sgd", "adamw", "rmsprop")
# the optim.* fields that some optimizers read and others not (deps_core.trainer's _optimizer); the other optim fields
# apply to all
OPTIM_FIELDS = {"sgd": ("momentum", "nesterov"), "adamw": ("betas",), "rmsprop": ("momentum", "rms_decay", "rms_eps")}
LR_SCHEDULES = ("cosine", "exponential")
# the optim.* fields only one learning-rate schedule reads (deps_core.schedules.lr_schedule)
SCHEDULE_FIELDS = {"cosine": ("final_lr",), "exponential": ("lr_decay", "lr_decay_epochs", "lr_floor")}
DATA_SOURCES = ("synthetic", "beton", "imagefolder")
EVAL_SAMPLERS = ("buckets", "uniform")  # deps_core.evaluate.eval_archs


def _one_of(choices):
    def check(_inst, attribute, value):
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {list(choices)}; got {value!r}")

    return check


def _interval(lo: float, hi: float = math.inf, *, open_lo: bool = False, open_hi: bool = False):
    """A validator for a finite number in the interval from ``lo`` to ``hi`` (open at either end as asked)."""
    if hi == math.inf:
        allowed = f"be a finite number {'>' if open_lo else '>='} {lo}"
    else:
        allowed = f"lie in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"

    def check(_inst, attribute, value):
        number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not number or value < lo or value > hi or (open_lo and value == lo) or (open_hi and value == hi):
            raise ValueError(f"{attribute.name} must {allowed}; got {value!r}")

    return check


def _at_least(lo, *, optional: bool = False):
    number = _interval(lo)

    def check(inst, attribute, value):
        if value is None and optional:
            return
        number(inst, attribute, value)

    return check


def _fraction(_inst, attribute, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must lie in [0, 1]; got {value!r}")


def _int_tuple_or_none(value):
    if value is None:
        return None
    if isinstance(value, (int, str)):
        value = [value]
    return tuple(int(v) for v in value)


@attrs.frozen
class ModelConfig:
    """The supernet: a registered space, optionally narrowed (``ks_choices`` etc.) or rescaled (``width_mult``)."""

    space: str = "ofa_mbv3_32"
    width_mult: float | None = attrs.field(default=None, validator=_at_least(0.05, optional=True))
    ks_choices: tuple[int, ...] | None = attrs.field(default=None, converter=_int_tuple_or_none)
    e_choices: tuple[int, ...] | None = attrs.field(default=None, converter=_int_tuple_or_none)
    d_choices: tuple[int, ...] | None = attrs.field(default=None, converter=_int_tuple_or_none)
    kernel_transform: bool = True
    zero_init_residual: bool = False
    dropout: float | None = attrs.field(default=None, validator=attrs.validators.optional(_fraction))
    bn_momentum: float | None = attrs.field(default=None, validator=attrs.validators.optional(_fraction))

    def __attrs_post_init__(self) -> None:
        from deps_core.spaces import list_spaces, space_spec

        if self.space not in list_spaces():
            raise ValueError(f"space must be one of {list_spaces()}; got {self.space!r}")
        space_spec(self.space, **self.space_kwargs())  # choices outside the space: checked here, not at training

    def space_kwargs(self) -> dict[str, Any]:
        kw = {
            "width_mult": self.width_mult,
            "ks_choices": self.ks_choices,
            "e_choices": self.e_choices,
            "d_choices": self.d_choices,
            "dropout": self.dropout,
            "bn_momentum": self.bn_momentum,
        }
        return {k: v for k, v in kw.items() if v is not None}


@attrs.frozen
class DataConfig:
    """Where batches come from and how they are augmented.

    ``source``: ``synthetic`` (the bundled generated dataset, ``synthetic_classes`` × ``synthetic_resolution``),
    ``beton`` (``train``/``val`` are .beton files) or ``imagefolder`` (torchvision fallback over folders).
    ``batch_size`` is global (split across ranks). ``resolution``: one size, or several for OFA's elastic resolution
    (a per-batch draw). ``holdout``: training images kept out of training (drawn by a permutation seeded with
    ``holdout_seed``, see :class:`deps_loaders.HoldOut`) for ``deps search --accuracy eval`` to measure accuracy on
    images the supernet never trained on (OFA holds out 10,000 ImageNet training images); 0 trains on all of them.
    """

    source: str = attrs.field(default="synthetic", validator=_one_of(DATA_SOURCES))
    train: str | None = None
    val: str | None = None
    num_classes: int | None = attrs.field(default=None, validator=_at_least(2, optional=True))
    synthetic_classes: int = attrs.field(default=10, validator=_one_of((10, 100)))
    synthetic_resolution: int = attrs.field(default=32, validator=_one_of((32, 64)))
    synthetic_train_size: int = attrs.field(default=10_000, validator=_at_least(1))
    synthetic_val_size: int = attrs.field(default=2_000, validator=_at_least(1))
    batch_size: int = attrs.field(default=64, validator=_at_least(1))
    val_batch_size: int = attrs.field(default=256, validator=_at_least(1))
    resolution: tuple[int, ...] = attrs.field(default=(32,), converter=_int_tuple_or_none)
    val_resolution: int | None = attrs.field(default=None, validator=_at_least(8, optional=True))
    num_workers: int | None = attrs.field(default=None, validator=_at_least(1, optional=True))
    scale: tuple[float, float] = attrs.field(default=(0.35, 1.0), converter=tuple)
    auto_augment: str | None = None
    color_distortion: bool = False
    random_erasing: float = attrs.field(default=0.0, validator=_fraction)
    mixup_alpha: float = attrs.field(default=0.0, validator=_at_least(0.0))
    cutmix_alpha: float = attrs.field(default=0.0, validator=_at_least(0.0))
    holdout: int = attrs.field(default=0, validator=_at_least(0))
    holdout_seed: int = attrs.field(default=0, validator=_at_least(0))

    def __attrs_post_init__(self) -> None:
        if self.source != "synthetic" and (self.train is None or self.val is None):
            raise ValueError(f"data.train and data.val are required for source {self.source!r}")
        if self.source == "synthetic" and (self.train is not None or self.val is not None):
            given = " and ".join(
                f"data.{k}={v}" for k, v in (("train", self.train), ("val", self.val)) if v is not None
            )
            raise ValueError(
                f"{given} would be ignored because data.source is 'synthetic' (the bundled dataset): set "
                "data.source=beton or imagefolder, or unset them (data.train=none data.val=none)"
            )
        if self.source == "synthetic" and self.holdout >= self.synthetic_train_size:
            raise ValueError(
                f"data.holdout={self.holdout} holds out all {self.synthetic_train_size} synthetic training images "
                "(data.synthetic_train_size); hold out fewer"
            )
        if not self.resolution or any(r < 8 for r in self.resolution):
            raise ValueError(f"resolution must be one or more sizes >= 8; got {self.resolution}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must be a pair 0 < lo <= hi <= 1; got {self.scale}")


@attrs.frozen
class OptimConfig:
    """The optimizer and its schedule; ``lr`` is the peak rate for ``lr_batch`` images, scaled linearly to the global
    batch. ``name``: ``sgd`` (momentum, Nesterov: what OFA, BigNAS outside ImageNet and DεpS train with), ``adamw``
    (``torch.optim.AdamW`` with ``betas``; its decoupled weight decay is ``lr · weight_decay`` per step) or ``rmsprop``
    (TensorFlow's form, :class:`deps_core.optim.RMSpropTF`: ``momentum``, mean-square decay ``rms_decay``, ``rms_eps``
    under the root; BigNAS's ImageNet optimizer, whose 0.9, 0.9 and 1e-3 are the defaults). Weight decay skips
    parameters whose names contain any of ``no_decay`` (OFA's ``bn#bias``); under SGD and RMSProp it is added to the
    gradient. Under AdamW DεpS's ε still sets the subnets' share of each weight the full model also uses, but a
    parameter only subnets reach (OFA's kernel transform matrices) takes about the same step whatever ε is (while
    ε · gradient stays well above AdamW's ``eps`` of 1e-8), since Adam normalises each coordinate's gradient by its own
    running size.

    ``schedule``: ``cosine`` (after ``warmup_epochs`` of linear warm-up from 0, cosine to ``final_lr``) or
    ``exponential`` (after the warm-up, ``× lr_decay`` every ``lr_decay_epochs`` epochs, held at ``lr_floor`` of the
    peak: BigNAS's "exponentially decaying with constant ending"; the defaults are the DεpS code's BigNAS values, 0.973
    every 2 epochs down to 5 %)."""

    name: str = attrs.field(default="sgd", validator=_one_of(OPTIMIZERS))
    schedule: str = attrs.field(default="cosine", validator=_one_of(LR_SCHEDULES))
    lr: float = attrs.field(default=0.1625, validator=_at_least(0.0))
    lr_batch: int = attrs.field(default=128, validator=_at_least(1))
    momentum: float = attrs.field(default=0.9, validator=_fraction)
    nesterov: bool = True
    weight_decay: float = attrs.field(default=3e-5, validator=_at_least(0.0))
    no_decay: tuple[str, ...] = ("bn", "bias")
    warmup_epochs: int = attrs.field(default=0, validator=_at_least(0))
    final_lr: float = attrs.field(default=0.0, validator=_at_least(0.0))
    lr_decay: float = attrs.field(default=0.973, validator=_interval(0.0, 1.0, open_lo=True))
    lr_decay_epochs: float = attrs.field(default=2.0, validator=_interval(0.0, open_lo=True))
    lr_floor: float = attrs.field(default=0.05, validator=_fraction)
    grad_clip_norm: float | None = attrs.field(default=None, validator=_at_least(0.0, optional=True))
    label_smoothing: float = attrs.field(default=0.1, validator=_fraction)
    kd_temperature: float = attrs.field(default=1.0, validator=_at_least(1e-3))
    kd_ratio: float = attrs.field(default=1.0, validator=_at_least(0.0))
    betas: tuple[float, ...] = attrs.field(default=(0.9, 0.999), converter=tuple)
    rms_decay: float = attrs.field(default=0.9, validator=_interval(0.0, 1.0, open_hi=True))
    rms_eps: float = attrs.field(default=1e-3, validator=_interval(0.0, open_lo=True))

    @betas.validator
    def _check_betas(self, attribute, value) -> None:
        if len(value) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in value
        ):
            raise ValueError(f"betas must be two numbers in [0, 1); got {list(value)}")


@attrs.frozen
class MethodConfig:
    """The once-for-all method and its knobs (see :mod:`deps_core.strategies`).

    ``epochs``: total epochs for ``deps``/``bignas``. ``phases``: OFA's six phase lengths (full, kernel, depth 1,
    depth 2, expand 1, expand 2; warm-up epochs come on top of phases 2, 4 and 6) or CompOFA's three (full, compound
    1, compound 2 + warm-up).
    """

    name: str = attrs.field(default="deps", validator=_one_of(METHODS))
    epochs: int = attrs.field(default=20, validator=_at_least(1))
    phases: tuple[int, ...] | None = attrs.field(default=None, converter=_int_tuple_or_none)
    phase_warmup_epochs: int = attrs.field(default=5, validator=_at_least(0))
    p_fm: float = attrs.field(default=0.5, validator=_fraction)
    k: int = attrs.field(default=4, validator=_at_least(1))
    ramp_epochs: float = attrs.field(default=5.0, validator=_at_least(0.0))
    eps_form: str = attrs.field(default="paper", validator=_one_of(("paper", "lr_matched", "none")))
    eps_start: float = attrs.field(default=1e-4, validator=_fraction)
    all_uniform: bool = False
    subnet_loss: str = attrs.field(default="inplace_kd", validator=_one_of(("inplace_kd", "ce")))
    subnet_bn_stats: bool = True
    reorganize: bool = False
    grad_clip_value: float | None = attrs.field(default=None, validator=_at_least(0.0, optional=True))
    compound_fixed_kernels: bool = True

    def __attrs_post_init__(self) -> None:
        need = {"ofa": 6, "compofa": 3}.get(self.name)
        if self.phases is not None and need is None:
            raise ValueError(f"method.phases applies to 'ofa' (6 values) and 'compofa' (3 values), not {self.name!r}")
        if need is not None and self.phases is not None and len(self.phases) != need:
            raise ValueError(f"method.phases for {self.name!r} needs {need} values; got {list(self.phases)}")


@attrs.frozen
class RunConfig:
    """Run-level settings: seed, output directory, device and precision, checkpoints, logging, final evaluation.

    ``dw_backend``: the depthwise convolution (``auto``: the Triton kernel on CUDA, torch elsewhere).
    ``fuse_dw_grad``: with the Triton backend, the depthwise weight-gradient kernel adds each term's ε-weighted
    gradient straight into the accumulator (see :func:`deps_core.step.functional_step`); off by default until its
    speed has been measured on a GPU (bench/RESULTS.md).
    ``fuse_dw_bn_act``: with the Triton backend, each depthwise conv, its BN and activation run as one op
    (``deps_kernels.dwconv_bn_act``: BN statistics from the conv's epilogue); off by default for the same reason.
    """

    seed: int = attrs.field(default=0, validator=_at_least(0))
    out_dir: str = "runs/default"
    device: str = attrs.field(default="auto", validator=_one_of(("auto", "cpu", "cuda")))
    amp: str = attrs.field(default="auto", validator=_one_of(("auto", "bf16", "none")))
    channels_last: str = attrs.field(default="auto", validator=_one_of(("auto", "on", "off")))
    grad_accum: int = attrs.field(default=1, validator=_at_least(1))
    checkpoint_every: int = attrs.field(default=500, validator=_at_least(1))
    log_every: int = attrs.field(default=10, validator=_at_least(1))
    dw_backend: str = attrs.field(default="auto", validator=_one_of(("auto", "torch", "triton")))
    fuse_dw_grad: bool = False
    fuse_dw_bn_act: bool = False
    tensorboard: bool = False
    wandb: bool = False
    progress: bool = True
    eval_archs: int = attrs.field(default=40, validator=_at_least(0))
    eval_buckets: int = attrs.field(default=6, validator=_at_least(1))
    eval_sampler: str = attrs.field(default="buckets", validator=_one_of(EVAL_SAMPLERS))
    calib_images: int = attrs.field(default=2000, validator=_at_least(1))
    calib_batch: int = attrs.field(default=200, validator=_at_least(1))

    def __attrs_post_init__(self) -> None:
        torch_backend = self.dw_backend == "torch" or self.device == "cpu" and self.dw_backend == "auto"
        for flag in ("fuse_dw_grad", "fuse_dw_bn_act"):
            if getattr(self, flag) and torch_backend:
                raise ValueError(
                    f"run.{flag} needs the Triton depthwise backend; run.dw_backend={self.dw_backend!r} on device "
                    f"{self.device!r} is torch"
                )


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "method": MethodConfig, "run": RunConfig}


@attrs.frozen
class ExperimentConfig:
    model: ModelConfig = attrs.Factory(ModelConfig)
    data: DataConfig = attrs.Factory(DataConfig)
    optim: OptimConfig = attrs.Factory(OptimConfig)
    method: MethodConfig = attrs.Factory(MethodConfig)
    run: RunConfig = attrs.Factory(RunConfig)

    def __attrs_post_init__(self) -> None:
        if self.method.name in ("ofa", "compofa") and self.optim.name != "sgd":
            raise ValueError(
                f"method {self.method.name!r} trains the phases after the full model's at its paper's fixed SGD "
                f"rates, which optim.name={self.optim.name!r} would take as its own: set optim.name=sgd (and an SGD "
                "optim.lr for the full model's phase)"
            )
        if self.data.batch_size % self.run.grad_accum:
            raise ValueError(
                f"data.batch_size={self.data.batch_size} does not split into run.grad_accum={self.run.grad_accum} "
                "equal micro-batches"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: _jsonable(attrs.asdict(getattr(self, name))) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a config is a mapping of sections {list(_SECTIONS)}; got {type(data).__name__}")
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}; sections: {list(_SECTIONS)}")
        parts = {}
        for name, klass in _SECTIONS.items():
            values = data.get(name, {})
            if not isinstance(values, dict):
                raise ValueError(f"config section {name!r} must be a mapping; got {values!r}")
            fields = {f.name for f in attrs.fields(klass)}
            bad = sorted(set(values) - fields)
            if bad:
                raise ValueError(f"unknown key(s) {[f'{name}.{b}' for b in bad]}; {name} has {sorted(fields)}")
            try:
                parts[name] = klass(**values)
            except (ValueError, TypeError) as err:
                msg = str(err)
                raise ValueError(
                    msg if msg.startswith(f"{name}.") or msg.split(" ")[0] not in fields else f"{name}.{msg}"
                ) from None
        return cls(**parts)

    def merged(self, overrides: dict[str, Any]) -> ExperimentConfig:
        """This config with nested ``overrides`` applied (sections merged key by key)."""
        base = self.to_dict()
        for section, values in overrides.items():
            if section not in base:
                raise ValueError(f"unknown config section {section!r}; sections: {list(_SECTIONS)}")
            if not isinstance(values, dict):
                raise ValueError(f"config section {section!r} must be a mapping; got {values!r}")
            base[section] = base[section] | values
        return ExperimentConfig.from_dict(base)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --- key=value overrides ------------------------------------------------------------------------------------------


def _parse(text: str, annotation: str, key: str) -> Any:
    """Parse a command-line value by the field's annotation (attrs stores them as strings here)."""
    hint = annotation.replace(" ", "")
    optional = hint.endswith("|None")
    if optional and text.lower() in ("none", "null", ""):
        return None
    base = hint[: -len("|None")] if optional else hint
    try:
        if base == "bool":
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return low in ("true", "1", "yes", "on")
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        if base == "str":
            return text
        if base.startswith("tuple["):
            inner = "float" if "float" in base else "str" if "str" in base else "int"
            items = [t for t in text.replace("[", "").replace("]", "").split(",") if t.strip()]
            return tuple({"int": int, "float": float, "str": str}[inner](t.strip()) for t in items)
    except ValueError:
        raise ValueError(f"{key}={text!r}: expected {annotation}") from None
    raise ValueError(f"{key}: cannot parse a value of type {annotation}")  # pragma: no cover


def apply_overrides(config: ExperimentConfig, items: list[str]) -> ExperimentConfig:
    """Apply ``section.field=value`` strings; an unknown key, an unparsable value or a ``method.*`` key the resolved
    method does not read (:data:`METHOD_FIELDS`) raises ``ValueError``."""
    nested: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"override {item!r} is not of the form section.field=value")
        section, field = key.split(".", 1)
        klass = _SECTIONS.get(section)
        if klass is None:
            raise ValueError(f"unknown config section {section!r} in {item!r}; sections: {list(_SECTIONS)}")
        fields = {f.name: f for f in attrs.fields(klass)}
        if field not in fields:
            raise ValueError(f"unknown key {key!r}; {section} has {sorted(fields)}")
        annotation = fields[field].type
        if not isinstance(annotation, str):
            annotation = _type_name(annotation)
        nested.setdefault(section, {})[field] = _parse(text, annotation, key)
    merged = config.merged(nested)
    _refuse_unread(merged, {(section, field): f"{section}.{field}" for section in nested for field in nested[section]})
    return merged


def _refuse_unread(config: ExperimentConfig, fields: dict[tuple[str, str], str]) -> None:
    """``ValueError`` for the first of ``fields`` ((section, field): how the message names it) that ``config``'s
    method (``method.*``), optimizer or learning-rate schedule (``optim.*``) does not read."""
    method, optim, schedule = config.method.name, config.optim.name, config.optim.schedule
    for (section, field), label in fields.items():
        if section == "method" and field != "name" and field not in METHOD_FIELDS[method]:
            raise ValueError(
                f"{label} does not apply to method {method!r}, which reads "
                + ", ".join(f"method.{f}" for f in METHOD_FIELDS[method])
            )
        if section != "optim":
            continue
        for key, chosen, readers in (
            ("name", optim, [o for o in OPTIMIZERS if field in OPTIM_FIELDS[o]]),
            ("schedule", schedule, [s for s in LR_SCHEDULES if field in SCHEDULE_FIELDS[s]]),
        ):
            if readers and chosen not in readers:
                which = " or ".join(f"optim.{key}={r!r}" for r in readers)
                raise ValueError(f"{label} applies to {which}, not to the chosen {chosen!r}")


def check_config_file_methods(config: ExperimentConfig, data: dict[str, Any], path: str | Path) -> None:
    """``ValueError`` when the config file ``data`` (what :func:`load_config_file` read from ``path``) sets a
    ``method.*`` field that ``config``'s method does not read, or an ``optim.*`` field that its optimizer or schedule
    does not read, to anything but its default. A ``--dry-run`` dump holds every field, at the defaults where they are
    not read, so it loads back."""
    changed = {}
    for section, default in (("method", MethodConfig()), ("optim", OptimConfig())):
        values = getattr(config, section)
        for f in data.get(section) or {}:
            if getattr(values, f) != getattr(default, f):
                changed[(section, f)] = f"{section}.{f}={getattr(values, f)!r} in {path}"
    _refuse_unread(config, changed)


def _type_name(tp: Any) -> str:  # pragma: no cover - annotations are strings under `from __future__ import annotations`
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "None")


# --- presets -------------------------------------------------------------------------------------------------------


def _preset_dir():
    return resources.files("deps_core") / "presets"


def list_presets() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in _preset_dir().iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> ExperimentConfig:
    """The preset ``name`` (its JSON overrides applied to the defaults)."""
    if name not in list_presets():
        raise ValueError(f"unknown preset {name!r}; presets: {list_presets()}")
    data = json.loads((_preset_dir() / f"{name}.json").read_text())
    data.pop("description", None)
    return ExperimentConfig().merged(data)


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from None
    data.pop("description", None)
    return data
