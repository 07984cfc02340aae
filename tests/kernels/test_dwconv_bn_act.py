"""``deps_kernels.dwconv_bn_act`` (depthwise conv + BN + activation, the statistics from the conv's epilogue) against
``reference.dwconv_bn_act_reference`` (the elastic conv's reference, ``F.batch_norm``, the activation): the output,
the four gradients (x, the stored kernel, γ, β) and the running statistics, in training and evaluation; the fused
weight-gradient accumulation; ``torch.func.grad``; determinism; ``opcheck``; the statistics of an offset input; errors.

As in test_elastic_dwconv.py, every buffer the ops allocate through ``elastic_dwconv._empty`` (outputs, the conv's
output, the statistics' scratch rows) is NaN-filled first, so an element a kernel fails to write fails the comparison.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from deps_kernels import dwconv_bn_act as B
from deps_kernels import elastic_dwconv as E
from deps_kernels.dwconv_bn_act import dwconv_bn_act
from deps_kernels.reference import (
    ACTIVATIONS,
    activation_reference,
    centre_window,
    dwconv_bn_act_reference,
    elastic_dwconv_reference,
)

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not E.INTERPRETED, reason="kernels compiled for CUDA here")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(E.INTERPRETED, reason="kernels interpreted")]),
]
K_MAX = 7
# (N, C', C_max, H, W), one edge case each
SHAPES = [
    (2, 5, 8, 7, 7),  # odd C' < C_max
    (3, 6, 6, 9, 5),  # C' = C_max, not a power of two; odd batch
    (1, 3, 4, 5, 11),  # batch 1 (the statistics are over one image)
    (2, 12, 20, 3, 4),  # plane smaller than the kernel
]
# (atol, rtol) by x's dtype. bf16: y is rounded to bf16 before BN in both, but the two sum the taps in different orders,
# so a y may round to the neighbouring bf16 value, which BN scales by γ/σ
TOLERANCES = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5), torch.bfloat16: (3e-2, 3e-2)}
LAYOUTS = ["nchw", "channels_last"]


def _cases(dtype, offset, layouts=LAYOUTS):
    combos = list(itertools.product((3, 5, 7), (1, 2), layouts))
    name = str(dtype).removeprefix("torch.")
    return [
        pytest.param(
            dtype, k, s, lay, SHAPES[(i + offset) % len(SHAPES)], ACTIVATIONS[(i + offset) % len(ACTIVATIONS)],
            id=f"{name}-k{k}-s{s}-{lay}-{ACTIVATIONS[(i + offset) % len(ACTIVATIONS)]}-{i + offset}",
        )
        for i, (k, s, lay) in enumerate(combos)
    ]  # fmt: skip


CASES = _cases(torch.float64, 0) + _cases(torch.float32, 1)[::2] + _cases(torch.bfloat16, 2, ["channels_last"])


def _nan_empty(shape, *, dtype, device, memory_format=torch.contiguous_format):
    return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device).contiguous(memory_format=memory_format)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(E, "_empty", _nan_empty)


def _format(t):
    return torch.channels_last if E._channels_last(t) else torch.contiguous_format


def _inputs(shape, dtype, layout, device, seed=0):
    """x, the stored kernel, γ, β (requiring grad) and full-size running statistics (not)."""
    n, c, c_max, h, w = shape
    g = torch.Generator().manual_seed(seed)

    def rand(*size, scale=1.0, shift=0.0):
        return torch.randn(*size, generator=g, dtype=torch.float64) * scale + shift

    x = rand(n, c, h, w, shift=0.5).to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    p = torch.float64 if dtype == torch.float64 else torch.float32  # parameters in fp32 for bf16 (as under autocast)
    weight = rand(c_max, 1, K_MAX, K_MAX, scale=0.3).to(device=device, dtype=p)
    gamma, beta = rand(c, scale=0.5, shift=1.0).to(device, p), rand(c, scale=0.5).to(device, p)
    rm, rv = rand(c_max).to(device, p), (rand(c_max).abs() + 0.5).to(device, p)
    return [t.requires_grad_() for t in (x, weight, gamma, beta)], (rm, rv)


def _grad_like(y, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(y.shape, generator=g, dtype=torch.float64).to(y).contiguous(memory_format=_format(y))


def _assert_close(actual, expected, name, dtype):
    atol, rtol = TOLERANCES[dtype]
    if dtype == torch.bfloat16:  # sums of bf16-rounded terms (dW, dγ over N·H·W): absolute error scales with the sum
        atol *= max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def _reference(params, stats, k, stride, ga, *, pin_y=None, **kw):
    """The reference's output, gradients (x, weight, γ, β) and moved running statistics, on copies. ``pin_y``: the
    conv's output to normalise instead of the reference conv's (gradients still through the reference conv)."""
    copies = [t.detach().clone().requires_grad_() for t in params]
    rm, rv = (None, None) if stats is None else (t.detach().clone() for t in stats)
    c = params[0].shape[1]
    rm_c, rv_c = (None, None) if rm is None else (rm[:c], rv[:c])
    if pin_y is None:
        out = dwconv_bn_act_reference(*copies, rm_c, rv_c, kernel_size=k, stride=stride, **kw)
    else:
        x, weight, gamma, beta = copies
        y = elastic_dwconv_reference(x, weight, kernel_size=k, stride=stride).float()
        y = y + (pin_y.float() - y).detach()
        z = torch.nn.functional.batch_norm(
            y, rm_c, rv_c, gamma, beta, kw.get("training", True), kw["momentum"], kw["eps"]
        )
        out = activation_reference(z, kw["act"]).to(x.dtype)
    return out, torch.autograd.grad(out, copies, ga), (rm, rv)


def _run(params, stats, k, stride, **kw):
    c = params[0].shape[1]
    rm, rv = (None, None) if stats is None else stats
    return dwconv_bn_act(
        *params, None if rm is None else rm[:c], None if rv is None else rv[:c], kernel_size=k, stride=stride, **kw
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, k, stride, layout, shape, act", CASES)
def test_training_output_gradients_and_running_statistics_match_the_reference(
    device, dtype, k, stride, layout, shape, act
):
    params, stats = _inputs(shape, dtype, layout, device)
    ref_stats = tuple(t.clone() for t in stats)
    out = _run(params, stats, k, stride, training=True, momentum=0.3, eps=1e-3, act=act)
    ga = _grad_like(out)
    grads = torch.autograd.grad(out, params, ga)
    pin_y = None
    if dtype == torch.bfloat16:
        # y rounded to bf16 after taps summed in another order may differ from the reference's by an ulp, which a
        # kink of the activation (or BN over 8 values) turns into an O(1) difference of dz: normalise the op's own y
        # (checked against the reference conv here) and differentiate through the reference conv
        pin_y = torch.ops.deps.dwconv_bn_act(
            *(t.detach() for t in params), None, None, k, stride, True, 0.3, 1e-3, act
        )[1]
        _assert_close(pin_y, elastic_dwconv_reference(params[0], params[1], kernel_size=k, stride=stride), "y", dtype)
    out_ref, grads_ref, moved = _reference(
        params, ref_stats, k, stride, ga, pin_y=pin_y, momentum=0.3, eps=1e-3, act=act
    )
    _assert_close(out, out_ref, "out", dtype)
    for name, a, b in zip(("dx", "dW", "dγ", "dβ"), grads, grads_ref):
        _assert_close(a, b, name, dtype)
    for name, a, b in zip(("running_mean", "running_var"), stats, moved):  # the whole buffers: C' moved, rest not
        _assert_close(a, b, name, dtype)  # (for bf16: means of y that may differ by an ulp here and there)
    assert out.dtype == dtype and grads[0].dtype == dtype and _format(out) == _format(params[0]) == _format(grads[0])
    assert grads[2].dtype == grads[3].dtype == params[2].dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ["h_swish", "relu"])
def test_evaluation_normalises_with_the_running_statistics(device, layout, act):
    params, stats = _inputs((2, 5, 8, 6, 7), torch.float64, layout, device)
    before = tuple(t.clone() for t in stats)
    out = _run(params, stats, 5, 2, training=False, eps=1e-3, act=act)
    ga = _grad_like(out)
    grads = torch.autograd.grad(out, params, ga)
    out_ref, grads_ref, _ = _reference(params, before, 5, 2, ga, training=False, eps=1e-3, act=act)
    _assert_close(out, out_ref, "out", torch.float64)
    for name, a, b in zip(("dx", "dW", "dγ", "dβ"), grads, grads_ref):
        _assert_close(a, b, name, torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(stats, before)), "evaluation must not move the statistics"


@pytest.mark.parametrize("device", DEVICES)
def test_an_empty_batch_in_evaluation_gives_empty_outputs_and_zero_gradients(device):
    params, stats = _inputs((0, 3, 4, 5, 5), torch.float32, "channels_last", device)
    out = _run(params, stats, 3, 2, training=False)
    assert out.shape == (0, 3, 3, 3)
    grads = torch.autograd.grad(out.sum(), params)
    assert grads[0].shape == params[0].shape and all(torch.equal(g, torch.zeros_like(g)) for g in grads[1:])


@pytest.mark.parametrize("device", DEVICES)
def test_training_without_running_statistics_and_planes_of_several_tiles(device):
    # 40 × 40 outputs at fp64 (1,024-element tiles): the statistics and the backward's sums merge several tiles a
    # plane; no running statistics (BigNAS-style subnets, deps' update_bn_stats=False)
    params, _ = _inputs((2, 3, 4, 40, 40), torch.float64, "nchw", device)
    out = _run(params, None, 3, 1, training=True, act="relu6")
    assert B._grid(out, B._pointwise_tile(out))[0] > 2 * 2, "the case should span several tiles a plane"
    ga = _grad_like(out)
    grads = torch.autograd.grad(out, params, ga)
    out_ref, grads_ref, _ = _reference(params, None, 3, 1, ga, act="relu6")
    _assert_close(out, out_ref, "out", torch.float64)
    for name, a, b in zip(("dx", "dW", "dγ", "dβ"), grads, grads_ref):
        _assert_close(a, b, name, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "layout, tile",
    [("nchw", E._Tile(2, 2, 4, 1)), ("channels_last", E._Tile(4, 2, 2, 1))],  # partial tiles along every axis
)
def test_statistics_of_forced_small_tiles(device, layout, tile):
    params, _ = _inputs((2, 5, 8, 5, 7), torch.float64, layout, device)
    x, weight = params[0].detach(), params[1].detach()
    y = torch.empty(2, 5, 5, 7, dtype=torch.float64, device=device).contiguous(memory_format=_format(x))
    mean, var = B._forward_stats(x, weight, y, 3, 1, tile)
    y_ref = torch.nn.functional.conv2d(x, weight[:, :, 2:5, 2:5][:5], None, 1, 1, 1, 5)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(mean, y_ref.mean((0, 2, 3)), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(var, y_ref.var((0, 2, 3), correction=0), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_the_variance_of_an_offset_input_keeps_its_precision(device):
    """fp32 activations of mean 1000 and standard deviation 0.01: E[y²] − E[y]² would lose the variance (fp32 resolves
    1e6 to ~0.06 ≫ 1e-4); the per-tile deviations and Chan's merge keep it to a few ulps of the mean."""
    g = torch.Generator().manual_seed(3)
    x = (1000 + 0.01 * torch.randn(4, 3, 24, 24, generator=g, dtype=torch.float64)).float().to(device)
    weight = torch.ones(3, 1, 1, 1, device=device)
    y = torch.empty_like(x)
    mean, var = B._forward_stats(x, weight, y, 1, 1)
    exact = x.double().var((0, 2, 3), correction=0)
    torch.testing.assert_close(var.double(), exact, rtol=1e-2, atol=0)
    torch.testing.assert_close(mean.double(), x.double().mean((0, 2, 3)), rtol=1e-7, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_weight_gradient_adds_into_the_window_of_a_full_buffer(device, layout):
    params, stats = _inputs((2, 5, 8, 7, 6), torch.float64, layout, device)
    g = torch.Generator().manual_seed(5)
    buffer = torch.randn(params[1].shape, generator=g, dtype=torch.float64).to(device)
    expected, before = buffer.clone(), buffer.clone()
    for call, scale in enumerate((0.37, -1.5, 2.0)):
        x = (params[0].detach() * (call + 1)).requires_grad_()
        call_params = [x, *params[1:]]
        out = _run(call_params, None, 5, 2, act="h_swish", grad_out=buffer, grad_scale=scale)
        ga = _grad_like(out, seed=call)
        out.backward(ga)
        _, (dx_ref, dw_ref, _, _), _ = _reference(call_params, None, 5, 2, ga, act="h_swish")
        expected += scale * dw_ref
        _assert_close(x.grad, dx_ref, "dx", torch.float64)
    assert params[1].grad is None, "the fused path gives the weight no gradient"
    assert params[2].grad is not None and params[3].grad is not None
    torch.testing.assert_close(buffer, expected, atol=1e-12, rtol=1e-12)
    win = centre_window(K_MAX, 5)
    outside = torch.ones_like(buffer, dtype=torch.bool)
    outside[:5, :, win, win] = False
    assert torch.equal(buffer[outside], before[outside])


@pytest.mark.parametrize("device", DEVICES)
def test_torch_func_grad_equals_autograd_and_moves_the_running_statistics(device):
    params, stats = _inputs((2, 5, 8, 7, 6), torch.float64, "channels_last", device)
    params = [t.detach() for t in params]
    ref_stats = tuple(t.clone() for t in stats)
    ga = _grad_like(torch.zeros_like(params[0]))  # stride 1: shaped like x

    def loss(x, weight, gamma, beta):
        out = _run([x, weight, gamma, beta], stats, 3, 1, momentum=0.2, act="h_swish")
        return (out * ga).sum()

    grads = torch.func.grad(loss, argnums=(0, 1, 2, 3))(*params)
    _, grads_ref, moved = _reference(params, ref_stats, 3, 1, ga, momentum=0.2, act="h_swish")
    for name, a, b in zip(("dx", "dW", "dγ", "dβ"), grads, grads_ref):
        _assert_close(a, b, name, torch.float64)
    for name, a, b in zip(("running_mean", "running_var"), stats, moved):
        _assert_close(a, b, name, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_two_runs_are_bit_identical(device, layout):
    def run():
        params, stats = _inputs((3, 6, 8, 9, 9), torch.float32, layout, device)
        out = _run(params, stats, 3, 2, act="h_swish")
        return out, *torch.autograd.grad(out, params, _grad_like(out)), *stats

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    params, (rm, rv) = _inputs((2, 3, 4, 5, 6), torch.float32, "channels_last", device)
    x, weight, gamma, beta = (t.detach() for t in params)
    out, y, mean, rstd = torch.ops.deps.dwconv_bn_act(
        x, weight, gamma, beta, rm[:3], rv[:3], 3, 2, True, 0.1, 1e-5, "relu"
    )
    ga = _grad_like(out)
    fwd, stats = torch.ops.deps.dwconv_bn_act.default, (x, weight, gamma, beta, rm[:3], rv[:3])
    for op, args in (
        (fwd, (*stats, 3, 2, True, 0.1, 1e-5, "relu")),
        (fwd, (*stats, 5, 1, False, 0.1, 1e-5, "none")),
        (fwd, (x, weight, gamma, beta, None, None, 3, 1, True, 0.1, 1e-5, "h_swish")),
        (torch.ops.deps.dwconv_bn_act_grad_bn_act.default, (ga, y, gamma, beta, mean, rstd, True, "h_swish")),
    ):
        torch.library.opcheck(op, args)


BAD = [
    # (what, change to the valid call, message)
    ("unknown activation", dict(act="gelu"), "act must be one of"),
    ("γ of C_max channels", dict(bn_weight=torch.ones(4)), r"bn_weight must be a floating-point \[C'\] = \[3\]"),
    ("integer β", dict(bn_bias=torch.zeros(3, dtype=torch.int64)), "bn_bias must be a floating-point"),
    ("one running statistic", dict(running_var=None), "must be given together"),
    ("running mean of C_max", dict(running_mean=torch.zeros(4)), "running_mean must be a floating-point"),
    ("evaluation without statistics", dict(training=False, running_mean=None, running_var=None), "running statistics"),
    ("momentum 1.5", dict(momentum=1.5), r"momentum must be a number in \[0, 1\]"),
    ("eps 0", dict(eps=0.0), "eps must be a positive number"),
    ("one value per channel", dict(x=torch.zeros(1, 3, 1, 1)), "more than one value per channel"),
    ("even K (the conv's own check)", dict(kernel_size=4), "kernel_size must be a positive odd int"),
]


@pytest.mark.parametrize("what, change, message", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_are_one_clear_value_error(what, change, message):
    args = dict(
        x=torch.zeros(1, 3, 5, 5), weight=torch.zeros(4, 1, 7, 7), bn_weight=torch.ones(3), bn_bias=torch.zeros(3),
        running_mean=torch.zeros(3), running_var=torch.ones(3), kernel_size=3,
    ) | change  # fmt: skip
    with pytest.raises(ValueError, match=message):
        dwconv_bn_act(args.pop("x"), args.pop("weight"), args.pop("bn_weight"), args.pop("bn_bias"), **args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_forward_backward_and_running_statistics(device):
    # on the CPU the interpreted ops are opaque to inductor; on CUDA they are triton_ops and it sees the kernels
    torch._dynamo.reset()
    params, stats = _inputs((2, 5, 6, 7, 7), torch.float32, "channels_last", device)
    ref_stats = tuple(t.clone() for t in stats)
    buffer = torch.zeros(params[1].shape, device=device)

    @torch.compile(fullgraph=True)
    def f(x, weight, gamma, beta, grad_out=None):
        return _run([x, weight, gamma, beta], stats, 3, 2, momentum=0.5, act="h_swish", grad_out=grad_out) * 2

    out = f(*params)
    ga = _grad_like(out)
    grads = torch.autograd.grad(out, params, ga)
    out_ref, grads_ref, moved = _reference(params, ref_stats, 3, 2, 2 * ga, momentum=0.5, eps=1e-5, act="h_swish")
    _assert_close(out, 2 * out_ref, "out", torch.float32)
    for name, a, b in zip(("dx", "dW", "dγ", "dβ"), grads, grads_ref):
        _assert_close(a, b, name, torch.float32)
    for name, a, b in zip(("running_mean", "running_var"), stats, moved):
        _assert_close(a, b, name, torch.float32)
    f(*params, buffer).backward(ga)  # the fused accumulation through the compiled graph
    _assert_close(buffer, grads_ref[1], "buffer", torch.float32)
    assert params[1].grad is None
