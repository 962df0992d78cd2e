"""The Involution layer: official structure and names, results, odd sizes, norms, errors."""
import pytest
import torch
import torch.nn.functional as F

from involution_d2.layers import Involution
from involution_d2.ops import involution, native

from helpers import requires_detectron2


def official_forward(layer, x):
    """The official layer's computation, written out: floor-mode pooling (the official
    AvgPool2d), BN in eval mode, unfold-based aggregation."""
    s, k, g = layer.stride, layer.kernel_size, layer.groups
    pooled = F.avg_pool2d(x, s, s) if s > 1 else x
    bn = layer.conv1.bn
    h = F.conv2d(pooled, layer.conv1.conv.weight)
    h = F.relu(F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))
    wgt = F.conv2d(h, layer.conv2.conv.weight, layer.conv2.conv.bias)
    n, _, ho, wo = wgt.shape
    wgt = wgt.view(n, g, k, k, ho, wo)
    return involution(x, wgt, s, (k - 1) // 2, 1, backend="reference")


def randomize_bn(layer, seed=0):
    gen = torch.Generator().manual_seed(seed)
    bn = layer.conv1.bn
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(t.shape, generator=gen))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)


@pytest.mark.parametrize("channels,k,s", [(64, 7, 1), (128, 7, 2), (32, 3, 2), (16, 5, 1)])
def test_parameter_count_and_official_key_names(channels, k, s):
    layer = Involution(channels, k, s)
    g = channels // 16
    r = channels // 4
    expected = channels * r + 2 * r + r * k * k * g + k * k * g  # reference section 2
    assert sum(p.numel() for p in layer.parameters()) == expected
    assert sorted(layer.state_dict()) == sorted([
        "conv1.conv.weight", "conv1.bn.weight", "conv1.bn.bias", "conv1.bn.running_mean",
        "conv1.bn.running_var", "conv1.bn.num_batches_tracked",
        "conv2.conv.weight", "conv2.conv.bias",
    ])
    assert layer.conv1.conv.bias is None and layer.conv2.conv.bias is not None


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_matches_official_computation_on_even_sizes(stride, backend):
    torch.manual_seed(0)
    layer = Involution(32, 7, stride, backend=backend).eval()
    randomize_bn(layer)
    x = torch.randn(2, 32, 16, 12)
    torch.testing.assert_close(layer(x), official_forward(layer, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(15, 15), (15, 16), (7, 9), (1, 1)])
def test_odd_sizes_with_stride_two(size):
    torch.manual_seed(0)
    layer = Involution(32, 7, 2).eval()
    randomize_bn(layer)
    x = torch.randn(1, 32, *size, requires_grad=True)
    out = layer(x)
    assert out.shape == (1, 32, (size[0] + 1) // 2, (size[1] + 1) // 2)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # Cropping to the even part changes nothing in the interior that does not see the
    # border column/row: the top-left output pixels agree with the even-size result.
    h2, w2 = size[0] // 2 * 2, size[1] // 2 * 2
    if h2 >= 8 and w2 >= 8:
        even = layer(x[:, :, :h2, :w2].detach())
        torch.testing.assert_close(out[:, :, :h2 // 2 - 2, :w2 // 2 - 2],
                                   even[:, :, :h2 // 2 - 2, :w2 // 2 - 2])


def test_training_step_reaches_both_convs_and_empty_batches_work():
    torch.manual_seed(0)
    layer = Involution(32, 7, 2).train()
    x = torch.randn(2, 32, 10, 10, requires_grad=True)
    layer(x).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    empty = layer(torch.zeros(0, 32, 10, 10, requires_grad=True))
    assert empty.shape == (0, 32, 5, 5)
    empty.sum().backward()


def test_backends_agree_through_the_layer():
    torch.manual_seed(0)
    layer = Involution(32, 5, 2, dilation=2).eval()
    randomize_bn(layer)
    x = torch.randn(2, 32, 11, 13)
    outs = []
    for backend in ("reference", "torch"):
        layer.backend = backend
        outs.append(layer(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_plain_torch_norms():
    gn = Involution(128, 7, norm="GN")
    assert isinstance(gn.conv1.gn, torch.nn.GroupNorm)
    assert "conv1.gn.weight" in gn.state_dict()
    sync = Involution(64, 7, norm="SyncBN")
    assert isinstance(sync.conv1.bn, torch.nn.SyncBatchNorm)
    no_norm = Involution(64, 7, norm="")
    assert no_norm.conv1.norm is None and no_norm.conv1.conv.bias is not None


@requires_detectron2
def test_detectron2_norm_names():
    from detectron2.layers import FrozenBatchNorm2d

    layer = Involution(64, 7, norm="FrozenBN")
    assert isinstance(layer.conv1.bn, FrozenBatchNorm2d)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == (
        64 * 16 + 16 * 49 * 4 + 49 * 4  # the frozen norm has no trainable parameters
    )
    out = layer(torch.randn(1, 64, 8, 8))
    assert out.shape == (1, 64, 8, 8)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="kernel_size must be odd .* got 4; use 5"):
        Involution(32, 4)
    with pytest.raises(ValueError, match="channels=40 is not a multiple of group_channels=16"):
        Involution(40)
    with pytest.raises(ValueError, match="stride must be a positive int, got 0"):
        Involution(32, 7, 0)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        Involution(32, backend="cuda")
    with pytest.raises(ValueError, match=r"expected input \(N, 32, H, W\), got \(1, 16, 8, 8\)"):
        Involution(32)(torch.zeros(1, 16, 8, 8))


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("norm", ["BN", ""])
@pytest.mark.parametrize("stride", [1, 2])
def test_fused_layer_equals_the_unfused_composition(stride, norm, backend):
    # The layer runs conv2 and the aggregation as one operator; the unfused composition
    # (conv2 as a convolution module, then the aggregation) must give the same values and
    # gradients, in training and in eval.
    if backend == "native" and not native.native_is_available():
        pytest.skip("the native CPU kernel is unavailable")
    torch.manual_seed(0)
    layer = Involution(32, 7, stride, norm=norm, backend=backend)
    if norm:
        randomize_bn(layer)
    x = torch.randn(2, 32, 11, 14)

    def unfused(xi):
        pooled = layer.avgpool(xi) if layer.avgpool is not None else xi
        kernels = layer.conv2(layer.conv1(pooled))
        n, _, ho, wo = kernels.shape
        return involution(xi, kernels.view(n, layer.groups, 7, 7, ho, wo), stride, 3, 1,
                          backend="reference")

    for train in (True, False):
        layer.train(train)
        results = []
        for run in (layer, unfused):
            xi = x.clone().requires_grad_()
            out = run(xi)
            grads = torch.autograd.grad(out.square().sum(), [xi] + list(layer.parameters()))
            results.append((out,) + grads)
        for got, want in zip(*results):  # equal up to rounding (relative to the magnitude)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("stride,size,batch", [(2, (12, 10), 2), (3, (9, 12), 2), (2, (7, 10), 2),
                                               (2, (8, 8), 0)])
def test_pooling_is_avg_pool_bit_for_bit(stride, size, batch, dtype):
    """The strided layer's pooling (strided views summed where the stride divides the size,
    in float32/float64 on the CPU; AvgPool2d otherwise) equals AvgPool2d exactly, gradients
    included, and the layer takes it in training and in inference."""
    torch.manual_seed(0)
    layer = Involution(16, 3, stride, norm="")
    x = torch.randn(batch, 16, *size, dtype=torch.float64).mul_(1e3).to(dtype).requires_grad_()
    expected = layer.avgpool(x)
    got = layer._average_pool(x)
    assert got.dtype == dtype and torch.equal(got, expected)
    grad = torch.randn_like(expected)
    assert torch.equal(torch.autograd.grad(got, x, grad)[0],
                       torch.autograd.grad(expected, x, grad)[0])
    calls = []
    layer._average_pool = lambda t: calls.append(t.shape) or layer.avgpool(t)
    layer.to(dtype)(x.detach())
    assert calls == [x.shape]
