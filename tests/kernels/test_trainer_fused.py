"""``run.fuse_dw_grad`` (and ``run.fuse_dw_bn_act``): the trainer's steps with the fused depthwise weight gradient
(and the depthwise conv, BN and activation as one op) equal the unfused steps.

Two trainers from one config, one with ``run.dw_backend=triton run.fuse_dw_grad=true`` (the Triton kernels add each
term's ε-weighted depthwise gradient straight into the accumulator), one with the torch backend; after the same
ε-shrinking steps (full model + smallest subnet, in-place distillation, SGD) their losses agree and their weight
updates agree to fp32 rounding (2e-3 of each update's norm). On the CPU the kernels run in the Triton interpreter at a
tiny size (8×8 images, depth 2).
"""

from __future__ import annotations

import math

import pytest
import torch
from deps_kernels import elastic_dwconv as E

from deps_core import ops
from deps_core.config import apply_overrides, load_preset
from deps_core.distributed import DistContext
from deps_core.trainer import Trainer

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not E.INTERPRETED, reason="kernels compiled for CUDA here")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(E.INTERPRETED, reason="kernels interpreted")]),
]

TINY = [
    "model.width_mult=0.25",
    "model.ks_choices=3,5",
    "model.d_choices=2",
    "model.dropout=0",
    "data.batch_size=4",
    "data.resolution=8",
    "method.epochs=2",
    "method.p_fm=0",  # ε-shrinking from the first step: the full model and the smallest subnet
    "method.k=2",  # (a uniform subnet through the fused ops: test_elastic_dwconv_step.py; k=3 took 78 s here)
    "run.amp=none",
    "run.channels_last=off",
    "run.progress=false",
    "optim.name=sgd",  # the updates compare the gradients: AdamW would scale rounding noise up to whole steps
]


class _Batches:
    """A fixed list of batches as a loader (the trainer's ``Loader`` protocol); the data do not matter here."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int, start_step: int = 0):
        return iter(self.batches[start_step:])


def _trainer(device: str, overrides: list[str], batches) -> Trainer:
    config = apply_overrides(load_preset("default"), [*TINY, f"run.device={device}", *overrides])
    return Trainer(config, _Batches(batches), num_classes=10, ctx=DistContext(device=torch.device(device)))


# On the CPU (the interpreter: about a minute per case) only both fusions together: the trainer passes each flag on
# as it is, and every combination of them is checked step by step in test_elastic_dwconv_step.py
INTERPRETER_TIME = pytest.mark.skipif(E.INTERPRETED, reason="the interpreter runs dw_grad+bn_act alone (see above)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "fusions",
    [
        pytest.param(["run.fuse_dw_grad=true"], marks=INTERPRETER_TIME),
        ["run.fuse_dw_grad=true", "run.fuse_dw_bn_act=true"],
    ],
    ids=["dw_grad", "dw_grad+bn_act"],
)
def test_fused_trainer_steps_equal_the_torch_backend(device, fusions):
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)]
    fused = _trainer(device, ["run.dw_backend=triton", *fusions], batches)
    plain = _trainer(device, ["run.dw_backend=torch"], batches)
    records = []
    for trainer in (fused, plain):  # two ε-shrinking steps each (the second after the first's update and statistics)
        records.append([trainer.train_step(x, y) for x, y in batches])
    for a, b in zip(*records):
        assert a["_terms"] == b["_terms"] == 2 and a["epsilon"] == b["epsilon"] > 0
        # the losses agree to fp32 rounding as amplified by this net: the first full-model loss is a forward pass
        # alone, and the two depthwise paths' rounding already moves it by 1.3e-5 relative with 2 oneDNN threads
        # (under 1e-5 with 1); a wrong ε, term or window moves the later losses by orders of magnitude more
        for key in a["losses"]:
            assert a["losses"][key] == pytest.approx(b["losses"][key], rel=1e-4), key
    # compare the updates: fp32 on this tiny net (BN over 4 samples at 1×1 in the last stages) is ill-conditioned,
    # so the two backends' rounding differs by ~1e-4 relative in the gradients; a wrong ε, term or window is O(1)
    # (updates below 1e-6 are rounding noise: e.g. a BN bias followed by BN has a zero gradient)
    start = _trainer(device, [], batches).supernet.state_dict()
    moved = 0
    for (name, p), (_, q) in zip(fused.supernet.state_dict().items(), plain.supernet.state_dict().items()):
        if not p.is_floating_point():
            assert torch.equal(p, q), name
            continue
        dp, dq = (p - start[name]).double(), (q - start[name]).double()
        assert (dp - dq).norm() <= 2e-3 * dq.norm() + 1e-6, (name, (dp - dq).norm().item(), dq.norm().item())
        moved += ".dw.weight" in name and dq.norm() > 0
    assert moved > 0  # the depthwise weights were updated, through the fused kernel


@pytest.mark.parametrize("flag", ["fuse_dw_grad", "fuse_dw_bn_act"])
def test_fusing_needs_the_triton_backend_named_in_the_config(flag):
    with pytest.raises(ValueError, match=f"run.{flag} needs the Triton depthwise backend"):
        apply_overrides(load_preset("default"), [f"run.{flag}=true", "run.dw_backend=torch"])
    with pytest.raises(ValueError, match=f"run.{flag} needs the Triton depthwise backend"):
        apply_overrides(load_preset("default"), [f"run.{flag}=true", "run.device=cpu"])


def _default_path_steps(device: str, overrides: list[str]):
    """Two trainers from the embedded default (32×32, batch 16, ε-shrinking from the first step, SGD) on ``device``,
    one as ``overrides`` leave it, one with the torch depthwise backend, and two steps each on the same batches:
    ``(ours, its initial weights, its step records, the torch backend's step records)``."""
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    common = ["model.dropout=0", "method.p_fm=0", "method.k=3", "optim.name=sgd", "optim.lr=0.05", "run.progress=false"]

    def trainer(extra: list[str]) -> Trainer:
        config = apply_overrides(load_preset("default"), [*common, f"run.device={device}", *overrides, *extra])
        return Trainer(config, _Batches(batches), num_classes=10, ctx=DistContext(device=torch.device(device)))

    ours, reference = trainer([]), trainer(["run.dw_backend=torch"])
    start = {k: v.clone() for k, v in ours.supernet.state_dict().items()}
    records = [[t.train_step(x, y) for x, y in batches] for t in (ours, reference)]
    return ours, start, records[0], records[1]


def _check_default_path(ours, start, a, b) -> None:
    # the first step's losses are forward passes of the same weights; the second's follow updates that differ
    for ra, rb, rel in zip(a, b, (2e-3, 3e-2)):
        assert ra["_terms"] == rb["_terms"] == 3
        for key in ra["losses"]:
            assert math.isfinite(ra["losses"][key]), key
            assert ra["losses"][key] == pytest.approx(rb["losses"][key], rel=rel), key
    moved = {n for n, p in ours.supernet.named_parameters() if not torch.equal(p.detach(), start[n])}
    assert all(bool(p.detach().isfinite().all()) for p in ours.supernet.parameters())
    assert any(".dw.weight" in n for n in moved) and len(moved) > len(start) // 4


@pytest.mark.gpu
@pytest.mark.skipif(E.INTERPRETED, reason="kernels interpreted")
def test_the_gpu_defaults_bf16_channels_last_and_triton_train_as_the_torch_backend_does():
    # what `deps train` runs on a GPU with run.amp, run.channels_last and run.dw_backend at auto. Under bf16 the two
    # depthwise paths round differently and this random net's gradients amplify it (bf16 against fp32 on the CPU:
    # 0.55 of the gradient's norm apart), so the updates are not compared; the losses are forward passes, which bf16
    # moves by 1e-4 here, and a wrong layout, dtype, ε or window moves by far more
    ours, start, a, b = _default_path_steps("cuda", [])
    assert ours.amp and ours.channels_last
    assert ops.resolve_depthwise_backend("auto", torch.empty(0, device="cuda")) == "triton"
    _check_default_path(ours, start, a, b)
