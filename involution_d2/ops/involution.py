"""The public involution operator and its backend selection."""
import os

import torch
from torch.utils.checkpoint import checkpoint

from .cupy_backend import CupyUnavailableError
from .native import native_ops
from .op import (fused_involution_op, generate_kernels, involution_op, involution_shifted,
                 kernel_backend)
from .reference import involution_reference

BACKENDS = ("auto", "reference", "torch", "native", "cupy")
AGGREGATION_RANGE = "involution_d2::aggregation"  # profiler range of every operator call
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"involution: {name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"involution: {name} must be >= {minimum}, got {value}")


def output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    """Output length of involution (and convolution) along one axis."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def _checked_output_size(op, h, w, k, stride, padding, dilation):
    """(Ho, Wo), or a ValueError where the input is too small for the kernel."""
    ho, wo = output_size(h, k, stride, padding, dilation), output_size(w, k, stride, padding,
                                                                        dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: input {h}x{w} is smaller than the {k}x{k} kernel "
                         f"(dilation {dilation}, padding {padding}) allows")
    return ho, wo


def _validate(x, weight, stride, padding, dilation):
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"involution: {name} must be a torch.Tensor, got {type(t).__name__}")
    _check_int("stride", stride, 1)
    _check_int("padding", padding, 0)
    _check_int("dilation", dilation, 1)
    if x.dim() != 4:
        raise ValueError(f"involution: x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if weight.dim() != 6:
        raise ValueError(
            "involution: weight must have shape (N, G, K, K, Ho, Wo), "
            f"got {tuple(weight.shape)}"
        )
    n, c, h, w = x.shape
    wn, g, k, k2, ho, wo = weight.shape
    if k != k2:
        raise ValueError(f"involution: weight must hold square K x K kernels, got {k} x {k2} "
                         f"in weight shape {tuple(weight.shape)}")
    if k < 1 or g < 1:
        raise ValueError(f"involution: weight shape {tuple(weight.shape)} has an empty dimension")
    if wn != n:
        raise ValueError(f"involution: x has batch size {n} but weight has {wn}: "
                         f"weight must be (N, G, K, K, Ho, Wo) with N = {n}")
    if c % g != 0:
        raise ValueError(f"involution: x has {c} channels, which {g} groups (weight.shape[1]) "
                         "do not divide: C must be a multiple of G")
    exp_h, exp_w = _checked_output_size("involution", h, w, k, stride, padding, dilation)
    if (ho, wo) != (exp_h, exp_w):
        raise ValueError(
            f"involution: weight has output size {ho}x{wo} but x of size {h}x{w} with K={k}, "
            f"stride={stride}, padding={padding}, dilation={dilation} gives {exp_h}x{exp_w}: "
            f"expected weight shape {(n, g, k, k, exp_h, exp_w)}"
        )
    if x.device != weight.device:
        raise ValueError(f"involution: x is on {x.device} but weight is on {weight.device}; "
                         "move both to the same device")
    for name, t in (("x", x), ("weight", weight)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"involution: {name} has dtype {t.dtype}; expected one of "
                            "float16, bfloat16, float32, float64")


def _autocast(op, x, **others):
    """(x, *others) in one dtype: under torch.autocast the autocast dtype, as convolutions
    run; otherwise the others (None allowed) must already be in x's dtype."""
    device_type = x.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return (x.to(dtype),) + tuple(t.to(dtype) if t is not None else None
                                      for t in others.values())
    for name, t in others.items():
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{op}: x is {x.dtype} but {name} is {t.dtype}; cast one to the "
                            "other (under torch.autocast all are cast automatically)")
    return (x,) + tuple(others.values())


def _in_profiler_range(run, *args):
    """``run(*args)`` inside a named profiler range while a profiler runs, so that profiles
    show the involution's share (its backward shows as the backward operator or an autograd
    node named ``*InvolutionBackward``); not in traced graphs, where the range would be
    recorded as operators of its own."""
    if (torch.jit.is_tracing() or torch.compiler.is_compiling()
            or not torch._C._autograd._profiler_enabled()):  # 4 us a call: only when profiled
        return run(*args)
    with torch.profiler.record_function(AGGREGATION_RANGE):
        return run(*args)


def resolve_backend(backend, device):
    """The backend that `involution` runs for `backend` on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"involution: unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        backend = os.environ.get("INVOLUTION_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"INVOLUTION_BACKEND={backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        return kernel_backend(device.type) or "torch"
    if backend == "native":
        if device.type != "cpu":
            raise ValueError(f"involution: backend='native' is the CPU kernel, got tensors on "
                             f"{device}; use backend='cupy' or 'auto' for CUDA tensors")
        if not kernel_backend("cpu"):
            native_ops()  # raises NativeUnavailableError, saying why it could not be built
    if backend == "cupy":
        if device.type != "cuda":
            raise ValueError(f"involution: backend='cupy' needs CUDA tensors, got tensors on "
                             f"{device}; use backend='torch' or 'auto' there")
        if not kernel_backend("cuda"):
            raise CupyUnavailableError(
                "involution: backend='cupy' but CuPy is not installed or sees no GPU; "
                "install cupy-cuda12x / cupy-cuda13x or use backend='torch'"
            )
    return backend


def involution(x, weight, stride=1, padding=0, dilation=1, backend="auto"):
    """Involution of ``x`` (N, C, H, W) with per-pixel kernels ``weight`` (N, G, K, K, Ho, Wo).

    ``out[n, c, i, j] = sum_{a,b} weight[n, c // (C//G), a, b, i, j]
    * x[n, c, i*stride + a*dilation - padding, j*stride + b*dilation - padding]``,
    reading zero outside the image.  Returns (N, C, Ho, Wo).

    backend: "auto" (the native kernel of the device: "native" on the CPU once it is
    compiled, "cupy" for CUDA tensors when CuPy works; else "torch"), "reference" (unfold,
    the definition), "torch" (memory-efficient pure PyTorch, any device), "native" (the C++
    CPU kernel) or "cupy" (the CUDA kernels).  "native" and "cupy" run the custom operator
    ``torch.ops.involution_d2.involution``.  The environment variable INVOLUTION_BACKEND
    overrides what "auto" picks.
    """
    _validate(x, weight, stride, padding, dilation)
    x, weight = _autocast("involution", x, weight=weight)
    backend = resolve_backend(backend, x.device)
    return _in_profiler_range(_run, backend, x, weight, stride, padding, dilation)


def _run(backend, x, weight, stride, padding, dilation):
    if backend == "reference" and x.shape[0] > 0:
        return involution_reference(x, weight, stride, padding, dilation)
    if backend in ("native", "cupy"):
        return involution_op(x, weight, stride, padding, dilation)
    return involution_shifted(x, weight, stride, padding, dilation)


def _validate_fused(x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                    dilation):
    for name, t in (("x", x), ("reduced", reduced), ("span_weight", span_weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fused_involution: {name} must be a torch.Tensor, "
                            f"got {type(t).__name__}")
    if span_bias is not None and not isinstance(span_bias, torch.Tensor):
        raise TypeError(f"fused_involution: span_bias must be a torch.Tensor or None, "
                        f"got {type(span_bias).__name__}")
    for name, value, minimum in (("groups", groups, 1), ("kernel_size", kernel_size, 1),
                                 ("stride", stride, 1), ("padding", padding, 0),
                                 ("dilation", dilation, 1)):
        _check_int(name, value, minimum)
    if x.dim() != 4:
        raise ValueError(f"fused_involution: x must have shape (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    if c % groups != 0:
        raise ValueError(f"fused_involution: x has {c} channels, which groups={groups} do not "
                         "divide: C must be a multiple of the groups")
    ho, wo = _checked_output_size("fused_involution", h, w, kernel_size, stride, padding,
                                  dilation)
    if reduced.dim() != 4 or reduced.shape[0] != n or tuple(reduced.shape[2:]) != (ho, wo):
        raise ValueError(f"fused_involution: reduced must have shape (N={n}, Cr, {ho}, {wo}) "
                         f"(the kernel-generation features at the output size), got "
                         f"{tuple(reduced.shape)}")
    kk = groups * kernel_size * kernel_size
    cr = reduced.shape[1]
    if tuple(span_weight.shape) not in ((kk, cr), (kk, cr, 1, 1)):
        raise ValueError(f"fused_involution: span_weight must have shape (G*K*K, Cr, 1, 1) = "
                         f"({kk}, {cr}, 1, 1) for groups={groups}, kernel_size={kernel_size} and "
                         f"reduced with {cr} channels, got {tuple(span_weight.shape)}")
    if span_bias is not None and tuple(span_bias.shape) != (kk,):
        raise ValueError(f"fused_involution: span_bias must have shape (G*K*K,) = ({kk},), got "
                         f"{tuple(span_bias.shape)}")
    tensors = [("x", x), ("reduced", reduced), ("span_weight", span_weight)]
    tensors += [("span_bias", span_bias)] if span_bias is not None else []
    for name, t in tensors:
        if t.device != x.device:
            raise ValueError(f"fused_involution: x is on {x.device} but {name} is on "
                             f"{t.device}; move all to the same device")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"fused_involution: {name} has dtype {t.dtype}; expected one of "
                            "float16, bfloat16, float32, float64")


def _span_then_aggregate(aggregate, x, reduced, span_weight, span_bias, groups, kernel_size,
                         stride, padding, dilation):
    """The fused operator unfused: the span convolution, then the aggregation."""
    kernels = generate_kernels(reduced, span_weight, span_bias, groups, kernel_size)
    return aggregate(x, kernels, stride, padding, dilation)


def fused_involution(x, reduced, span_weight, span_bias, groups, kernel_size, stride=1,
                     padding=0, dilation=1, backend="auto"):
    """Involution with its kernels generated by a 1x1 convolution ("span") of ``reduced``:

    ``involution(x, conv2d(reduced, span_weight, span_bias).view(N, G, K, K, Ho, Wo), ...)``

    computed without keeping the G*K*K-channel kernels: the "native" and "cupy" backends run
    the operator ``torch.ops.involution_d2.fused_involution``, which saves only ``x`` and
    ``reduced`` for backward (and on the CPU never writes the kernels to memory); "torch"
    recomputes the span convolution in backward (activation checkpointing); "reference" is
    the plain composition, differentiated by autograd.

    Args:
        x: (N, C, H, W).
        reduced: (N, Cr, Ho, Wo), the kernel-generation features at the output size.
        span_weight: (G*K*K, Cr, 1, 1) (a 1x1 convolution's weight) or (G*K*K, Cr).
        span_bias: (G*K*K,) or None.
    """
    _validate_fused(x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                    dilation)
    x, reduced, span_weight, span_bias = _autocast(
        "fused_involution", x, reduced=reduced, span_weight=span_weight, span_bias=span_bias)
    backend = resolve_backend(backend, x.device)
    return _in_profiler_range(_run_fused, backend, x, reduced, span_weight, span_bias, groups,
                              kernel_size, stride, padding, dilation)


def _run_fused(backend, *args):
    if backend in ("native", "cupy"):
        return fused_involution_op(*args)
    if backend == "reference":
        return _span_then_aggregate(involution_reference, *args)
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                       for t in args[:4]):
        # Keep x and reduced, not the G*K*K kernels: recompute the span in backward.
        return checkpoint(_span_then_aggregate, involution_shifted, *args, use_reentrant=False)
    return _span_then_aggregate(involution_shifted, *args)
