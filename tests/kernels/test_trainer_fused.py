"""``run.fuse_dw_grad`` (and ``run.fuse_dw_bn_act``): the trainer's steps with the fused depthwise weight gradient
(and the depthwise conv, BN and activation as one op) equal the unfused steps.

Two trainers from one config, one with ``run.dw_backend=triton run.fuse_dw_grad=true`` (the Triton kernels add each
term's ε-weighted depthwise gradient straight into the accumulator), one with the torch backend; after the same
ε-shrinking steps (full model + subnets, in-place distillation, SGD) their losses agree and their weight updates agree
to fp32 rounding (2e-3 of each update's norm). On the CPU the kernels run in the Triton interpreter at a tiny size
(8×8 images, depth 2).
"""

from __future__ import annotations

import pytest
import torch
from deps_kernels import elastic_dwconv as E

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
    "method.p_fm=0",  # ε-shrinking from the first step: full model + k − 1 subnets
    "method.k=3",
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
    for trainer in (fused, plain):  # two ε-shrinking steps each
        records.append([trainer.train_step(x, y) for x, y in batches])
    for a, b in zip(*records):
        assert a["_terms"] == b["_terms"] == 3 and a["epsilon"] == b["epsilon"]
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
