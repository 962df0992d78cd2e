"""The involution operator: every backend against the unfold reference, gradients, errors."""
import itertools
import subprocess
import sys

import pytest
import torch

from involution_d2.ops import involution, output_size, resolve_backend
from involution_d2.ops.cupy_backend import involution_cupy

from conftest import requires_cupy

# (N, C, G, H, W, K, stride, dilation)
SHAPES = [
    (2, 8, 2, 9, 11, 3, 1, 1),
    (2, 8, 4, 10, 12, 3, 2, 1),
    (1, 12, 3, 9, 7, 5, 1, 2),
    (2, 16, 1, 13, 11, 5, 2, 2),   # odd sizes with stride 2
    (1, 32, 2, 14, 15, 7, 1, 1),
    (2, 16, 4, 15, 16, 7, 2, 1),
    (1, 6, 6, 8, 9, 7, 2, 2),      # one channel per group
]


def make_inputs(shape, dtype=torch.float64, device="cpu", seed=0, padding=None):
    n, c, g, h, w, k, s, d = shape
    p = d * (k - 1) // 2 if padding is None else padding
    ho, wo = output_size(h, k, s, p, d), output_size(w, k, s, p, d)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(device, dtype)
    wt = torch.randn(n, g, k, k, ho, wo, generator=gen, dtype=torch.float64).to(device, dtype)
    return x, wt, s, p, d


def reference_with_grads(x, wt, s, p, d, gout):
    xr = x.detach().double().requires_grad_()
    wr = wt.detach().double().requires_grad_()
    out = involution(xr, wr, s, p, d, backend="reference")
    gx, gw = torch.autograd.grad(out, (xr, wr), gout.double())
    return out.detach(), gx, gw


def run_with_grads(x, wt, s, p, d, gout, backend):
    x = x.detach().requires_grad_()
    wt = wt.detach().requires_grad_()
    out = involution(x, wt, s, p, d, backend=backend)
    gx, gw = torch.autograd.grad(out, (x, wt), gout)
    return out.detach(), gx, gw


def test_reference_matches_the_definition():
    # A direct loop over the formula of the operator, independent of unfold.
    x, wt, s, p, d = make_inputs((1, 4, 2, 6, 5, 3, 2, 2), padding=1)
    n, c, h, w = x.shape
    _, g, k, _, ho, wo = wt.shape
    want = torch.zeros(n, c, ho, wo, dtype=x.dtype)
    for ni, ci, i, j, a, b in itertools.product(range(n), range(c), range(ho), range(wo),
                                                range(k), range(k)):
        y, xx = i * s + a * d - p, j * s + b * d - p
        if 0 <= y < h and 0 <= xx < w:
            want[ni, ci, i, j] += wt[ni, ci // (c // g), a, b, i, j] * x[ni, ci, y, xx]
    torch.testing.assert_close(involution(x, wt, s, p, d, backend="reference"), want)


@pytest.mark.parametrize("shape", SHAPES)
def test_torch_backend_matches_reference(shape):
    x, wt, s, p, d = make_inputs(shape)
    gout = torch.randn(x.shape[0], x.shape[1], wt.shape[4], wt.shape[5], dtype=x.dtype)
    for got, want in zip(run_with_grads(x, wt, s, p, d, gout, "torch"),
                         reference_with_grads(x, wt, s, p, d, gout)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_torch_backend_any_padding(padding):
    # Padding other than "same", including more than the kernel reaches.
    x, wt, s, p, d = make_inputs((1, 4, 2, 9, 8, 3, 2, 1), padding=padding)
    gout = torch.randn(x.shape[0], x.shape[1], wt.shape[4], wt.shape[5], dtype=x.dtype)
    for got, want in zip(run_with_grads(x, wt, s, p, d, gout, "torch"),
                         reference_with_grads(x, wt, s, p, d, gout)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], (1, 4, 2, 7, 6, 5, 2, 2)])
def test_gradcheck(backend, shape):
    n, c, g, h, w, k, s, d = shape
    x, wt, s, p, d = make_inputs((1, min(c, 4), 2, min(h, 7), min(w, 7), k, s, d))
    x.requires_grad_()
    wt.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: involution(a, b, s, p, d, backend=backend), (x, wt)
    )


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_empty_batch(backend):
    x, wt, s, p, d = make_inputs((2, 8, 2, 9, 11, 3, 2, 1))
    x = x[:0].requires_grad_()
    wt = wt[:0].requires_grad_()
    out = involution(x, wt, s, p, d, backend=backend)
    assert out.shape == (0, 8, 5, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape and wt.grad.shape == wt.shape


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_non_contiguous_inputs(backend):
    x, wt, s, p, d = make_inputs((2, 8, 2, 9, 11, 3, 1, 1))
    want = involution(x, wt, s, p, d, backend="reference")
    # Channels-last input and a weight that is a transposed view.
    xc = x.to(memory_format=torch.channels_last)
    wc = wt.transpose(4, 5).contiguous().transpose(4, 5)
    assert not xc.is_contiguous() and not wc.is_contiguous()
    torch.testing.assert_close(involution(xc, wc, s, p, d, backend=backend), want)
    # A strided slice of a larger tensor.
    big = torch.zeros(2, 16, 9, 22, dtype=x.dtype)
    big[:, ::2, :, ::2] = x
    torch.testing.assert_close(involution(big[:, ::2, :, ::2], wt, s, p, d, backend=backend),
                               want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_on_cpu(dtype):
    x, wt, s, p, d = make_inputs(SHAPES[5], dtype=dtype)
    gout = torch.randn(x.shape[0], x.shape[1], wt.shape[4], wt.shape[5]).to(dtype)
    got = run_with_grads(x, wt, s, p, d, gout, "torch")
    want = reference_with_grads(x, wt, s, p, d, gout)
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    for g, r in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), r, rtol=tol, atol=tol * r.abs().max().item())


def test_cpu_autocast_runs_in_bfloat16_and_accepts_mixed_dtypes():
    x, wt, s, p, d = make_inputs(SHAPES[1], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = involution(x, wt.bfloat16(), s, p, d)  # float32 x, bfloat16 weight
    assert out.dtype == torch.bfloat16
    want = involution(x, wt, s, p, d, backend="reference")
    torch.testing.assert_close(out.float(), want, rtol=3e-2, atol=3e-2 * want.abs().max().item())


def test_auto_backend_on_cpu_is_torch(monkeypatch):
    monkeypatch.delenv("INVOLUTION_BACKEND", raising=False)
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setenv("INVOLUTION_BACKEND", "reference")
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"  # explicit wins


def test_torch_backend_saves_no_unfold_for_backward():
    # What autograd keeps for backward: x and weight only, nothing K*K-sized.
    x, wt, s, p, d = make_inputs((1, 16, 1, 16, 16, 7, 1, 1), dtype=torch.float32)
    x.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        involution(x, wt, s, p, d, backend="torch")
    assert sum(saved) == x.numel() + wt.numel()


# ---------------------------------------------------------------------------- errors
def test_errors_name_the_problem():
    x, wt, s, p, d = make_inputs((2, 8, 2, 9, 11, 3, 1, 1))
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\), got \(8, 9, 11\)"):
        involution(x[0], wt, s, p, d)
    with pytest.raises(ValueError, match=r"weight must have shape \(N, G, K, K, Ho, Wo\)"):
        involution(x, wt[:, 0], s, p, d)
    with pytest.raises(ValueError, match="8 channels, which 3 groups"):
        involution(x, torch.zeros(2, 3, 3, 3, 9, 11, dtype=x.dtype), s, p, d)
    with pytest.raises(ValueError, match=r"square K x K kernels, got 3 x 5"):
        involution(x, torch.zeros(2, 2, 3, 5, 9, 11, dtype=x.dtype), s, p, d)
    with pytest.raises(ValueError, match=r"batch size 2 but weight has 1"):
        involution(x, wt[:1], s, p, d)
    with pytest.raises(ValueError, match=r"output size 9x11 .* gives 5x6: expected weight "
                                         r"shape \(2, 2, 3, 3, 5, 6\)"):
        involution(x, wt, 2, p, d)
    with pytest.raises(TypeError, match=r"x is torch.float64 but weight is torch.float32"):
        involution(x, wt.float(), s, p, d)
    with pytest.raises(TypeError, match="x has dtype torch.int64"):
        involution(x.long(), wt.long(), s, p, d)
    with pytest.raises(TypeError, match="stride must be an int, got 1.0"):
        involution(x, wt, 1.0, p, d)
    with pytest.raises(ValueError, match="dilation must be >= 1, got 0"):
        involution(x, wt, s, p, 0)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        involution(x, wt, s, p, d, backend="fast")
    with pytest.raises(ValueError, match="backend='cupy' needs CUDA tensors, got tensors on cpu"):
        involution(x, wt, s, p, d, backend="cupy")


def test_explicit_cupy_without_cupy_is_a_clear_error(monkeypatch):
    import importlib

    from involution_d2.ops import cupy_backend

    involution_module = importlib.import_module("involution_d2.ops.involution")

    monkeypatch.setattr(involution_module, "cupy_is_usable", lambda: False)
    with pytest.raises(ValueError, match="CuPy is not installed or sees no GPU; install "
                                         "cupy-cuda12x / cupy-cuda13x or use backend='torch'"):
        resolve_backend("cupy", torch.device("cuda", 0))
    assert resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    cupy_backend._cupy.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(ValueError, match="backend='cupy' needs CuPy: install"):
        cupy_backend._cupy()
    cupy_backend._cupy.cache_clear()


def test_device_mismatch_is_reported():
    x, wt, s, p, d = make_inputs((1, 4, 2, 5, 5, 3, 1, 1))
    with pytest.raises(ValueError, match="x is on cpu but weight is on meta"):
        involution(x, wt.to("meta"), s, p, d)


def test_ops_import_without_detectron2_or_cupy():
    # A fresh interpreter in which detectron2 and cupy cannot be imported.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('detectron2', 'cupy'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, involution_d2.ops as ops\n"
        "x = torch.randn(1, 4, 6, 6); w = torch.randn(1, 2, 3, 3, 6, 6)\n"
        "print(ops.involution(x, w, padding=1).shape)\n"
        "assert 'cupy' not in sys.modules and 'detectron2' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "torch.Size([1, 4, 6, 6])" in proc.stdout


# ---------------------------------------------------------------------------- GPU
@requires_cupy
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cupy_backend_matches_reference(shape, dtype):
    x, wt, s, p, d = make_inputs(shape, dtype=dtype, device="cuda")
    gout = torch.randn(x.shape[0], x.shape[1], wt.shape[4], wt.shape[5], device="cuda").to(dtype)
    got = run_with_grads(x, wt, s, p, d, gout, "cupy")
    want = reference_with_grads(x, wt, s, p, d, gout)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3,
           torch.bfloat16: 3e-2}[dtype]
    for g, r in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), r, rtol=tol, atol=tol * (1 + r.abs().max().item()))


@requires_cupy
@pytest.mark.parametrize("naive", [False, True])
def test_cupy_gradcheck(naive):
    x, wt, s, p, d = make_inputs((2, 32, 2, 7, 6, 3, 2, 1), device="cuda")
    x.requires_grad_()
    wt.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: involution_cupy(a, b, s, p, d, naive), (x, wt))


@requires_cupy
def test_cupy_is_the_auto_backend_and_handles_edge_cases():
    assert resolve_backend("auto", torch.device("cuda")) == "cupy"
    x, wt, s, p, d = make_inputs(SHAPES[3], device="cuda")
    want = involution(x, wt, s, p, d, backend="reference")
    xc = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(involution(xc, wt, s, p, d, backend="cupy"), want)
    empty = involution(x[:0].requires_grad_(), wt[:0], s, p, d, backend="cupy")
    assert empty.shape == (0,) + want.shape[1:]
    empty.sum().backward()
    # A non-default stream: the kernel must run on torch's current stream.
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = involution(x, wt, s, p, d, backend="cupy")
    stream.synchronize()
    torch.testing.assert_close(out, want)


@requires_cupy
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cupy_under_cuda_autocast(dtype):
    x, wt, s, p, d = make_inputs(SHAPES[5], dtype=torch.float32, device="cuda")
    x.requires_grad_()
    with torch.autocast("cuda", dtype=dtype):
        out = involution(x, wt, s, p, d)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32
    want = involution(x.detach(), wt, s, p, d, backend="reference")
    torch.testing.assert_close(out.float(), want, rtol=3e-2, atol=3e-2 * want.abs().max().item())
