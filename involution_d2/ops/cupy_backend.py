"""The "cupy" backend: the CUDA kernels of ``cuda/involution.cuh``, compiled by NVRTC through
CuPy.

CuPy is imported on first use only, so that the package works with torch alone.  Each
(kernel, dtype, index width, K, stride, dilation, channels per thread) is compiled once per
device and kept; launches go to torch's current CUDA stream, whose CuPy handle is kept per
stream.  Pointers are passed as 64-bit integers, which also covers bfloat16 (which has no CUDA
array interface).
"""
import functools
import os

import numpy as np
import torch

from .backends import Backend, BackendUnavailable, Kernels, register_backend

_SOURCE_PATH = os.path.join(os.path.dirname(__file__), "cuda", "involution.cuh")
THREADS = 256  # INV_THREADS in the CUDA source
MAX_BLOCKS = 1 << 20
_CTYPES = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "half_t",
    torch.bfloat16: "bfloat16_t",
}
# The largest number of a group's channels that one thread accumulates in registers.
_MAX_CHUNK = 16
# Below this many threads, fewer channels per thread buys parallelism on a large GPU.
MIN_THREADS = 1 << 17
_INT32_LIMIT = 2**31 - 1
INSTALL_HINT = ("install the CuPy wheel for torch's CUDA (python3 tools/install.py does it: "
                "cupy-cuda12x / cupy-cuda13x), or use backend='torch'")


class CupyUnavailableError(ValueError):
    """backend="cupy" was asked for where CuPy cannot run (a ValueError: a bad argument)."""


@functools.lru_cache(maxsize=None)
def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise CupyUnavailableError(
            "backend='cupy' needs CuPy: install the wheel that matches your CUDA, e.g. "
            "`pip install cupy-cuda12x` or `pip install cupy-cuda13x`"
        ) from e
    return cupy


def cupy_is_usable():
    """True when CuPy imports and sees a CUDA device."""
    try:
        return _cupy().cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, missing driver or runtime
        return False


def _kernels():
    try:
        cupy = _cupy()
    except CupyUnavailableError:
        raise BackendUnavailable("CuPy is not installed") from None
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise BackendUnavailable("CuPy sees no GPU")
    except Exception as e:  # noqa: BLE001 - a missing driver or runtime
        if isinstance(e, BackendUnavailable):
            raise
        raise BackendUnavailable(f"CuPy cannot reach the GPU ({type(e).__name__}: {e})") from None
    return Kernels(cupy_forward, cupy_backward, cupy_fused_forward)


register_backend(Backend("cupy", ("cuda",), _kernels, "the CuPy CUDA kernels", auto_order=0,
                         hint=INSTALL_HINT, error=CupyUnavailableError))


@functools.lru_cache(maxsize=None)
def _source():
    with open(_SOURCE_PATH) as f:
        return f.read()


def kernel_name(kind, dtype, index_64bit, k, stride, dilation, chunk=None):
    args = [_CTYPES[dtype], "long long" if index_64bit else "int", str(k), str(stride),
            str(dilation)]
    if chunk is not None:
        args.append(str(chunk))
    return f"{kind}<{', '.join(args)}>"


_FUNCTIONS = {}  # (kernel name, device index) -> CuPy function
_STREAMS = {}  # (torch stream handle, device index) -> CuPy stream


def _function(name, device_index):
    fn = _FUNCTIONS.get((name, device_index))
    if fn is None:
        cupy = _cupy()
        with cupy.cuda.Device(device_index):
            module = cupy.RawModule(code=_source(), options=("--std=c++14",),
                                    name_expressions=(name,))
            fn = _FUNCTIONS[(name, device_index)] = module.get_function(name)
    return fn


def _stream(device):
    handle = torch.cuda.current_stream(device).cuda_stream
    stream = _STREAMS.get((handle, device.index))
    if stream is None:
        stream = _STREAMS[(handle, device.index)] = _cupy().cuda.ExternalStream(
            handle, device.index)
    return stream


@functools.lru_cache(maxsize=4096)
def _boxed(values, index_64bit):
    """The launch's integer arguments as the kernel's index type (layer shapes repeat)."""
    index_type = np.int64 if index_64bit else np.int32
    return tuple(index_type(v) for v in values)


def launch(name, total, pointers, values, device):
    """Runs kernel ``name`` over ``total`` items on torch's current stream: ``pointers`` are
    tensors, ``values`` integers of the kernel's index type."""
    if total == 0:
        return
    fn = _function(name, device.index)
    args = tuple(np.uint64(t.data_ptr()) for t in pointers) + _boxed(
        tuple(values), "long long" in name)
    cupy = _cupy()
    if cupy.cuda.runtime.getDevice() == device.index:
        fn((grid_size(total),), (THREADS,), args, stream=_stream(device))
    else:
        with cupy.cuda.Device(device.index):
            fn((grid_size(total),), (THREADS,), args, stream=_stream(device))


def _launch(plan, device):
    name, total, args = plan
    split = next(i for i, a in enumerate(args) if not isinstance(a, torch.Tensor))
    launch(name, total, args[:split], args[split:], device)


def grid_size(total):
    return min((total + THREADS - 1) // THREADS, MAX_BLOCKS)  # a grid-stride loop does the rest


def _needs_64bit(*tensors):
    # Offsets and the grid-stride index must stay below 2**31 in 32-bit arithmetic.
    return any(t.numel() + THREADS * MAX_BLOCKS > _INT32_LIMIT for t in tensors)


def _chunk(cg, items_per_chunk):
    """Channels per thread: reuse each weight across up to 16 channels of its group, but
    keep enough threads to fill the GPU when the spatial size is small."""
    chunk = 1
    while chunk * 2 <= min(cg, _MAX_CHUNK):
        chunk *= 2
    while chunk > 1 and items_per_chunk * (-(-cg // chunk)) < MIN_THREADS:
        chunk //= 2
    return chunk


def _dims(x, weight, padding):
    _, c, h, w = x.shape
    g, ho, wo = weight.shape[1], weight.shape[4], weight.shape[5]
    return [c, h, w, g, ho, wo, padding]


def forward_plan(x, weight, stride, padding, dilation):
    """The output buffer and the kernel launch (name, items, arguments) that fills it."""
    n, c, h, w = x.shape
    g, k, ho, wo = weight.shape[1], weight.shape[2], weight.shape[4], weight.shape[5]
    out = x.new_empty((n, c, ho, wo))
    chunk = _chunk(c // g, n * g * ho * wo)
    big = _needs_64bit(x, weight, out)
    name = kernel_name("involution_forward", x.dtype, big, k, stride, dilation, chunk)
    total = n * g * (-(-(c // g) // chunk)) * ho * wo
    return out, [(name, total, [x, weight, out, total] + _dims(x, weight, padding))]


def backward_plan(grad_out, x, weight, stride, padding, dilation, need_x, need_w):
    """The gradient buffers (None where not needed) and the launches that fill them."""
    n, c, h, w = x.shape
    g, k, ho, wo = weight.shape[1], weight.shape[2], weight.shape[4], weight.shape[5]
    big = _needs_64bit(x, weight, grad_out)
    dims = _dims(x, weight, padding)
    gx = gw = None
    launches = []
    if need_x:
        gx = torch.empty_like(x)
        chunk = _chunk(c // g, n * g * h * w)
        name = kernel_name("involution_backward_input", x.dtype, big, k, stride, dilation, chunk)
        total = n * g * (-(-(c // g) // chunk)) * h * w
        launches.append((name, total, [grad_out, weight, gx, total] + dims))
    if need_w:
        gw = torch.empty_like(weight)
        name = kernel_name("involution_backward_weight", x.dtype, big, k, stride, dilation)
        total = n * g * ho * wo
        launches.append((name, total, [grad_out, x, gw, total] + dims))
    return gx, gw, launches


def cupy_forward(x, weight, stride, padding, dilation):
    out, launches = forward_plan(x.contiguous(), weight.contiguous(), stride, padding, dilation)
    for plan in launches:
        _launch(plan, x.device)
    return out


def cupy_backward(grad_out, x, weight, stride, padding, dilation, output_mask):
    gx, gw, launches = backward_plan(grad_out.contiguous(), x.contiguous(), weight.contiguous(),
                                     stride, padding, dilation, *output_mask)
    for plan in launches:
        _launch(plan, x.device)
    return gx, gw


def fused_forward_plan(x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                       dilation):
    """The fused operator's output and its launch: each thread generates its pixel's K*K
    weights in registers from ``reduced`` (N, Cr, Ho, Wo) and the span (G*K*K, Cr), then
    aggregates.  Inputs contiguous, one dtype; ``span_bias`` may be None."""
    n, c, h, w = x.shape
    cr, ho, wo = reduced.shape[1], reduced.shape[2], reduced.shape[3]
    out = x.new_empty((n, c, ho, wo))
    span = span_weight.reshape(-1, cr)
    chunk = _chunk(c // groups, n * groups * ho * wo)
    big = _needs_64bit(x, reduced, span, out)
    name = kernel_name("involution_fused_forward", x.dtype, big, kernel_size, stride, dilation,
                       chunk)
    total = n * groups * (-(-(c // groups) // chunk)) * ho * wo
    bias = span_bias if span_bias is not None else span  # not read without a bias
    return out, [(name, total, [x, reduced, span, bias, out, total, c, h, w, groups, ho, wo,
                                padding, cr, int(span_bias is not None)])]


def cupy_fused_forward(x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                       dilation):
    # Each thread generates its pixel's kernels in registers.
    out, launches = fused_forward_plan(
        x.contiguous(), reduced.contiguous(), span_weight.contiguous(),
        span_bias.contiguous() if span_bias is not None else None, groups, kernel_size, stride,
        padding, dilation)
    for plan in launches:
        _launch(plan, x.device)
    return out
