"""The backend table: a backend is one entry plus its kernels, the user's choice reaches the
kernel on both routes (eager and traced), and one place decides the fallback."""
import warnings

import pytest
import torch

from involution_d2.layers import Involution
from involution_d2.ops import (Backend, BackendUnavailable, Kernels, backend_names, involution,
                               register_backend, resolve_backend, unregister_backend)
from involution_d2.ops import backends, shifted


@pytest.fixture
def toy():
    """A CPU backend whose kernels are the pure-PyTorch ones, counting their calls."""
    calls = {"forward": 0, "backward": 0}

    def forward(x, weight, stride, padding, dilation):
        calls["forward"] += 1
        return shifted.forward(x.contiguous(), weight.contiguous(), stride, padding, dilation)

    def backward(grad_out, x, weight, stride, padding, dilation, output_mask):
        calls["backward"] += 1
        return shifted.backward(grad_out.contiguous(), x, weight, stride, padding, dilation,
                                *output_mask)

    register_backend(Backend("toy", ("cpu",), lambda: Kernels(forward, backward),
                             "the toy kernels"))
    yield calls
    unregister_backend("toy")


def test_a_registered_backend_runs_a_layer_eagerly_and_traced(toy):
    assert "toy" in backend_names()
    torch.manual_seed(0)
    layer = Involution(16, 3, 2, backend="toy", norm="").double()
    want = Involution(16, 3, 2, backend="reference", norm="").double()
    want.load_state_dict(layer.state_dict())
    x = torch.randn(2, 16, 9, 10, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert toy == {"forward": 1, "backward": 0}  # the fused operator composed from its kernels
    out.square().sum().backward()
    assert toy["backward"] == 1
    got_grads = [x.grad] + [p.grad for p in layer.parameters()]
    x.grad = None
    ref = want(x)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for got, expected in zip(got_grads, [x.grad] + [p.grad for p in want.parameters()]):
        torch.testing.assert_close(got, expected)
    # Traced, the graph keeps the operator with the toy backend's name, and runs its kernels.
    traced = torch.jit.trace(layer.eval(), (x.detach(),))
    assert "involution_d2::fused_involution" in str(traced.graph)
    before = toy["forward"]
    torch.testing.assert_close(traced(x.detach()), layer(x.detach()))
    assert toy["forward"] == before + 2


def test_a_backend_runs_only_on_its_devices_and_names_are_unique(toy):
    with pytest.raises(ValueError, match=r"backend='toy' \(the toy kernels\) runs on cpu "
                                         r"tensors, got tensors on meta"):
        involution(torch.zeros(1, 4, 3, 3, device="meta"),
                   torch.zeros(1, 1, 3, 3, 3, 3, device="meta"), 1, 1, 1, backend="toy")
    with pytest.raises(ValueError, match="a backend named 'toy' exists"):
        register_backend(Backend("toy", ("cpu",), lambda: None, "another"))
    with pytest.raises(ValueError, match=r"unknown backend 'toys'; choose one of \('auto', .*"
                                         r"'toy'\)"):
        Involution(16, 3, backend="toys")


def test_the_fallback_is_decided_once_and_said_once():
    checks = []

    def broken():
        checks.append(1)
        raise BackendUnavailable("its library is missing")

    register_backend(Backend("first", ("cpu",), broken, "the first kernels", auto_order=-1))
    try:
        x, w = torch.randn(1, 4, 5, 5), torch.randn(1, 1, 3, 3, 5, 5)
        with pytest.warns(RuntimeWarning) as caught:
            for _ in range(3):
                involution(x, w, 1, 1, 1)
        said = [str(w.message) for w in caught]
        assert len(said) == 1 and said[0].startswith(
            "involution: 'first' (the first kernels) is unavailable: its library is missing; "
            "backend='auto' falls back to ")
        assert checks == [1]  # the availability check ran once
        with pytest.raises(RuntimeError, match=r"backend='first' but the first kernels are "
                                               r"unavailable \(its library is missing\)"):
            involution(x, w, 1, 1, 1, backend="first")
    finally:
        unregister_backend("first")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", "cpu") in ("native", "torch")


def test_a_quiet_unavailability_falls_back_without_a_warning():
    register_backend(Backend("off", ("cpu",), lambda: (_ for _ in ()).throw(
        BackendUnavailable("turned off by the user", quiet=True)), "off", auto_order=-1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert resolve_backend("auto", "cpu") != "off"
    finally:
        unregister_backend("off")


def test_auto_is_not_a_name():
    with pytest.raises(ValueError, match="'auto' is not a backend's name"):
        register_backend(Backend("auto", None, lambda: None, "nothing"))
    assert backends.backend_names()[:1] == ("auto",)
