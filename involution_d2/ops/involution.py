"""The public involution operators: argument checks, autocast, then :mod:`.op`'s call."""
import torch

from .backends import backend_names, select
from .composite import generate_kernels
from .op import AGGREGATION_RANGE, run_fused_involution, run_involution
from .reference import involution_reference

__all__ = ["involution", "fused_involution", "output_size", "resolve_backend",
           "backend_names", "AGGREGATION_RANGE", "generate_kernels", "involution_reference"]

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


def _plainly_valid(x, weight, stride, padding, dilation):
    """The common case, checked cheaply: every call pays for this, only a failing one for
    :func:`_validate`'s messages."""
    try:
        n, c, h, w = x.shape
        wn, g, k, k2, ho, wo = weight.shape
    except (AttributeError, ValueError):
        return False
    extent = dilation * (k - 1) + 1 - 2 * padding
    return (type(stride) is int and type(padding) is int and type(dilation) is int
            and stride >= 1 and padding >= 0 and dilation >= 1 and n == wn and k == k2
            and k >= 1 and g >= 1 and c % g == 0 and ho == (h - extent) // stride + 1
            and wo == (w - extent) // stride + 1 and ho >= 1 and wo >= 1
            and x.dtype is weight.dtype and x.dtype in _FLOAT_DTYPES
            and x.device == weight.device)


def _validate(x, weight, stride, padding, dilation):
    """Raises the error that names what is wrong with the arguments (and how to fix it)."""
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


def _autocasting(x):
    if not torch._C._is_any_autocast_enabled():  # one cheap call for the common case
        return False
    device_type = x.device.type
    return device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type)


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


def involution(x, weight, stride=1, padding=0, dilation=1, backend="auto"):
    """Involution of ``x`` (N, C, H, W) with per-pixel kernels ``weight`` (N, G, K, K, Ho, Wo).

    ``out[n, c, i, j] = sum_{a,b} weight[n, c // (C//G), a, b, i, j]
    * x[n, c, i*stride + a*dilation - padding, j*stride + b*dilation - padding]``,
    reading zero outside the image.  Returns (N, C, Ho, Wo).

    backend: a name in the backend table (:mod:`.backends`, ``backend_names()``): "auto"
    (the device's native kernels: "native" on the CPU once compiled, "cupy" for CUDA
    tensors where CuPy works; else "torch"), "reference" (unfold, the definition), "torch"
    (memory-efficient pure PyTorch, any device), "native" (the C++ CPU kernels) or "cupy"
    (the CUDA kernels).  Traced and compiled code records the operator
    ``torch.ops.involution_d2.involution`` with this name.  The environment variable
    INVOLUTION_BACKEND, read once, sets what "auto" means.
    """
    if not _plainly_valid(x, weight, stride, padding, dilation):
        _validate(x, weight, stride, padding, dilation)
    if x.dtype is not weight.dtype or _autocasting(x):
        x, weight = _autocast("involution", x, weight=weight)
    return run_involution(x, weight, stride, padding, dilation, backend)


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


def fused_involution(x, reduced, span_weight, span_bias, groups, kernel_size, stride=1,
                     padding=0, dilation=1, backend="auto"):
    """Involution with its kernels generated by a 1x1 convolution ("span") of ``reduced``:

    ``involution(x, conv2d(reduced, span_weight, span_bias).view(N, G, K, K, Ho, Wo), ...)``

    computed without keeping the G*K*K-channel kernels: every backend but "reference" saves
    only ``x`` and ``reduced`` for backward and regenerates the kernels there ("native"
    never writes them to memory; "cupy" generates them in registers in the forward);
    "reference" is the plain composition, differentiated by autograd.

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
    return run_fused_involution(x, reduced, span_weight, span_bias, groups, kernel_size, stride,
                                padding, dilation, backend)


def resolve_backend(backend, device):
    """The name of the backend that ``involution(..., backend=backend)`` runs on ``device``."""
    return select(backend, torch.device(device).type)[0]
