"""CuPy launcher for the CUDA kernels in ``cuda/involution.cuh``.

CuPy is imported on first use only, so that the package works with torch alone.  Each
(kernel, dtype, index width, K, stride, dilation, channels per thread) is compiled once by
NVRTC per device and cached; launches go to torch's current CUDA stream.  Pointers are passed
as 64-bit integers, which also covers bfloat16 (which has no CUDA array interface).
"""
import functools
import os

import numpy as np
import torch

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


@functools.lru_cache(maxsize=None)
def cupy_is_usable():
    """True when CuPy imports and sees a CUDA device (used by backend='auto')."""
    try:
        return _cupy().cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, missing driver or runtime: fall back quietly
        return False


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


@functools.lru_cache(maxsize=None)
def _function(name, device_index):
    cupy = _cupy()
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(
            code=_source(), options=("--std=c++14",), name_expressions=(name,)
        )
        return module.get_function(name)


def _launch(launch, device):
    name, total, args = launch
    if total == 0:
        return
    cupy = _cupy()
    fn = _function(name, device.index)
    index_type = np.int64 if "long long" in name else np.int32
    packed = [np.uint64(a.data_ptr()) if isinstance(a, torch.Tensor) else index_type(a)
              for a in args]
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream.cuda_stream):
        fn((grid_size(total),), (THREADS,), tuple(packed))


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


def forward_plan(x, weight, stride, padding, dilation, naive=False):
    """The output buffer and the kernel launch (name, items, arguments) that fills it."""
    n, c, h, w = x.shape
    g, k, ho, wo = weight.shape[1], weight.shape[2], weight.shape[4], weight.shape[5]
    out = x.new_empty((n, c, ho, wo))
    chunk = 1 if naive else _chunk(c // g, n * g * ho * wo)
    big = _needs_64bit(x, weight, out)
    name = kernel_name("involution_forward", x.dtype, big, k, stride, dilation, chunk)
    total = n * g * (-(-(c // g) // chunk)) * ho * wo
    return out, [(name, total, [x, weight, out, total] + _dims(x, weight, padding))]


def backward_plan(grad_out, x, weight, stride, padding, dilation, need_x, need_w, naive=False):
    """The gradient buffers (None where not needed) and the launches that fill them."""
    n, c, h, w = x.shape
    g, k, ho, wo = weight.shape[1], weight.shape[2], weight.shape[4], weight.shape[5]
    big = _needs_64bit(x, weight, grad_out)
    dims = _dims(x, weight, padding)
    gx = gw = None
    launches = []
    if need_x:
        gx = torch.empty_like(x)
        chunk = 1 if naive else _chunk(c // g, n * g * h * w)
        name = kernel_name("involution_backward_input", x.dtype, big, k, stride, dilation, chunk)
        total = n * g * (-(-(c // g) // chunk)) * h * w
        launches.append((name, total, [grad_out, weight, gx, total] + dims))
    if need_w:
        gw = torch.empty_like(weight)
        kind = "involution_backward_weight_naive" if naive else "involution_backward_weight"
        name = kernel_name(kind, x.dtype, big, k, stride, dilation)
        total = n * g * (k * k if naive else 1) * ho * wo
        launches.append((name, total, [grad_out, x, gw, total] + dims))
    return gx, gw, launches


def cupy_forward(x, weight, stride, padding, dilation, naive=False):
    out, launches = forward_plan(x, weight, stride, padding, dilation, naive)
    for launch in launches:
        _launch(launch, x.device)
    return out


def cupy_backward(grad_out, x, weight, stride, padding, dilation, need_x, need_w, naive=False):
    gx, gw, launches = backward_plan(
        grad_out, x, weight, stride, padding, dilation, need_x, need_w, naive
    )
    for launch in launches:
        _launch(launch, x.device)
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
    out, launches = fused_forward_plan(x, reduced, span_weight, span_bias, groups, kernel_size,
                                       stride, padding, dilation)
    for launch in launches:
        _launch(launch, x.device)
    return out
