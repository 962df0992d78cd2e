"""The involution operator: every backend against the unfold reference, gradients, errors."""
import itertools
import os
import subprocess
import sys

import pytest
import torch

from involution_d2.ops import involution, native, resolve_backend

from helpers import SHAPES, make_inputs, requires_cupy, skip_if_unavailable

# The CPU backends checked against the reference ("native" compiles on first use; where
# that is impossible, its tests skip with the reason and test_native_fallback checks the
# fallback).
CPU_BACKENDS = ["torch", "native"]


def reference_with_grads(x, wt, s, p, d, gout):
    xr = x.detach().double().requires_grad_()
    wr = wt.detach().double().requires_grad_()
    out = involution(xr, wr, s, p, d, backend="reference")
    gx, gw = torch.autograd.grad(out, (xr, wr), gout.double())
    return out.detach(), gx, gw


def run_with_grads(x, wt, s, p, d, gout, backend):
    skip_if_unavailable(backend)
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


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_backends_match_reference(backend, shape):
    x, wt, s, p, d = make_inputs(shape)
    gout = torch.randn(x.shape[0], x.shape[1], wt.shape[4], wt.shape[5], dtype=x.dtype)
    for got, want in zip(run_with_grads(x, wt, s, p, d, gout, backend),
                         reference_with_grads(x, wt, s, p, d, gout)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("padding", [0, 1, 4])
def test_cpu_backends_any_padding(backend, padding):
    # Padding other than "same", including more than the kernel reaches.
    x, wt, s, p, d = make_inputs((1, 4, 2, 9, 8, 3, 2, 1), padding=padding)
    gout = torch.randn(x.shape[0], x.shape[1], wt.shape[4], wt.shape[5], dtype=x.dtype)
    for got, want in zip(run_with_grads(x, wt, s, p, d, gout, backend),
                         reference_with_grads(x, wt, s, p, d, gout)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("shape", [(1, 32, 1, 23, 40, 7, 1, 1), (2, 16, 1, 21, 31, 5, 2, 2),
                                   (1, 16, 2, 19, 20, 7, 1, 3)])
def test_native_threads_split_rows_exactly(shape, threads):
    # Each thread takes a run of output rows; the input gradient rows at the boundaries
    # are owned by one run, which recomputes the halo rows it needs.
    skip_if_unavailable("native")
    x, wt, s, p, d = make_inputs(shape)
    gout = torch.randn(x.shape[0], x.shape[1], wt.shape[4], wt.shape[5], dtype=x.dtype)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = run_with_grads(x, wt, s, p, d, gout, "native")
    finally:
        torch.set_num_threads(old)
    for g, want in zip(got, reference_with_grads(x, wt, s, p, d, gout)):
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("need", [(True, False), (False, True)])
def test_native_computes_only_the_gradients_asked_for(need):
    skip_if_unavailable("native")
    x, wt, s, p, d = make_inputs(SHAPES[1])
    x.requires_grad_(need[0])
    wt.requires_grad_(need[1])
    involution(x, wt, s, p, d, backend="native").sum().backward()
    ref = reference_with_grads(x, wt, s, p, d, torch.ones(2, 8, 5, 6, dtype=x.dtype))
    if need[0]:
        torch.testing.assert_close(x.grad, ref[1])
    else:
        assert wt.grad is not None and x.grad is None
        torch.testing.assert_close(wt.grad, ref[2])


# gradcheck perturbs every input element: the larger K = 7 and batch-2 cases skip the slow
# unfold reference.
GRADCHECK_CASES = [(b, shape) for b in ["reference"] + CPU_BACKENDS
                   for shape in ((1, 4, 2, 7, 7, 3, 1, 1), (1, 4, 1, 7, 7, 5, 2, 2),
                                 (1, 4, 2, 7, 6, 5, 2, 2))]
GRADCHECK_CASES += [(b, shape) for b in CPU_BACKENDS
                    for shape in ((1, 2, 1, 8, 7, 7, 1, 1), (2, 4, 2, 7, 6, 3, 1, 2))]


@pytest.mark.parametrize("backend,shape", GRADCHECK_CASES)
def test_gradcheck(backend, shape):
    skip_if_unavailable(backend)
    x, wt, s, p, d = make_inputs(shape)
    x.requires_grad_()
    wt.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: involution(a, b, s, p, d, backend=backend), (x, wt)
    )


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_empty_batch(backend):
    skip_if_unavailable(backend)
    x, wt, s, p, d = make_inputs((2, 8, 2, 9, 11, 3, 2, 1))
    x = x[:0].requires_grad_()
    wt = wt[:0].requires_grad_()
    out = involution(x, wt, s, p, d, backend=backend)
    assert out.shape == (0, 8, 5, 6)
    out.sum().backward()
    assert x.grad.shape == x.shape and wt.grad.shape == wt.shape


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    skip_if_unavailable(backend)
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


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [SHAPES[5], SHAPES[7]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_on_cpu(dtype, shape, backend):
    # Half precision in and out, float32 accumulation: within rounding of the result.
    x, wt, s, p, d = make_inputs(shape, dtype=dtype)
    gout = torch.randn(x.shape[0], x.shape[1], wt.shape[4], wt.shape[5]).to(dtype)
    got = run_with_grads(x, wt, s, p, d, gout, backend)
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


def test_auto_backend_on_cpu_is_native_where_it_builds(monkeypatch):
    from involution_d2.ops import backends

    monkeypatch.delenv("INVOLUTION_BACKEND", raising=False)
    backends.refresh()
    want = "native" if native.native_is_available() else "torch"
    assert resolve_backend("auto", torch.device("cpu")) == want
    monkeypatch.setenv("INVOLUTION_BACKEND", "reference")
    assert resolve_backend("auto", torch.device("cpu")) == want  # the environment, read once
    backends.refresh()
    try:
        assert resolve_backend("auto", torch.device("cpu")) == "reference"
        assert resolve_backend("torch", torch.device("cpu")) == "torch"  # explicit wins
    finally:
        monkeypatch.delenv("INVOLUTION_BACKEND")
        backends.refresh()


def test_native_fallback_without_a_compiler(tmp_path):
    # A fresh interpreter whose "compiler" fails, with an empty extension cache: one warning
    # (not one per call), "auto" runs "torch", the operator itself still runs (on the
    # pure-PyTorch kernels) and an explicit backend="native" says why it cannot.
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "from involution_d2.ops import involution, resolve_backend\n"
        "x = torch.randn(1, 4, 6, 6, requires_grad=True); w = torch.randn(1, 2, 3, 3, 6, 6)\n"
        "want = involution(x, w, padding=1, backend='reference')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(3):\n"
        "        out = involution(x, w, padding=1)\n"
        "    op = torch.ops.involution_d2.involution(x, w, 1, 1, 1)\n"
        "    op.sum().backward()\n"
        "mine = [str(c.message) for c in caught if 'native CPU kernel' in str(c.message)]\n"
        "print('WARNINGS', len(mine)); print(mine[0])\n"
        "print('AUTO', resolve_backend('auto', x.device))\n"
        "assert torch.allclose(out, want, atol=1e-5) and torch.allclose(op, want, atol=1e-5)\n"
        "assert x.grad is not None\n"
        "try:\n"
        "    involution(x, w, padding=1, backend='native')\n"
        "except RuntimeError as e:\n"
        "    print('EXPLICIT', e)\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-compiler"),
               TORCH_EXTENSIONS_DIR=str(tmp_path / "cache"))
    env.pop("INVOLUTION_NATIVE", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNINGS 1\n" in proc.stdout
    assert "could not be compiled" in proc.stdout and "falls back" in proc.stdout
    assert "AUTO torch" in proc.stdout
    assert "EXPLICIT involution: backend='native' but the native CPU kernels are unavailable" \
        in proc.stdout


def test_native_disabled_by_environment_is_silent():
    code = ("import warnings; warnings.simplefilter('error')\n"
            "import torch; from involution_d2.ops import resolve_backend\n"
            "print(resolve_backend('auto', torch.device('cpu')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, INVOLUTION_NATIVE="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "torch"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backward_saves_no_unfold(backend):
    skip_if_unavailable(backend)
    # What autograd keeps for backward: x and weight only, nothing K*K-sized.
    x, wt, s, p, d = make_inputs((1, 16, 1, 16, 16, 7, 1, 1), dtype=torch.float32)
    x.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        involution(x, wt, s, p, d, backend=backend)
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
    with pytest.raises(ValueError, match=r"backend='cupy' \(the CuPy CUDA kernels\) runs on "
                                         r"cuda tensors, got tensors on cpu; use backend='auto'"):
        involution(x, wt, s, p, d, backend="cupy")
    with pytest.raises(ValueError, match=r"backend='native' \(the native CPU kernels\) runs on "
                                         r"cpu tensors, got tensors on meta"):
        involution(x.to("meta"), wt.to("meta"), s, p, d, backend="native")


def test_explicit_cupy_without_cupy_is_a_clear_error(monkeypatch):
    from involution_d2.ops import backends, cupy_backend

    # The backend table is the one place that decides whether the CUDA kernels run.
    cupy_backend._cupy.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    backends.refresh()
    try:
        with pytest.raises(ValueError, match=r"backend='cupy' but the CuPy CUDA kernels are "
                                             r"unavailable \(CuPy is not installed\); install "
                                             r"the CuPy wheel .*cupy-cuda12x / cupy-cuda13x"):
            resolve_backend("cupy", torch.device("cuda", 0))
        with pytest.warns(RuntimeWarning, match=r"'cupy' \(the CuPy CUDA kernels\) is "
                                                r"unavailable: CuPy is not installed; "
                                                r"backend='auto' falls back to 'torch'"):
            assert resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    finally:
        backends.refresh()
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
@pytest.mark.parametrize("kernels", ["measure", "chunked", "rows"])
def test_cupy_backend_matches_reference(shape, dtype, kernels, monkeypatch):
    from involution_d2.ops import cupy_backend

    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", kernels)
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
def test_cupy_row_kernels_equal_the_chunked_ones(monkeypatch):
    # The same terms in the same order: the same numbers, whichever kernel a shape measures
    # fastest.
    from involution_d2.ops import cupy_backend

    results = {}
    for kernels in ("chunked", "rows"):
        monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", kernels)
        for shape in SHAPES:
            x, wt, s, p, d = make_inputs(shape, device="cuda")
            gout = torch.randn(x.shape[0], x.shape[1], wt.shape[4], wt.shape[5], device="cuda")
            results.setdefault(shape, []).append(run_with_grads(x, wt, s, p, d, gout, "cupy"))
    for shape, (chunked, rows) in results.items():
        for a, b in zip(chunked, rows):
            assert torch.equal(a, b), shape


@requires_cupy
@pytest.mark.parametrize("naive", [False, True, "rows"])
def test_cupy_gradcheck(naive, monkeypatch):
    from involution_d2.ops import cupy_backend

    if naive == "rows":
        monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "rows")
        naive = False
    x, wt, s, p, d = make_inputs((2, 32, 2, 7, 6, 3, 2, 1), device="cuda")
    x.requires_grad_()
    wt.requires_grad_()
    if naive:  # the benchmark's baseline
        from benchmarking.operator import naive_cupy_involution as run
    else:
        def run(a, b, s, p, d):
            return involution(a, b, s, p, d, backend="cupy")
    assert torch.autograd.gradcheck(lambda a, b: run(a, b, s, p, d), (x, wt))


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
