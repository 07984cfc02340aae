"""``deps_kernels.elastic_dwconv`` against the pure-torch reference: outputs and both gradients, the fused accumulation
into a gradient buffer, determinism, ``torch.func``/``torch.compile``/``opcheck``, argument errors, and the dispatch of
``deps_core.ops.depthwise_conv``.

On the CPU the kernels run in the Triton interpreter (see conftest.py), which is slow: the shapes are tiny and each
edge case is covered by a few cases instead of the full product. Every output and scratch buffer the op allocates is
filled with NaN first (``_empty`` patched), so an element a kernel fails to write fails the comparison.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from deps_kernels import elastic_dwconv as E
from deps_kernels.elastic_dwconv import elastic_dwconv
from deps_kernels.reference import centre_window, elastic_dwconv_reference

from deps_core import ops

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not E.INTERPRETED, reason="kernels compiled for CUDA here")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(E.INTERPRETED, reason="kernels interpreted")]),
]
K_MAX = 7

# (N, C', C_max, H, W), one edge case each
SHAPES = [
    (1, 5, 8, 7, 7),  # batch 1; odd C' < C_max; square odd plane
    (2, 6, 6, 9, 5),  # C' = C_max, not a power of two; H > W
    (3, 3, 4, 5, 11),  # odd batch; W > H, odd
    (2, 12, 20, 3, 4),  # plane smaller than the 7×7 kernel (every tap partly in the padding); even W
]
# (dtype, atol, rtol) of the outputs (y, dx in x's dtype). bf16 inputs take an fp32 weight (as under autocast) and
# round results to bf16 once, so one bf16 ulp (2^-7 relative) of difference is allowed; dW is in the weight's dtype.
TOLERANCES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1e-2, 1e-2),
}
LAYOUTS = ["nchw", "channels_last"]


def _cases(dtype: torch.dtype, offset: int, layouts: list[str] = LAYOUTS) -> list:
    """Every K of 3, 5, 7 (cut from K_max = 7) × stride 1, 2 × ``layouts``; the shapes rotate through the cases."""
    combos = list(itertools.product((3, 5, 7), (1, 2), layouts))
    name = str(dtype).removeprefix("torch.")
    return [
        pytest.param(dtype, k, s, lay, SHAPES[(i + offset) % len(SHAPES)], id=f"{name}-k{k}-s{s}-{lay}-{i + offset}")
        for i, (k, s, lay) in enumerate(combos)
    ]


CASES = (
    _cases(torch.float64, 0)
    + _cases(torch.float32, 1)
    + _cases(torch.bfloat16, 2, ["channels_last"])  # the layout of bf16 training
)


def _nan_empty(shape, *, dtype, device, memory_format=torch.contiguous_format):
    return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device).contiguous(memory_format=memory_format)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(E, "_empty", _nan_empty)


def _inputs(shape, dtype, layout, device, seed=0, k_max=K_MAX):
    n, c, c_max, h, w = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    weight = torch.randn(c_max, 1, k_max, k_max, generator=g, dtype=torch.float64).to(device=device, dtype=w_dtype)
    return x.requires_grad_(), weight.requires_grad_()


def _grad_like(y: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(y.shape, generator=g, dtype=torch.float64).to(y).contiguous(memory_format=_format(y))


def _format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if E._channels_last(t) else torch.contiguous_format


def _reference(x, weight, k, stride, gy):
    xr, wr = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    y = elastic_dwconv_reference(xr, wr, kernel_size=k, stride=stride)
    dx, dw = torch.autograd.grad(y, (xr, wr), gy)
    return y, dx, dw


def _assert_close(actual, expected, name):
    atol, rtol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, k, stride, layout, shape", CASES)
def test_output_and_both_gradients_match_the_reference(device, dtype, k, stride, layout, shape):
    x, weight = _inputs(shape, dtype, layout, device)
    y = elastic_dwconv(x, weight, kernel_size=k, stride=stride)
    gy = _grad_like(y)
    dx, dw = torch.autograd.grad(y, (x, weight), gy)
    y_ref, dx_ref, dw_ref = _reference(x, weight, k, stride, gy)
    _assert_close(y, y_ref, "y")
    _assert_close(dx, dx_ref, "dx")
    _assert_close(dw, dw_ref, "dW")  # zeros outside the window and beyond C'
    assert y.dtype == x.dtype and dx.dtype == x.dtype and dw.dtype == weight.dtype
    assert _format(y) == _format(x) == _format(dx), "outputs keep the input's memory format"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "k, stride, layout, shape, tile, splits",
    [
        # forced small tiles (the default ones cover these planes whole): several tiles along every axis, the last
        # one partial; the weight gradient's work split unevenly (3 + 3 + 2 tiles)
        (3, 1, "nchw", (2, 3, 4, 5, 6), E._Tile(1, 4, 4, 1), 3),  # one channel per tile (the 112² layers')
        (7, 2, "nchw", (1, 3, 4, 5, 6), E._Tile(2, 2, 4, 1), 2),
        (5, 1, "channels_last", (1, 5, 6, 4, 5), E._Tile(4, 2, 4, 1), 3),
        (7, 2, "channels_last", (1, 3, 3, 5, 4), E._Tile(2, 2, 2, 1), 3),
    ],
)
def test_partial_tiles_and_uneven_splits(device, k, stride, layout, shape, tile, splits):
    x, weight = _inputs(shape, torch.float64, layout, device)
    x, weight = x.detach(), weight.detach()
    n, c, _, h, w = shape
    y = _nan_empty((n, c, E._out_size(h, k, stride), E._out_size(w, k, stride)), dtype=x.dtype, device=device)
    E._forward(x, weight, y, k, stride, tile)
    gy = _grad_like(y)
    dx = E._grad_input(gy, weight, _nan_empty(x.shape, dtype=x.dtype, device=device), k, stride, tile)
    dw = _nan_empty(weight.shape, dtype=weight.dtype, device=device)
    E._grad_weight(gy, x, dw, k, stride, accumulate=False, tile=tile, splits=splits)
    y_ref, dx_ref, dw_ref = _reference(x, weight, k, stride, gy)
    for name, a, b in (("y", y, y_ref), ("dx", dx, dx_ref), ("dW", dw, dw_ref)):
        _assert_close(a, b, name)


@pytest.mark.parametrize("elem_size", [2, 4])
def test_channels_last_tiles_leave_few_lanes_idle_at_the_supernets_widths(elem_size):
    """Every depthwise width of OFA-MBV3 (16; 24, 40, 80, 112, 160 × expand 3, 4, 6) in channel tiles whose last one
    idles at most 1/8 of the lanes (72 channels in 64-channel tiles ran 128), each position's channels still whole
    32-byte sectors; and each thread's 16-byte vector of channels at two positions (fwd, stride-1 dx)."""
    widths = [16] + [b * e for b in (24, 40, 80, 112, 160) for e in (3, 4, 6)]
    for c in widths:
        for kernel_tile in (
            E._tile(c, 28, 28, True, elem_size, 7),
            E._tile(c, 14, 14, True, elem_size, 7, phases=4),
            E._tile(c, 28, 28, True, elem_size, 7, wgrad=True),
        ):
            run = -(-c // kernel_tile.block_c) * kernel_tile.block_c
            assert 1 - c / run <= 1 / 8, (c, kernel_tile)
            assert kernel_tile.block_c * elem_size >= 32, (c, kernel_tile)
        t = E._tile(c, 28, 28, True, elem_size, 7)
        elements = t.block_c * t.block_h * t.block_w
        assert elements // (32 * t.num_warps) == 2 * 16 // elem_size, (c, t)  # two vectors a thread


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_weight_of_exactly_the_kernel_size(device, layout):
    # the kernel transform hands over a small transformed [C', 1, K, K] kernel: K_max == K, C_max == C'
    x, weight = _inputs((2, 5, 5, 6, 7), torch.float64, layout, device, k_max=3)
    y = elastic_dwconv(x, weight, stride=2)  # kernel_size defaults to the weight's
    gy = _grad_like(y)
    dx, dw = torch.autograd.grad(y, (x, weight), gy)
    for name, a, b in zip(("y", "dx", "dW"), (y, dx, dw), _reference(x, weight, 3, 2, gy)):
        _assert_close(a, b, name)


@pytest.mark.parametrize("device", DEVICES)
def test_a_strided_view_of_the_stored_kernel_is_read_in_place(device, monkeypatch):
    """What deps_core passes: ``weight[:C', :, window, window]``, a view; the kernels get that tensor itself."""
    launched = []
    real = E._kernel

    def spy(fn):
        launcher = real(fn)

        class Spy:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    launched.append((fn, args))
                    return launcher[grid](*args, **kwargs)

                return launch

        return Spy()

    monkeypatch.setattr(E, "_kernel", spy)
    x, full = _inputs((2, 5, 8, 7, 7), torch.float64, "nchw", device)
    view = full[:5, :, 1:6, 1:6]  # the centre 5×5 of the first 5 channels
    y = elastic_dwconv(x, view, kernel_size=3)
    gy = _grad_like(y)
    dx, dw = torch.autograd.grad(y, (x, full), gy)
    weights = [args[1] for fn, args in launched if fn in (E._dwconv_fwd_kernel, E._dwconv_grad_input_kernel)]
    assert len(weights) == 2 and all(w is view for w in weights)
    for name, a, b in zip(("y", "dx", "dW"), (y, dx, dw), _reference(x, full, 3, 1, gy)):
        _assert_close(a, b, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "k, stride, layout, shape",
    [
        (3, 1, "nchw", SHAPES[0]),
        (5, 2, "channels_last", SHAPES[1]),
        (7, 2, "nchw", SHAPES[2]),
    ],
)
def test_fused_weight_gradient_adds_into_the_window_of_a_full_buffer(device, k, stride, layout, shape):
    x, weight = _inputs(shape, torch.float64, layout, device)
    g = torch.Generator().manual_seed(5)
    buffer = torch.randn(weight.shape, generator=g, dtype=torch.float64).to(device)
    before = buffer.clone()
    expected = buffer.clone()
    for call, scale in enumerate((0.37, -1.5, 2.0)):  # several calls, each with its own input and scale
        xi = (x.detach() * (call + 1)).requires_grad_()
        y = elastic_dwconv(xi, weight, kernel_size=k, stride=stride, grad_out=buffer, grad_scale=scale)
        gy = _grad_like(y, seed=call)
        y.backward(gy)
        _, dx_ref, dw_ref = _reference(xi, weight, k, stride, gy)
        expected += scale * dw_ref
        _assert_close(xi.grad, dx_ref, "dx")
    assert weight.grad is None, "the fused path gives the weight no gradient"
    torch.testing.assert_close(buffer, expected, atol=1e-12, rtol=1e-12)
    win = centre_window(K_MAX, k)
    outside = torch.ones_like(buffer, dtype=torch.bool)
    outside[: shape[1], :, win, win] = False
    assert torch.equal(buffer[outside], before[outside]), "elements outside the active window must be untouched"


@pytest.mark.parametrize("device", DEVICES)
def test_fused_gradient_into_a_view_of_a_flat_buffer(device):
    """The accumulator's case: weight and buffer are both strided views ([:C', :, window, window]) of full tensors;
    two ops add into views of the same flat storage."""
    x, full = _inputs((2, 5, 8, 7, 7), torch.float64, "channels_last", device)
    flat = torch.zeros(2 * full.numel() + 3, dtype=torch.float64, device=device)
    g1, g2 = flat[3 : 3 + full.numel()].view(full.shape), flat[3 + full.numel() :].view(full.shape)
    w1, w2 = full[:5, :, 1:6, 1:6], full[:5]  # 5×5 window and the full 7×7 of the first 5 channels
    y = elastic_dwconv(x, w1, kernel_size=5, grad_out=g1[:5, :, 1:6, 1:6], grad_scale=0.5)
    z = elastic_dwconv(y, w2, kernel_size=3, stride=2, grad_out=g2[:5], grad_scale=-2.0)
    gz = _grad_like(z)
    z.backward(gz)
    xr = x.detach().clone().requires_grad_()
    w1r, w2r = (w.detach().clone().requires_grad_() for w in (w1, w2))
    zr = elastic_dwconv_reference(
        elastic_dwconv_reference(xr, w1r, kernel_size=5, stride=1), w2r, kernel_size=3, stride=2
    )
    dx_ref, d1, d2 = torch.autograd.grad(zr, (xr, w1r, w2r), gz)
    expected1, expected2 = torch.zeros_like(full), torch.zeros_like(full)
    expected1[:5, :, 1:6, 1:6] = 0.5 * d1
    expected2[:5] = -2.0 * d2
    torch.testing.assert_close(g1, expected1, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(g2, expected2, atol=1e-12, rtol=1e-12)
    assert flat[:3].eq(0).all() and full.grad is None
    _assert_close(x.grad, dx_ref, "dx")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_two_runs_are_bit_identical(device, layout):
    def run():
        x, weight = _inputs((3, 6, 8, 9, 9), torch.float32, layout, device)
        buffer = torch.ones(weight.shape, device=device)
        y = elastic_dwconv(x, weight, kernel_size=3, stride=2)
        gy = _grad_like(y)
        dx, dw = torch.autograd.grad(y, (x, weight), gy)
        elastic_dwconv(x, weight, kernel_size=3, stride=2, grad_out=buffer, grad_scale=0.3).backward(gy)
        return y, dx, dw, buffer

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_func_grad_through_the_op_equals_autograd_through_the_reference(device):
    x, weight = _inputs((2, 5, 8, 7, 6), torch.float64, "channels_last", device)
    x, weight = x.detach(), weight.detach()
    gy = _grad_like(elastic_dwconv_reference(x, weight, kernel_size=5, stride=2))

    def loss(x, weight, grad_out=None):
        y = elastic_dwconv(x, weight, kernel_size=5, stride=2, grad_out=grad_out, grad_scale=0.25)
        return (y * gy).sum()

    dx, dw = torch.func.grad(loss, argnums=(0, 1))(x, weight)
    _, dx_ref, dw_ref = _reference(x, weight, 5, 2, gy)
    _assert_close(dx, dx_ref, "dx")
    _assert_close(dw, dw_ref, "dW")
    # fused: torch.func reports a zero weight gradient; the buffer receives 0.25 · dW
    buffer = torch.zeros_like(weight)
    dx, dw = torch.func.grad(loss, argnums=(0, 1))(x, weight, buffer)
    _assert_close(dx, dx_ref, "dx")
    assert torch.equal(dw, torch.zeros_like(dw))
    _assert_close(buffer, 0.25 * dw_ref, "buffer")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, weight = _inputs((2, 3, 4, 5, 6), torch.float32, "channels_last", device)
    gy = _grad_like(elastic_dwconv_reference(x, weight, kernel_size=3, stride=2))
    buffer = torch.zeros(weight.shape, device=device)
    for op, args in (
        (torch.ops.deps.elastic_dwconv.default, (x, weight, 3, 2, None, 1.0)),
        (torch.ops.deps.elastic_dwconv_grad_input.default, (gy, x.detach(), weight.detach(), 3, 2)),
        (torch.ops.deps.elastic_dwconv_grad_weight.default, (gy, x.detach(), weight.detach(), 3, 2)),
        (torch.ops.deps.elastic_dwconv_grad_weight_add_.default, (gy, x.detach(), buffer, 3, 2, 0.5)),
    ):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_forward_backward_and_fused_accumulation(device):
    # on the CPU the interpreted ops are opaque to inductor; on CUDA they are triton_ops and it sees the kernels.
    # Not covered (not supported): torch.compile of a torch.func.grad through the op (see _ElasticDwconv).
    torch._dynamo.reset()
    x, weight = _inputs((2, 5, 6, 7, 7), torch.float32, "nchw", device)
    gy = _grad_like(elastic_dwconv_reference(x, weight, kernel_size=3, stride=1))
    buffer = torch.zeros(weight.shape, device=device)

    @torch.compile(fullgraph=True)
    def f(x, weight, grad_out=None):
        return torch.relu(elastic_dwconv(x, weight, kernel_size=3, stride=1, grad_out=grad_out, grad_scale=0.5)) * 2

    y = f(x, weight)
    dx, dw = torch.autograd.grad(y, (x, weight), gy)
    f(x, weight, buffer).backward(gy)
    f(x, weight, buffer).backward(gy)  # a second call adds again
    xr, wr = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    yr = torch.relu(elastic_dwconv_reference(xr, wr, kernel_size=3, stride=1)) * 2.0
    dx_ref, dw_ref = torch.autograd.grad(yr, (xr, wr), gy)
    for name, a, b in (("y", y, yr), ("dx", dx, dx_ref), ("dW", dw, dw_ref), ("buffer", buffer, dw_ref)):
        _assert_close(a, b, name)
    assert weight.grad is None


BAD = [
    # (what, change to the valid call, message)
    ("even K", dict(kernel_size=4), "kernel_size must be a positive odd int"),
    ("K > K_max", dict(kernel_size=9), "exceeds the stored kernel's 7"),
    ("C' > C_max", dict(weight=torch.zeros(2, 1, 7, 7)), "x has 3 channels but weight only 2"),
    ("3-d x", dict(x=torch.zeros(3, 5, 5)), "x must be a 4-d tensor"),
    ("dense weight", dict(weight=torch.zeros(4, 2, 7, 7)), "weight must be a depthwise kernel"),
    ("non-square kernel", dict(weight=torch.zeros(4, 1, 7, 5)), "weight must be a depthwise kernel"),
    ("stride 3", dict(stride=3), "stride must be one of"),
    ("integer x", dict(x=torch.zeros(1, 3, 5, 5, dtype=torch.int64)), "x must have one of the dtypes"),
    ("grad_out of the window's shape", dict(grad_out=torch.zeros(3, 1, 3, 3)), "grad_out must have the weight's"),
    ("grad_out requiring grad", dict(grad_out=torch.zeros(4, 1, 7, 7, requires_grad=True)), "does not require grad"),
]


@pytest.mark.parametrize("what, change, message", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_are_one_clear_value_error(what, change, message):
    args = dict(x=torch.zeros(1, 3, 5, 5), weight=torch.zeros(4, 1, 7, 7), kernel_size=3, stride=1) | change
    with pytest.raises(ValueError, match=message):
        elastic_dwconv(args.pop("x"), args.pop("weight"), **args)


def test_cpu_tensors_without_the_interpreter_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(E, "INTERPRETED", False)
    with pytest.raises(ValueError, match="need CUDA tensors.*TRITON_INTERPRET=1"):
        elastic_dwconv(torch.zeros(1, 3, 5, 5), torch.zeros(3, 1, 3, 3))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        ops.depthwise_conv(torch.zeros(1, 3, 5, 5), torch.zeros(3, 1, 3, 3), stride=1, backend="triton")


@pytest.mark.parametrize("device", DEVICES)
def test_ops_depthwise_conv_dispatch(device, monkeypatch):
    x, weight = _inputs((2, 4, 4, 6, 6), torch.float64, "nchw", device)
    view = weight[:, :, 2:5, 2:5]
    torch_y = ops.depthwise_conv(x, view, stride=2, backend="torch")
    triton_y = ops.depthwise_conv(x, view, stride=2, backend="triton")
    _assert_close(triton_y, torch_y, "y")
    expected = "triton" if device == "cuda" else "torch"
    assert ops.resolve_depthwise_backend("auto", x) == expected
    with pytest.raises(ValueError, match="needs the Triton backend"):
        ops.depthwise_conv(x, view, stride=2, backend="torch", grad_out=torch.zeros_like(view))
    with pytest.raises(ValueError, match="depthwise backend must be one of"):
        ops.depthwise_conv(x, view, stride=2, backend="cudnn")


@pytest.mark.skipif(not E.INTERPRETED, reason="on a GPU the triton_op registration is what every test above runs")
def test_the_cuda_registration_runs_eagerly_in_the_interpreter():
    """The ops as CUDA registers them (``triton_op`` + ``wrap_triton``) in a fresh process under the interpreter: the
    reference comparisons, the fused accumulation and ``torch.func.grad`` through them (and through
    ``dwconv_bn_act``). (Only tracing — opcheck,
    torch.compile — needs compiled kernels.) So a GPU session does not meet this registration for the first time."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    try:
        torch.library.wrap_triton(E._dwconv_fwd_kernel)
    except RuntimeError as err:  # torch 2.11's wrap_triton takes only compiled (JITFunction) kernels; 2.13's any
        pytest.skip(f"this torch's wrap_triton does not take interpreted kernels ({err})")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "DEPS_KERNELS_TRITON_OP": "1"}
    check = "import deps_kernels.elastic_dwconv as E; assert E.INTERPRETED and E.TRITON_OP"
    assert subprocess.run([sys.executable, "-c", check], env=env, cwd=root).returncode == 0
    selected = "float64 or fused_weight_gradient or flat_buffer or torch_func_grad or bit_identical or evaluation"
    files = [__file__, str(Path(__file__).with_name("test_dwconv_bn_act.py"))]  # the op built on these kernels too
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, "-k", f"cpu and ({selected})"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
