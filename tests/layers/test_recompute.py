"""involution_d2.layers.recompute on single layers: conv + norm (FrozenBatchNorm, BatchNorm in
training or eval mode, or none) + ReLU, and BatchNorm + ReLU, recomputed in backward give
autograd's sums and BatchNorm statistics bit for bit and keep the source alone; the stem's
ReLU + max pooling keeps a pooled-resolution mask and int32 indices."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import requires_detectron2, requires_gpu


def _randomized(norm):
    """``norm`` with random affine parameters and running statistics."""
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.normal_()
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2)
    return norm


def _frozen_bn(channels):
    from detectron2.layers import FrozenBatchNorm2d

    return _randomized(FrozenBatchNorm2d(channels))


def _bn(channels, train):
    return _randomized(nn.BatchNorm2d(channels).train(train))


def _norm(name, channels):
    return {"none": lambda: None, "FrozenBN": lambda: _frozen_bn(channels),
            "BN": lambda: _bn(channels, True), "BN-eval": lambda: _bn(channels, False)}[name]()


def _run(recompute, conv, norm, consumer, x, autocast=None, path=None):
    """Output, gradients (input's and every parameter's) and the shapes kept for backward;
    the forward under ``autocast`` (a dtype) where given."""
    from involution_d2.layers.recompute import recompute_into

    params = [p for m in (conv, norm, consumer) if m is not None for p in m.parameters()]
    for p in params:
        p.grad = None
    x = x.clone().requires_grad_()
    kept = []

    def pack(t):
        if all(t.data_ptr() != p.data_ptr() for p in params):
            kept.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast(
            x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        if recompute:
            out = recompute_into(consumer, x, norm, conv)
        else:
            y = conv(x) if conv is not None else x
            out = consumer(F.relu(norm(y) if norm is not None else y))
    if path is not None:  # the backward node that the recomputation made
        nodes, seen = [out.grad_fn], set()
        while nodes:
            node = nodes.pop()
            if node is not None and node not in seen:
                seen.add(node)
                nodes.extend(n for n, _ in node.next_functions)
        assert path in {type(n).__name__ for n in seen}
    out.to(x.dtype).square().sum().backward()
    return out.detach(), [x.grad] + [p.grad for p in params], kept


def _compare_conv_norm_relu(norm, stride, dtype, device, tolerance, autocast=None,
                            path="_RecomputedDirectBackward"):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride, 1, bias=norm == "none").to(device, dtype)
    norms = [_norm(norm, 8) for _ in range(2)]
    if norms[0] is not None:
        norms[1].load_state_dict(norms[0].state_dict())
        norms = [n.to(device, dtype) for n in norms]
    consumer = nn.Conv2d(8, 4, 3, 1, 1).to(device, dtype)
    x = torch.randn(2, 6, 12, 10, dtype=dtype).to(device)
    # The forwards under autocast; the backward outside, as users run it.
    want_out, want_grads, want_kept = _run(False, conv, norms[0], consumer, x, autocast)
    out, grads, kept = _run(True, conv, norms[1], consumer, x, autocast, path)
    assert out.dtype == (autocast or dtype)
    if norms[0] is not None:  # running statistics updated once, alike
        for name, want in norms[0].state_dict().items():
            assert torch.equal(norms[1].state_dict()[name], want), name
    torch.testing.assert_close(out, want_out, **tolerance)
    assert len(grads) == len(want_grads) and all(g is not None for g in grads)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, **tolerance)
    # Kept: the source (by the recomputation) and the consumer's output-side tensors only;
    # neither the convolution's output nor the ReLU's.
    mid = (2, 8, 12 // stride, 10 // stride)
    assert mid in want_kept and mid not in kept and (2, 6, 12, 10) in kept


@requires_detectron2
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("norm", ["none", "FrozenBN", "BN", "BN-eval"])
def test_conv_norm_relu_recomputed_bit_for_bit(norm, stride, dtype):
    _compare_conv_norm_relu(norm, stride, dtype, "cpu", dict(rtol=0, atol=0))


@requires_detectron2
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("norm", ["none", "FrozenBN", "BN"])
def test_conv_norm_relu_recomputed_under_autocast(norm, stride):
    """bfloat16 autocast: the convolution's inputs cast as autocast casts them, gradients in
    the parameters' dtype; bit for bit.  BatchNorm takes the rebuilt graph there."""
    _compare_conv_norm_relu(norm, stride, torch.float32, "cpu", dict(rtol=0, atol=0),
                            autocast=torch.bfloat16,
                            path="_RecomputedBackward" if norm == "BN" else
                            "_RecomputedDirectBackward")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_relu_recomputed_bit_for_bit(train, dtype):
    """A trained BatchNorm keeps its input: the ReLU's output is made again from it, and
    neither is kept twice; statistics updated once."""
    from involution_d2.layers.recompute import recompute_into

    torch.manual_seed(0)
    norms = [_bn(8, train).to(dtype) for _ in range(2)]
    norms[1].load_state_dict(norms[0].state_dict())
    consumer = nn.Conv2d(8, 4, 3, 1, 1).to(dtype)
    y = torch.randn(2, 8, 12, 10, dtype=dtype)
    results = []
    for recompute, norm in zip((False, True), norms):
        yi = y.clone().requires_grad_()
        kept = []

        def pack(t):
            if t.shape == y.shape:
                kept.append(t.data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = recompute_into(consumer, yi, norm) if recompute else \
                consumer(F.relu(norm(yi)))
        assert recompute == (type(out.grad_fn.next_functions[0][0]).__name__ ==
                             "_RecomputedDirectBackward")
        grads = torch.autograd.grad(out.square().sum(), [yi, norm.weight, norm.bias])
        results.append((out.detach(), grads, norm.state_dict(), len(set(kept))))
    (want_out, want_grads, want_state, want_kept), (out, grads, state, kept) = results
    assert torch.equal(out, want_out)
    assert all(torch.equal(g, w) for g, w in zip(grads, want_grads))
    assert all(torch.equal(state[k], v) for k, v in want_state.items())
    assert (kept, want_kept) == (1, 2)  # the norm's input; autograd keeps the ReLU's output too


@requires_detectron2
@requires_gpu
@pytest.mark.parametrize("autocast", [None, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("norm", ["none", "FrozenBN", "BN"])
def test_conv_norm_relu_recomputed_on_cuda(norm, stride, dtype, autocast):
    """cuDNN may pick other algorithms for the directly called backward: equal within
    rounding, not bit for bit."""
    if autocast is not None and dtype == torch.float64:
        pytest.skip("autocast leaves float64 alone")
    tolerance = {torch.float32: dict(rtol=1e-5, atol=1e-6),
                 torch.float64: dict(rtol=1e-12, atol=1e-12),
                 torch.float16: dict(rtol=2e-3, atol=1e-3)}[autocast or dtype]
    _compare_conv_norm_relu(norm, stride, dtype, "cuda", tolerance, autocast=autocast,
                            path="_RecomputedBackward" if autocast and norm == "BN" else
                            "_RecomputedDirectBackward")


@requires_detectron2
def test_a_second_backward_recomputes_again():
    from involution_d2.layers.recompute import recompute_into

    torch.manual_seed(0)
    conv, norm = nn.Conv2d(3, 5, 1).double(), _frozen_bn(5).double()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    out = recompute_into(lambda t: t * t, x, norm, conv).sum()
    first, = torch.autograd.grad(out, x, retain_graph=True)
    second, = torch.autograd.grad(out, x)
    want, = torch.autograd.grad((F.relu(norm(conv(x))) ** 2).sum(), x)
    torch.testing.assert_close(first, want, rtol=0, atol=0)
    torch.testing.assert_close(second, want, rtol=0, atol=0)


@pytest.mark.parametrize("width, want_kept", [
    (8, [torch.int16]),  # window offsets, negated where the output is not positive
    (16382, [torch.int16]),  # the widest input whose offsets int16 holds: up to 32766
    (16384, [torch.bool, torch.int32]),  # offsets past int16: a mask and int32 indices
])
def test_relu_max_pool_keeps_int16_window_offsets(width, want_kept):
    from involution_d2.layers.recompute import relu_max_pool

    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, width, dtype=torch.float64)
    x[0, 0, :4, :4] = -1.0  # a window with no positive element
    x[1, 2, :, 5] = x[1, 2, :, 6]  # ties: the first maximum of a window takes the gradient
    results = []
    for fn in (lambda t: F.max_pool2d(F.relu(t), 3, 2, 1), lambda t: relu_max_pool(t, 3, 2, 1)):
        xi = x.clone().requires_grad_()
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: kept.append((tuple(t.shape), t.dtype)) or t, lambda t: t):
            out = fn(xi)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out.detach(), xi.grad, kept))
    (want_out, want_grad, _), (out, grad, kept) = results
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)
    pooled = (2, 3, 5, (width + 1) // 2)
    assert sorted(kept, key=str) == [(pooled, dtype) for dtype in want_kept]


@requires_detectron2
@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_a_costly_convolution_is_kept_not_recomputed(norm, monkeypatch):
    """Above RECOMPUTE_MAX_MACS_PER_ELEMENT the convolution's output is kept (and a trained
    norm + ReLU still recomputed from it); below, it is not. Same sums either way."""
    from involution_d2.layers import recompute

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, 1, 1, bias=False).double()  # 54 multiply-adds an element
    norm_module = (_frozen_bn(8) if norm == "FrozenBN" else nn.BatchNorm2d(8)).double()
    consumer = nn.Conv2d(8, 4, 3, 1, 1).double()
    x = torch.randn(2, 6, 12, 10, dtype=torch.float64)
    mid = (2, 8, 12, 10)
    runs = {}
    for limit in (54, 53):
        monkeypatch.setattr(recompute, "RECOMPUTE_MAX_MACS_PER_ELEMENT", limit)
        norm_module.train()
        state = {k: v.clone() for k, v in norm_module.state_dict().items()}
        runs[limit] = _run(True, conv, norm_module, consumer, x)
        norm_module.load_state_dict(state)
    want_out, want_grads, _ = _run(False, conv, norm_module, consumer, x)
    assert mid not in runs[54][2] and mid in runs[53][2]
    for out, grads, _ in runs.values():
        torch.testing.assert_close(out, want_out, rtol=0, atol=0)
        for got, want in zip(grads, want_grads):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@requires_detectron2
@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_strided_involution_keeps_neither_its_pooled_input_nor_the_reduction(norm):
    from involution_d2.layers import Involution

    def run(recompute):
        torch.manual_seed(0)
        layer = Involution(16, kernel_size=3, stride=2, group_channels=4, norm=norm).double()
        layer.recompute_activations = recompute
        x = torch.randn(2, 16, 12, 10, dtype=torch.float64, requires_grad=True)
        kept = []
        own = {p.data_ptr() for p in list(layer.parameters()) + list(layer.buffers())}

        def pack(t):
            if t.data_ptr() not in own:
                kept.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = layer(x)
        out.square().sum().backward()
        return out.detach(), [x.grad] + [p.grad for p in layer.parameters()], kept, layer

    want_out, want_grads, want_kept, _ = run(False)
    out, grads, kept, layer = run(True)
    pooled, reduced = (2, 16, 6, 5), (2, 4, 6, 5)
    assert pooled in want_kept and reduced in want_kept
    assert pooled not in kept and reduced not in kept and (2, 16, 12, 10) in kept
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    for got, want in zip(grads, want_grads):
        if got is not None or want is not None:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_trained_norm_after_a_frozen_convolution():
    """Only the BatchNorm's parameters need gradients: its backward alone runs."""
    from involution_d2.layers.recompute import recompute_into

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 1).double().requires_grad_(False)
    norms = [_bn(5, True).double() for _ in range(2)]
    norms[1].load_state_dict(norms[0].state_dict())
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    want = torch.autograd.grad((F.relu(norms[0](conv(x))) ** 2).sum(), list(norms[0].parameters()))
    got = torch.autograd.grad((recompute_into(lambda t: t * t, x, norms[1], conv)).sum(),
                              list(norms[1].parameters()))
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@requires_detectron2
def test_synchronized_batch_norm_recomputed_across_processes():
    """Two processes (gloo): the recomputation gathers the statistics again, in the same
    order in each process; outputs, gradients and running statistics equal the plain
    modules', and the statistics are updated once."""
    import socket

    import torch.multiprocessing as mp

    from helpers import synchronized_batch_norm_step

    results = {}
    for recompute in (False, True):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        context = mp.get_context("spawn")
        queue = context.Queue()
        processes = [context.Process(target=synchronized_batch_norm_step,
                                     args=(rank, 2, port, recompute, queue)) for rank in (0, 1)]
        for p in processes:
            p.start()
        got = sorted((queue.get(timeout=120) for _ in processes), key=lambda r: r[0])
        for p in processes:
            p.join(timeout=60)
            assert p.exitcode == 0
        results[recompute] = got
    for (_, want_out, want_grads, want_state, want_kept), (_, out, grads, state, kept) in zip(
            results[False], results[True]):
        assert (kept, want_kept) == (0, 2)  # the norm's input, the ReLU's output: made again
        assert (out == want_out).all()
        assert len(grads) == 7 and all((g == w).all() for g, w in zip(grads, want_grads))
        assert all((state[k] == v).all() for k, v in want_state.items())
    # The processes saw different halves, and their statistics were gathered: the same.
    assert (results[True][0][3]["running_mean"] == results[True][1][3]["running_mean"]).all()
