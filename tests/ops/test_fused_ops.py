"""The fused operator (span convolution + aggregation): every backend against the unfused
reference composition, gradients of all four inputs, what it saves for backward, errors."""
import pytest
import torch
import torch.nn.functional as F

from involution_d2.ops import fused_involution, involution, native, output_size

from helpers import SHAPES, make_inputs, requires_cupy, skip_if_unavailable

CPU_BACKENDS = ["torch", "native"]


def make_fused_inputs(shape, reduced_channels=5, dtype=torch.float64, seed=0, bias=True):
    n, c, g, h, w, k, s, d = shape
    p = d * (k - 1) // 2
    ho, wo = output_size(h, k, s, p, d), output_size(w, k, s, p, d)
    gen = torch.Generator().manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64).to(dtype)

    x = randn(n, c, h, w)
    reduced = randn(n, reduced_channels, ho, wo)
    span_weight = randn(g * k * k, reduced_channels, 1, 1) / reduced_channels ** 0.5
    span_bias = randn(g * k * k) if bias else None
    return x, reduced, span_weight, span_bias, g, k, s, p, d


def unfused(x, reduced, span_weight, span_bias, g, k, s, p, d):
    kernels = F.conv2d(reduced, span_weight, span_bias)
    n, _, ho, wo = kernels.shape
    return involution(x, kernels.view(n, g, k, k, ho, wo), s, p, d, backend="reference")


def with_grads(function, tensors, conf, gout, **kwargs):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in tensors]
    out = function(*leaves, *conf, **kwargs)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], gout)
    return (out.detach(),) + grads


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_matches_the_unfused_composition(backend, shape):
    skip_if_unavailable(backend)
    x, r, sw, sb, *conf = make_fused_inputs(shape)
    gout = torch.randn(x.shape[0], x.shape[1], *r.shape[2:], dtype=x.dtype)
    got = with_grads(fused_involution, (x, r, sw, sb), conf, gout, backend=backend)
    want = with_grads(unfused, (x, r, sw, sb), conf, gout)
    for name, a, b in zip(("out", "x", "reduced", "span_weight", "span_bias"), got, want):
        torch.testing.assert_close(a, b, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(2, 8, 2, 7, 9, 3, 1, 1), (1, 8, 4, 9, 8, 3, 2, 1),
                                   (1, 6, 3, 9, 7, 5, 1, 2), (2, 4, 1, 7, 6, 3, 2, 2)])
def test_fused_gradcheck(backend, shape):
    skip_if_unavailable(backend)
    x, r, sw, sb, *conf = make_fused_inputs(shape, reduced_channels=3)
    inputs = tuple(t.requires_grad_() for t in (x, r, sw, sb))
    assert torch.autograd.gradcheck(
        lambda *t: fused_involution(*t, *conf, backend=backend), inputs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fused_without_bias_and_with_flat_span_weight(backend):
    skip_if_unavailable(backend)
    x, r, sw, _, *conf = make_fused_inputs(SHAPES[5], bias=False)
    gout = torch.randn(x.shape[0], x.shape[1], *r.shape[2:], dtype=x.dtype)
    got = with_grads(fused_involution, (x, r, sw.flatten(1), None), conf, gout, backend=backend)
    want = with_grads(unfused, (x, r, sw, None), conf, gout)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[3], want[3].flatten(1))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_low_precision_on_cpu(backend, dtype):
    skip_if_unavailable(backend)
    x, r, sw, sb, *conf = make_fused_inputs(SHAPES[7], reduced_channels=8)
    want = unfused(x, r, sw, sb, *conf)
    got = fused_involution(*(t.to(dtype) for t in (x, r, sw, sb)), *conf, backend=backend)
    assert got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.parametrize("threads", [2, 3])
def test_native_fused_threads_split_rows_exactly(threads):
    skip_if_unavailable("native")
    x, r, sw, sb, *conf = make_fused_inputs((2, 32, 2, 23, 40, 7, 1, 1), dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused_involution(x, r, sw, sb, *conf, backend="native")
        torch.set_num_threads(threads)
        many = fused_involution(x, r, sw, sb, *conf, backend="native")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_fused_empty_batch(backend):
    skip_if_unavailable(backend)
    x, r, sw, sb, *conf = make_fused_inputs((0, 8, 2, 9, 11, 3, 1, 1))
    inputs = [t.requires_grad_() for t in (x, r, sw, sb)]
    out = fused_involution(*inputs, *conf, backend=backend)
    assert out.shape == (0, 8, 9, 11)
    grads = torch.autograd.grad(out.sum(), inputs)
    assert [g.shape for g in grads] == [t.shape for t in inputs]
    assert all(not g.any() for g in grads)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fused_saves_no_generated_kernels(backend):
    # The G*K*K-channel kernels are never saved for backward: only x, the reduced features
    # and the span's parameters (the "torch" backend recomputes the span in backward).
    skip_if_unavailable(backend)
    x, r, sw, sb, *conf = make_fused_inputs((2, 16, 4, 20, 24, 7, 1, 1))
    inputs = [t.requires_grad_() for t in (x, r, sw, sb)]
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fused_involution(*inputs, *conf, backend=backend)
    kernels = x.shape[0] * 4 * 49 * r.shape[2] * r.shape[3]
    assert saved and max(saved) < kernels
    assert sum(saved) <= sum(t.numel() for t in inputs)
    out.sum().backward()  # and the backward still runs


def test_fused_errors_name_the_problem():
    x, r, sw, sb, g, k, s, p, d = make_fused_inputs(SHAPES[5])
    with pytest.raises(ValueError, match=r"span_weight must have shape \(G\*K\*K, Cr, 1, 1\) = "
                                         r"\(196, 5, 1, 1\) .* got \(195, 5, 1, 1\)"):
        fused_involution(x, r, sw[:-1], sb, g, k, s, p, d)
    with pytest.raises(ValueError, match=r"span_bias must have shape \(G\*K\*K,\) = \(196,\)"):
        fused_involution(x, r, sw, sb[:-1], g, k, s, p, d)
    with pytest.raises(ValueError, match=r"reduced must have shape \(N=2, Cr, 8, 8\)"):
        fused_involution(x, r[:, :, :-1], sw, sb, g, k, s, p, d)
    with pytest.raises(ValueError, match="16 channels, which groups=3 do not divide"):
        fused_involution(x, r, sw, sb, 3, k, s, p, d)
    with pytest.raises(TypeError, match="x is torch.float64 but reduced is torch.float32"):
        fused_involution(x, r.float(), sw, sb, g, k, s, p, d)
    with pytest.raises(ValueError, match="x is on cpu but span_weight is on meta"):
        fused_involution(x, r, sw.to("meta"), sb, g, k, s, p, d)
    with pytest.raises(TypeError, match="kernel_size must be an int"):
        fused_involution(x, r, sw, sb, g, 7.0, s, p, d)


def test_fused_op_compiles_and_exports_as_one_node():
    skip_if_unavailable("native")
    x, r, sw, sb, *conf = make_fused_inputs(SHAPES[5], dtype=torch.float32)

    class Fused(torch.nn.Module):
        def forward(self, x, r, sw, sb):
            return fused_involution(x, r, sw, sb, *conf)

    want = Fused()(x, r, sw, sb)
    compiled = torch.compile(Fused(), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, r, sw, sb), want)
    program = torch.export.export(Fused(), (x, r, sw, sb))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert targets == ["involution_d2.fused_involution.default"]
    torch.testing.assert_close(program.module()(x, r, sw, sb), want)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_op_registration_passes_opcheck(bias):
    # Schema, fake kernel against the real one, autograd registration, AOT dispatch.
    x, r, sw, sb, *conf = make_fused_inputs((2, 8, 2, 7, 6, 3, 2, 1), bias=bias)
    inputs = [t.requires_grad_() if t is not None else None for t in (x, r, sw, sb)]
    torch.library.opcheck(torch.ops.involution_d2.fused_involution.default, (*inputs, *conf))


@pytest.mark.parametrize("convention", ["openmmlab", "detectron2"])
def test_flop_handle_of_the_fused_op_counts_span_and_aggregation(convention):
    # A trace of the fused operator counts what count_flops counts on the unfused "torch"
    # backend: the span convolution and the aggregation.
    from fvcore.nn import FlopCountAnalysis

    from involution_d2.analysis import count_flops, flop_handles
    from involution_d2.layers import Involution

    skip_if_unavailable("native")
    layer = Involution(32, 7, 2, backend="native").eval()
    x = torch.randn(1, 32, 20, 24)
    analysis = FlopCountAnalysis(layer, (x,)).set_op_handle(**flop_handles(convention))
    analysis.unsupported_ops_warnings(False)
    assert "fused_involution" in analysis.by_operator()
    assert analysis.total() == count_flops(layer, (x,), convention).total


class _Chosen(dict):
    """cupy_backend's choices, every shape already measured with ``variant`` fastest."""

    def __init__(self, variant):
        super().__init__()
        self.variant = variant

    def get(self, key, default=None):
        return self.variant


@requires_cupy
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[5], SHAPES[7]])
@pytest.mark.parametrize("variant", ["measure", "fused", "rows", "unfused"])
def test_cupy_fused_matches_the_composition(shape, dtype, variant, monkeypatch):
    from involution_d2.ops import cupy_backend

    if variant == "measure":
        monkeypatch.setattr(cupy_backend, "_CHOSEN", {})
    else:
        monkeypatch.setattr(cupy_backend, "_CHOSEN", _Chosen(variant))
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "measure")
    # Unfused, the span is cuDNN's convolution: in float32 exact only without TF32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x, r, sw, sb, *conf = make_fused_inputs(shape)
    want = unfused(x, r, sw, sb, *conf)
    got = fused_involution(*(t.to("cuda", dtype) for t in (x, r, sw, sb)), *conf,
                           backend="cupy")
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3,
           torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(got.double().cpu(), want, rtol=tol,
                               atol=tol * want.abs().max().item())


@requires_cupy
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[4], SHAPES[5], SHAPES[7]])
@pytest.mark.parametrize("variant", ["measure", "rows", "unfused"])
def test_cupy_fused_gradients_match_the_composition(shape, dtype, variant, monkeypatch):
    # The fused backward: "rows" generates the input gradient's weights in registers (stride
    # 1; strided shapes run unfused whatever is chosen), "unfused" generates the kernels by
    # cuDNN's convolution first.
    from involution_d2.ops import cupy_backend

    monkeypatch.setattr(cupy_backend, "_CHOSEN", {} if variant == "measure" else _Chosen(variant))
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "measure")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    x, r, sw, sb, *conf = make_fused_inputs(shape)
    gout = torch.randn(x.shape[0], x.shape[1], *r.shape[2:], dtype=x.dtype)
    # (the reference from the inputs as the dtype holds them)
    x, r, sw, sb, gout = (t.to(dtype).double() for t in (x, r, sw, sb, gout))
    want = with_grads(unfused, (x, r, sw, sb), conf, gout)
    got = with_grads(fused_involution, tuple(t.to("cuda", dtype) for t in (x, r, sw, sb)), conf,
                     gout.to("cuda", dtype), backend="cupy")
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    for name, a, b in zip(("out", "x", "reduced", "span_weight", "span_bias"), got, want):
        torch.testing.assert_close(a.double().cpu(), b, rtol=tol, atol=tol * b.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


@requires_cupy
def test_cupy_fused_gradcheck():
    x, r, sw, sb, *conf = make_fused_inputs((2, 8, 2, 7, 9, 3, 2, 1), reduced_channels=3)
    inputs = tuple(t.to("cuda").requires_grad_() for t in (x, r, sw, sb))
    assert torch.autograd.gradcheck(
        lambda *t: fused_involution(*t, *conf, backend="cupy"), inputs)


@pytest.mark.parametrize("fused", [False, True], ids=["involution", "fused_involution"])
def test_eager_calls_skip_the_dispatcher_and_match_the_registered_operator(fused):
    # Eager calls run the kernels through an autograd Function (the dispatcher's Python
    # route costs ~20 us a call); traced code keeps the operator node. Both must compute
    # the same, forward and backward, bit for bit.
    skip_if_unavailable("native")
    if fused:
        inputs = make_fused_inputs(SHAPES[5], dtype=torch.float32)
        tensors, conf = list(inputs[:4]), inputs[4:]
        public = lambda *t: fused_involution(*t, *conf, backend="native")  # noqa: E731
        registered = lambda *t: torch.ops.involution_d2.fused_involution(*t, *conf)  # noqa: E731
        node, op = "EagerFusedInvolutionBackward", "involution_d2::fused_involution"
    else:
        x, wt, s, p, d = make_inputs(SHAPES[5], dtype=torch.float32)
        tensors, conf = [x, wt], (s, p, d)
        public = lambda *t: involution(*t, *conf, backend="native")  # noqa: E731
        registered = lambda *t: torch.ops.involution_d2.involution(*t, *conf)  # noqa: E731
        node, op = "EagerInvolutionBackward", "involution_d2::involution"
    results = []
    for run in (public, registered):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        out = run(*leaves)
        grad_fn = type(out.grad_fn).__name__
        out.backward(torch.ones_like(out))
        results.append((grad_fn, out.detach(), [t.grad for t in leaves]))
    (eager_node, eager_out, eager_grads), (op_node, op_out, op_grads) = results
    assert eager_node == node and op_node != node
    assert torch.equal(eager_out, op_out)
    assert all(torch.equal(a, b) for a, b in zip(eager_grads, op_grads))
    traced = torch.jit.trace(public, tuple(t.detach() for t in tensors))
    assert op in str(traced.graph) and "PythonOp" not in str(traced.graph)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [2, 0])
def test_fused_backward_formula_matches_autograd(bias, batch):
    # The fused backward composed for backends without one ("cupy", "torch"): regenerate the
    # kernels, the aggregation's backward, then the span convolution's backward.
    from involution_d2.ops.backends import kernels_for
    from involution_d2.ops.composite import fused_backward_of

    fused_backward = fused_backward_of(kernels_for("torch", "cpu").backward)
    x, reduced, span_weight, span_bias, *conf = make_fused_inputs(SHAPES[5], bias=bias)
    x, reduced = x[:batch].contiguous(), reduced[:batch].contiguous()
    leaves = [t.clone().requires_grad_() if t is not None else None
              for t in (x, reduced, span_weight, span_bias)]
    out = unfused(*leaves, *conf)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    for mask in ([True] * 4, [False, True, False, True], [True, False, True, False]):
        grads = fused_backward(grad_out, x, reduced, span_weight, span_bias, *conf, mask)
        for leaf, grad, need in zip(leaves, grads, mask):
            if need and leaf is not None:
                torch.testing.assert_close(grad, leaf.grad, rtol=1e-10, atol=1e-10)
            elif not need:
                assert grad is None or grad.numel() == 0


def test_transforms_and_dispatch_modes_see_the_registered_operator():
    # The eager route is an autograd.Function that functorch cannot batch and dispatch
    # modes cannot see: under vmap and make_fx the call goes through the operator.
    from torch.fx.experimental.proxy_tensor import make_fx

    skip_if_unavailable("native")
    x, wt, s, p, d = make_inputs(SHAPES[0], dtype=torch.float32)

    def one(xi, wi):
        return involution(xi[None], wi[None], s, p, d, backend="native")[0]

    torch.testing.assert_close(torch.func.vmap(one)(x, wt),
                               involution(x, wt, s, p, d, backend="reference"))
    graph = make_fx(lambda a, b: involution(a, b, s, p, d, backend="native"))(x, wt)
    assert "involution_d2.involution.default" in str(graph.graph)
