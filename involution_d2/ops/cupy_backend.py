"""The "cupy" backend: the CUDA kernels of ``cuda/involution.cuh``, compiled by NVRTC through
CuPy (each set of template instantiations as one program of extern "C" kernels, which CuPy's
disk cache keeps for later processes).

CuPy is imported on first use only, so that the package works with torch alone.  Each
(kernel, dtype, index width, K, stride, dilation, channels per thread) is compiled once per
device and kept; launches go to torch's current CUDA stream, whose CuPy handle is kept per
stream.  Pointers are passed as 64-bit integers, which also covers bfloat16 (which has no CUDA
array interface).
"""
import functools
import math
import os
import re
import time

import numpy as np
import torch

from .backends import Backend, BackendUnavailable, Kernels, register_backend
from .composite import fused_backward_of, fused_forward_of, span_backward

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
# The row-blocked kernels (*_rows): pixels of a row per thread, and at most this many channels
# (a thread keeps chunk * ROWS_PIXELS sums and a tap row's ROWS_PIXELS * K weights).
ROWS_PIXELS = 4
_ROWS_MAX_CHUNK = 8
VARIANTS = ("chunked", "rows")  # the first is the one used where no measurement can run
# The fused operator's: the span as cuDNN's convolution then the aggregation, or the
# row-blocked fused kernel. The chunked fused kernel ("fused", INVOLUTION_CUDA_KERNELS=chunked)
# is not measured: it lost to the unfused steps on the H200, and its fully unrolled K*K
# weights take longer to compile than all the other kernels of a training step together.
FUSED_VARIANTS = ("unfused", "rows")
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
    return KERNELS


register_backend(Backend("cupy", ("cuda",), _kernels, "the CuPy CUDA kernels", auto_order=0,
                         hint=INSTALL_HINT, error=CupyUnavailableError))


@functools.lru_cache(maxsize=None)
def _source():
    with open(_SOURCE_PATH) as f:
        return f.read()


def kernel_name(kind, dtype, index_64bit, k, stride, dilation, *rest):
    """The template instantiation; ``rest``: the kernel's further template arguments (channels
    per thread, pixels, ..., as the kernel declares them; None left out)."""
    args = [_CTYPES[dtype], "long long" if index_64bit else "int", str(k), str(stride),
            str(dilation)]
    args += [str(v) for v in rest if v is not None]
    return f"{kind}<{', '.join(args)}>"


_FUNCTIONS = {}  # (kernel name, device index) -> CuPy function
_STREAMS = {}  # (torch stream handle, device index) -> CuPy stream


def _function(name, device_index):
    fn = _FUNCTIONS.get((name, device_index))
    if fn is None:
        compile_kernels((name,), device_index)
        fn = _FUNCTIONS[(name, device_index)]
    return fn


def compile_kernels(names, device_index):
    """Compiles the kernels ``names`` not compiled yet on the device, in one NVRTC program
    (parsing the source once for all of them), which CuPy keeps in its disk cache: a later
    process asking for the same kernels loads them from there."""
    missing = tuple(sorted({n for n in names if (n, device_index) not in _FUNCTIONS}))
    if not missing:
        return
    cupy = _cupy()
    began = time.perf_counter()
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=program_source(missing), options=("--std=c++14",))
        for name in missing:  # (the first get_function compiles, or loads from the cache)
            _FUNCTIONS[(name, device_index)] = module.get_function(extern_c_name(name))
    COMPILED["programs"] += 1
    COMPILED["kernels"] += len(missing)
    COMPILED["seconds"] += time.perf_counter() - began


# What this process compiled or loaded from CuPy's disk cache (tools/warm_cuda_kernels.py).
COMPILED = {"programs": 0, "kernels": 0, "seconds": 0.0}


def extern_c_name(name):
    """The extern "C" kernel that runs template instantiation ``name``:
    ``involution_forward<float, int, 7, 1, 1, 16>`` -> ``involution_forward__float_int_7_1_1_16``
    (what profilers show)."""
    kind, arguments = name.split("<", 1)
    return kind + "__" + "_".join(re.findall(r"\w+", arguments))


def launch_bounds(name):
    """The kernel's __launch_bounds__: the row-blocked kernels keep many sums in registers,
    and left alone ptxas gives some of them up to 150-200 a thread, which leaves room for one
    block of 256 threads an SM (8 warps to hide the memory's latency); asking for two blocks
    caps them at 128, which all of them fit without spilling (tests/ops/test_cuda_kernels.py)."""
    return f"{THREADS}, 2" if "_rows<" in name else f"{THREADS}"


def program_source(names):
    """The source CuPy compiles for the kernels ``names``: the kernels as device functions,
    and an extern "C" kernel calling each (CuPy keeps a program compiled without NVRTC name
    expressions in its disk cache; with them it compiles again in every process)."""
    lines = ["#define INVOLUTION_EXTERN_C_KERNELS", _source()]
    for name in names:
        kind, arguments = name.split("<", 1)
        ctype, index = arguments.split(", ")[:2]
        pointers = input_pointers(name)
        values = 10 if pointers == 4 else 8
        params = ([f"const {ctype}* __restrict__ in{k}" for k in range(pointers)]
                  + [f"{ctype}* __restrict__ out"] + [f"const {index} v{k}" for k in range(values)])
        args = [f"in{k}" for k in range(pointers)] + ["out"] + [f"v{k}" for k in range(values)]
        lines.append(f'extern "C" __global__ void __launch_bounds__({launch_bounds(name)}) '
                     f'{extern_c_name(name)}({", ".join(params)}) {{ '
                     f'{name}({", ".join(args)}); }}')
    return "\n".join(lines) + "\n"


def input_pointers(name):
    """How many input tensors kernel ``name`` takes before the one it writes: the fused
    kernels x (or grad_out), reduced, span and bias; the others two."""
    return 4 if name.startswith("involution_fused_") else 2


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


def _chunk(cg, items_per_chunk, most=None):
    """Channels per thread: reuse each weight across up to 16 channels of its group, but
    keep enough threads to fill the GPU when the spatial size is small."""
    chunk = 1
    while chunk * 2 <= min(cg, most or _MAX_CHUNK):
        chunk *= 2
    while chunk > 1 and items_per_chunk * (-(-cg // chunk)) < MIN_THREADS:
        chunk //= 2
    return chunk


def rows_packing(step, widths, tensors):
    """VEC of a row-blocked kernel: elements per vector load and store, 4 or 2 where every
    row it touches starts on such a boundary (``widths``, the row lengths, and the
    ``tensors``' addresses) and each thread's first column moves by a multiple of it
    (``step``), else 1."""
    for vec in (4, 2):
        if step % vec == 0 and all(w % vec == 0 for w in widths) and all(
                t.data_ptr() % (vec * t.element_size()) == 0 for t in tensors):
            return vec
    return 1


def _window_packing(padding, widths, tensors):
    """VEC and PHASE of the kernels whose input segments start at column PX*S*col - pad
    (the forward, the weight gradient, the fused forward)."""
    vec = rows_packing(ROWS_PIXELS, widths, tensors)
    return vec, -padding % vec


def _gather_packing(k, stride, dilation, padding, widths, tensors):
    """Q, VEC and PHASE of the row-blocked input gradients: the output-gradient segments
    start at column (PX*col + pad - Q) / S + LO (InputGather in the CUDA source)."""
    q = padding % stride
    lo = (q - (k - 1) * dilation) // stride
    vec = rows_packing(ROWS_PIXELS // stride, widths, tensors)
    return q, vec, ((padding - q) // stride + lo) % vec


def _dims(x, weight, padding):
    _, c, h, w = x.shape
    g, ho, wo = weight.shape[1], weight.shape[4], weight.shape[5]
    return [c, h, w, g, ho, wo, padding]


def forward_launch(variant, x, weight, out, stride, padding, dilation):
    """The launch (kernel name, items, arguments) of forward kernel ``variant`` that fills
    ``out``; inputs contiguous."""
    n, c, h, w = x.shape
    g, k, ho, wo = weight.shape[1], weight.shape[2], weight.shape[4], weight.shape[5]
    big = _needs_64bit(x, weight, out)
    if variant == "rows":
        columns = -(-wo // ROWS_PIXELS)
        chunk = _chunk(c // g, n * g * ho * columns, _ROWS_MAX_CHUNK)
        name = kernel_name("involution_forward_rows", x.dtype, big, k, stride, dilation, chunk,
                           ROWS_PIXELS,
                           *_window_packing(padding, (w, wo), (x, weight, out)))
        total = n * g * (-(-(c // g) // chunk)) * ho * columns
    else:
        chunk = _chunk(c // g, n * g * ho * wo)
        name = kernel_name("involution_forward", x.dtype, big, k, stride, dilation, chunk)
        total = n * g * (-(-(c // g) // chunk)) * ho * wo
    return name, total, [x, weight, out, total] + _dims(x, weight, padding)


def backward_input_launch(variant, grad_out, x, weight, gx, stride, padding, dilation):
    """The launch of input-gradient kernel ``variant`` that fills ``gx``."""
    n, c, h, w = x.shape
    g, k = weight.shape[1], weight.shape[2]
    big = _needs_64bit(x, weight, grad_out)
    if variant == "rows":
        columns = -(-w // ROWS_PIXELS)
        chunk = _chunk(c // g, n * g * h * columns, _ROWS_MAX_CHUNK)
        name = kernel_name("involution_backward_input_rows", x.dtype, big, k, stride, dilation,
                           chunk, ROWS_PIXELS,
                           *_gather_packing(k, stride, dilation, padding, (w, weight.shape[5]),
                                            (grad_out, weight, gx)))
        total = n * g * (-(-(c // g) // chunk)) * h * columns
    else:
        chunk = _chunk(c // g, n * g * h * w)
        name = kernel_name("involution_backward_input", x.dtype, big, k, stride, dilation, chunk)
        total = n * g * (-(-(c // g) // chunk)) * h * w
    return name, total, [grad_out, weight, gx, total] + _dims(x, weight, padding)


def backward_weight_launch(variant, grad_out, x, weight, gw, stride, padding, dilation):
    """The launch of weight-gradient kernel ``variant`` that fills ``gw``."""
    n = x.shape[0]
    g, k, ho, wo = weight.shape[1], weight.shape[2], weight.shape[4], weight.shape[5]
    big = _needs_64bit(x, weight, grad_out)
    if variant == "rows":
        name = kernel_name("involution_backward_weight_rows", x.dtype, big, k, stride, dilation,
                           None, ROWS_PIXELS,
                           *_window_packing(padding, (x.shape[3], wo), (grad_out, x, gw)))
        total = n * g * k * ho * (-(-wo // ROWS_PIXELS))
    else:
        name = kernel_name("involution_backward_weight", x.dtype, big, k, stride, dilation)
        total = n * g * ho * wo
    return name, total, [grad_out, x, gw, total] + _dims(x, weight, padding)


def variants_for(kind, stride):
    """The kernels that can compute ``kind`` ("forward", "backward_input",
    "backward_weight", "fused_forward", "fused_backward"): the row-blocked input gradients
    gather at strides that divide ROWS_PIXELS (1, 2, 4); the fused operator may also run
    unfused (the span as cuDNN's convolution, then the aggregation, and in backward the
    aggregation's gradients from the kernels generated again)."""
    gathers = ROWS_PIXELS % stride == 0
    if kind == "fused_forward":
        return FUSED_VARIANTS
    if kind == "fused_backward":
        return FUSED_VARIANTS if gathers else FUSED_VARIANTS[:1]
    return ("chunked",) if kind == "backward_input" and not gathers else VARIANTS


def forward_plan(x, weight, stride, padding, dilation, variant="chunked"):
    """The output buffer and the kernel launches that fill it."""
    n, c = x.shape[:2]
    out = x.new_empty((n, c, weight.shape[4], weight.shape[5]))
    return out, [forward_launch(variant, x, weight, out, stride, padding, dilation)]


def backward_plan(grad_out, x, weight, stride, padding, dilation, need_x, need_w,
                  input_variant="chunked", weight_variant="chunked"):
    """The gradient buffers (None where not needed) and the launches that fill them."""
    gx = torch.empty_like(x) if need_x else None
    gw = torch.empty_like(weight) if need_w else None
    launches = []
    if need_x:
        launches.append(backward_input_launch(input_variant, grad_out, x, weight, gx, stride,
                                              padding, dilation))
    if need_w:
        launches.append(backward_weight_launch(weight_variant, grad_out, x, weight, gw, stride,
                                               padding, dilation))
    return gx, gw, launches


# Which kernel runs: "measure" (the default) times every variant on the first call of a
# layer's configuration at about a size and keeps the fastest, as cudnn.benchmark does;
# "chunked" or "rows" force one. The chunked and row-blocked kernels add the same terms in
# the same order, so that choice does not change results; the fused operator's "unfused"
# variant generates the kernels with cuDNN's convolution (TF32 where torch allows it), as
# the unfused layer does.
KERNEL_CHOICE = os.environ.get("INVOLUTION_CUDA_KERNELS", "measure")
_CHOSEN = {}  # (kind, dtype, channels, groups, K, stride, ..., size bucket, device) -> variant
MEASURE_REPEATS = 3


def size_bucket(pixels):
    """The size class of a call with ``pixels`` input pixels (N*H*W), half an octave wide.
    Detectron2 trains on batches of many sizes (multi-scale resizing, each batch padded to
    its largest image), and which kernel is faster changes with the size only gradually: the
    calls of one size class share one measurement rather than each size measuring anew."""
    return round(2 * math.log2(max(pixels, 1)))


def _choice_key(kind, x, weight, stride, padding, dilation):
    n, c, h, w = x.shape
    return (kind, x.dtype, c, weight.shape[1], weight.shape[2], stride, padding, dilation,
            size_bucket(n * h * w), x.device.index)


def _fused_choice_key(kind, x, reduced, span_bias, groups, kernel_size, stride, padding,
                      dilation, *more):
    n, c, h, w = x.shape
    return (kind, x.dtype, c, reduced.shape[1], groups, kernel_size, stride, padding, dilation,
            span_bias is not None, size_bucket(n * h * w), x.device.index) + more


def choose_variant(kind, key, runs_of, stride, device):
    """The kernel variant to run for ``kind`` on the shape that ``key`` names.
    ``runs_of(variants)`` gives {variant: a function that runs it} (called when measuring)."""
    variants = variants_for(kind, stride)
    if KERNEL_CHOICE != "measure":
        if KERNEL_CHOICE not in VARIANTS:
            raise ValueError(f"INVOLUTION_CUDA_KERNELS={KERNEL_CHOICE!r}: expected 'measure' "
                             f"(the default) or one of {', '.join(VARIANTS)}")
        if kind == "fused_forward":
            return "fused" if KERNEL_CHOICE == "chunked" else KERNEL_CHOICE
        return KERNEL_CHOICE if KERNEL_CHOICE in variants else variants[0]
    if len(variants) == 1:
        return variants[0]
    chosen = _CHOSEN.get(key)
    if chosen is None:
        # Timing cannot run inside a CUDA graph capture, and a choice by timing could differ
        # from run to run (the fused operator's unfused variant rounds differently).
        if _capturing(device) or torch.are_deterministic_algorithms_enabled():
            return variants[0]
        chosen = _CHOSEN[key] = fastest(runs_of(variants), device)
    return chosen


def launch_runs(launches, device):
    """{variant: a function that runs its launch} for {variant: launch}, the kernels compiled
    together (one NVRTC program)."""
    compile_kernels([launch[0] for launch in launches.values()], device.index)
    return {v: functools.partial(_launch, launch, device) for v, launch in launches.items()}


def _capturing(device):
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def fastest(runs, device):
    """The key of the fastest of ``runs`` ({variant: function}), each timed over
    MEASURE_REPEATS runs (CUDA events on the current stream) after one that warms it."""
    for run in runs.values():
        run()
    times = {variant: time_run(run, device) for variant, run in runs.items()}
    return min(times, key=times.get)


def time_run(run, device):
    stream = torch.cuda.current_stream(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    for _ in range(MEASURE_REPEATS):
        run()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end)


def _run_chosen(kind, make, x, weight, stride, padding, dilation):
    """Launches the variant of ``kind`` chosen for this shape (measured on its first call);
    ``make(variant)`` gives a variant's launch."""
    key = _choice_key(kind, x, weight, stride, padding, dilation)
    variant = choose_variant(kind, key,
                             lambda vs: launch_runs({v: make(v) for v in vs}, x.device),
                             stride, x.device)
    _launch(make(variant), x.device)


def cupy_forward(x, weight, stride, padding, dilation):
    x, weight = x.contiguous(), weight.contiguous()
    n, c = x.shape[:2]
    out = x.new_empty((n, c, weight.shape[4], weight.shape[5]))
    _run_chosen("forward",
                lambda v: forward_launch(v, x, weight, out, stride, padding, dilation),
                x, weight, stride, padding, dilation)
    return out


def cupy_backward(grad_out, x, weight, stride, padding, dilation, output_mask):
    grad_out, x, weight = grad_out.contiguous(), x.contiguous(), weight.contiguous()
    need_x, need_w = output_mask
    gx = torch.empty_like(x) if need_x else None
    gw = torch.empty_like(weight) if need_w else None
    if need_x:
        _run_chosen("backward_input",
                    lambda v: backward_input_launch(v, grad_out, x, weight, gx, stride, padding,
                                                    dilation),
                    x, weight, stride, padding, dilation)
    if need_w:
        _run_chosen("backward_weight",
                    lambda v: backward_weight_launch(v, grad_out, x, weight, gw, stride, padding,
                                                     dilation),
                    x, weight, stride, padding, dilation)
    return gx, gw


def fused_forward_launch(variant, x, reduced, span, bias, out, groups, kernel_size, stride,
                         padding, dilation):
    """The launch of fused kernel ``variant`` ("fused": a thread generates its pixel's K*K
    weights in registers, then aggregates; "rows": the row-blocked one) that fills ``out``.
    ``span`` is (G*K*K, Cr); ``bias`` None without one.  Inputs contiguous, one dtype."""
    n, c, h, w = x.shape
    cr, ho, wo = reduced.shape[1], reduced.shape[2], reduced.shape[3]
    big = _needs_64bit(x, reduced, span, out)
    if variant == "rows":
        columns = -(-wo // ROWS_PIXELS)
        # At stride 1 all 16 channels of a RedNet group, so that a thread generates its
        # pixels' weights once; strided, the longer input segments leave room for 8 (ptxas:
        # no spills, tests/ops/test_cuda_kernels.py).
        chunk = _chunk(c // groups, n * groups * ho * columns,
                       _MAX_CHUNK if stride == 1 else _ROWS_MAX_CHUNK)
        name = kernel_name("involution_fused_forward_rows", x.dtype, big, kernel_size, stride,
                           dilation, chunk, ROWS_PIXELS,
                           *_window_packing(padding, (w, wo), (x, reduced, out)))
        total = n * groups * (-(-(c // groups) // chunk)) * ho * columns
    else:
        chunk = _chunk(c // groups, n * groups * ho * wo)
        name = kernel_name("involution_fused_forward", x.dtype, big, kernel_size, stride,
                           dilation, chunk)
        total = n * groups * (-(-(c // groups) // chunk)) * ho * wo
    has_bias = int(bias is not None)
    bias = bias if bias is not None else span  # not read without a bias
    return name, total, [x, reduced, span, bias, out, total, c, h, w, groups, ho, wo, padding,
                         cr, has_bias]


def fused_forward_plan(x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                       dilation, variant="fused"):
    """The fused operator's output and its launches (``variant`` "fused" or "rows")."""
    n, c = x.shape[:2]
    out = x.new_empty((n, c, reduced.shape[2], reduced.shape[3]))
    span = span_weight.reshape(-1, reduced.shape[1])
    return out, [fused_forward_launch(variant, x, reduced, span, span_bias, out, groups,
                                      kernel_size, stride, padding, dilation)]


def cupy_fused_forward(x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                       dilation):
    x, reduced = x.contiguous(), reduced.contiguous()
    span = span_weight.contiguous().reshape(-1, reduced.shape[1])
    bias = span_bias.contiguous() if span_bias is not None else None
    n, c = x.shape[:2]
    out = x.new_empty((n, c, reduced.shape[2], reduced.shape[3]))

    def make(variant):
        return fused_forward_launch(variant, x, reduced, span, bias, out, groups, kernel_size,
                                    stride, padding, dilation)

    def unfused():  # the span as cuDNN's convolution, then the aggregation
        return fused_forward_of(cupy_forward)(x, reduced, span_weight, span_bias, groups,
                                              kernel_size, stride, padding, dilation)

    def runs_of(variants):
        runs = launch_runs({v: make(v) for v in variants if v != "unfused"}, x.device)
        runs["unfused"] = unfused
        return runs

    key = _fused_choice_key("fused_forward", x, reduced, span_bias, groups, kernel_size, stride,
                            padding, dilation)
    variant = choose_variant("fused_forward", key, runs_of, stride, x.device)
    if variant == "unfused":
        return unfused()
    _launch(make(variant), x.device)
    return out


def fused_backward_input_launch(grad_out, reduced, span, bias, gx, groups, kernel_size, stride,
                                padding, dilation):
    """The launch of the fused input gradient (the row-blocked kernel generating each tap
    row's weights in registers; strides that divide ROWS_PIXELS) that fills ``gx``; ``span``
    (G*K*K, Cr), ``bias`` None without one.  Inputs contiguous, one dtype."""
    n, c, h, w = gx.shape
    cr, ho, wo = reduced.shape[1], reduced.shape[2], reduced.shape[3]
    big = _needs_64bit(gx, reduced, span, grad_out)
    columns = -(-w // ROWS_PIXELS)
    packing = _gather_packing(kernel_size, stride, dilation, padding, (w, wo),
                              (grad_out, reduced, gx))
    # All 16 channels of a RedNet group, so that a thread generates its weights once; without
    # packs, 8 (16 would spill in bfloat16 within the registers of two blocks an SM).
    chunk = _chunk(c // groups, n * groups * h * columns,
                   _MAX_CHUNK if packing[1] > 1 else _ROWS_MAX_CHUNK)
    name = kernel_name("involution_fused_backward_input_rows", gx.dtype, big, kernel_size,
                       stride, dilation, chunk, ROWS_PIXELS, *packing)
    total = n * groups * (-(-(c // groups) // chunk)) * h * columns
    has_bias = int(bias is not None)
    bias = bias if bias is not None else span  # not read without a bias
    return name, total, [grad_out, reduced, span, bias, gx, total, c, h, w, groups, ho, wo,
                         padding, cr, has_bias]


def cupy_fused_backward(grad_out, x, reduced, span_weight, span_bias, groups, kernel_size,
                        stride, padding, dilation, output_mask):
    """The fused operator's backward. "unfused": the kernels generated again by cuDNN's
    convolution, then the aggregation's gradients; "rows" (strides 1, 2, 4): the input
    gradient generates its weights in registers, so no generated kernels are written.  The
    weight gradient needs no kernels: without an input gradient, none are generated either
    way."""
    grad_out, x, reduced = grad_out.contiguous(), x.contiguous(), reduced.contiguous()
    need_x, need_reduced, need_span, need_bias = output_mask
    need_bias = need_bias and span_bias is not None
    need_kernels = need_reduced or need_span or need_bias
    n = x.shape[0]
    ho, wo = reduced.shape[2], reduced.shape[3]
    args = (x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding, dilation)

    def unfused():
        return _UNFUSED_BACKWARD(grad_out, *args, output_mask)

    def without_kernels():
        gx = None
        if need_x:
            gx = torch.empty_like(x)
            span = span_weight.contiguous().reshape(-1, reduced.shape[1])
            bias = span_bias.contiguous() if span_bias is not None else None
            _launch(fused_backward_input_launch(grad_out, reduced, span, bias, gx, groups,
                                                kernel_size, stride, padding, dilation),
                    x.device)
        if not need_kernels:
            return gx, None, None, None
        gk = x.new_empty((n, groups, kernel_size, kernel_size, ho, wo))
        _run_chosen("backward_weight",
                    lambda v: backward_weight_launch(v, grad_out, x, gk, gk, stride, padding,
                                                     dilation),
                    x, gk, stride, padding, dilation)
        return (gx,) + span_backward(gk, reduced, span_weight, need_reduced, need_span,
                                     need_bias)

    if not need_x:
        return without_kernels()

    def runs_of(variants):
        return {"unfused": unfused, "rows": without_kernels}

    key = _fused_choice_key("fused_backward", x, reduced, span_bias, groups, kernel_size, stride,
                            padding, dilation, need_kernels)
    variant = choose_variant("fused_backward", key, runs_of, stride, x.device)
    return without_kernels() if variant == "rows" else unfused()


_UNFUSED_BACKWARD = fused_backward_of(cupy_backward)
KERNELS = Kernels(cupy_forward, cupy_backward, cupy_fused_forward, cupy_fused_backward)
