"""Time and peak memory of the involution operator's backends on RedNet-50's involution
shapes, and the fused operator against its unfused steps: the library of
``tools/benchmark_involution.py`` (whose docstring says what is measured and how)."""
import os

import torch
import torch.nn.functional as F

from involution_d2.ops import fused_involution, involution, output_size
from .timing import (Glibc, PeakMemory, cpu_model, print_table, synchronize,
                        time_round_robin)

# name: (batch, channels, height, width, kernel, stride) of RedNet-50's involutions.
# "cls": ImageNet, batch 64 at 224x224; "det": COCO, batch 2 at 800x1216.
# ".s2" is the first block of a stage, where the involution carries the stride.
SHAPES = {}
for prefix, batch, (h, w) in (("cls", 64, (224, 224)), ("det", 2, (800, 1216))):
    h, w = h // 2, w // 2
    SHAPES[f"{prefix}.stem"] = (batch, 32, h, w, 7, 1)
    h, w = h // 2, w // 2
    SHAPES[f"{prefix}.res2"] = (batch, 64, h, w, 7, 1)
    for stage, c in (("res3", 128), ("res4", 256), ("res5", 512)):
        SHAPES[f"{prefix}.{stage}.s2"] = (batch, c, h, w, 7, 2)
        h, w = (h + 1) // 2, (w + 1) // 2
        SHAPES[f"{prefix}.{stage}"] = (batch, c, h, w, 7, 1)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


# The baseline on a GPU: one-thread-per-output-element CUDA kernels, written the way the
# official kernel works (in cuda/involution.cuh beside ours; launched here, not by the backend).
def naive_forward_plan(x, weight, stride, padding, dilation):
    from involution_d2.ops import cupy_backend

    n, c, h, w = x.shape
    g, k, ho, wo = weight.shape[1], weight.shape[2], weight.shape[4], weight.shape[5]
    out = x.new_empty((n, c, ho, wo))
    big = cupy_backend._needs_64bit(x, weight, out)
    name = cupy_backend.kernel_name("involution_forward", x.dtype, big, k, stride, dilation, 1)
    total = n * c * ho * wo
    return out, [(name, total, [x, weight, out, total] + cupy_backend._dims(x, weight, padding))]


def naive_backward_plan(grad_out, x, weight, stride, padding, dilation, need_x, need_w):
    from involution_d2.ops import cupy_backend

    n, c, h, w = x.shape
    g, k, ho, wo = weight.shape[1], weight.shape[2], weight.shape[4], weight.shape[5]
    big = cupy_backend._needs_64bit(x, weight, grad_out)
    dims = cupy_backend._dims(x, weight, padding)
    gx = torch.empty_like(x) if need_x else None
    gw = torch.empty_like(weight) if need_w else None
    launches = []
    if need_x:
        name = cupy_backend.kernel_name("involution_backward_input", x.dtype, big, k, stride,
                                        dilation, 1)
        launches.append((name, n * c * h * w, [grad_out, weight, gx, n * c * h * w] + dims))
    if need_w:
        name = cupy_backend.kernel_name("involution_backward_weight_naive", x.dtype, big, k,
                                        stride, dilation)
        total = n * g * k * k * ho * wo
        launches.append((name, total, [grad_out, x, gw, total] + dims))
    return gx, gw, launches


def _run_plan(plans, device):
    from involution_d2.ops import cupy_backend

    for plan in plans:
        cupy_backend._launch(plan, device)


class NaiveCupyInvolution(torch.autograd.Function):
    """The naive kernels with their backward."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        out, plans = naive_forward_plan(x, weight, stride, padding, dilation)
        _run_plan(plans, x.device)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        gx, gw, plans = naive_backward_plan(grad_out.contiguous(), x, weight, *ctx.conf,
                                            ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        _run_plan(plans, x.device)
        return gx, gw, None, None, None


def naive_cupy_involution(x, weight, stride, padding, dilation):
    return NaiveCupyInvolution.apply(x.contiguous(), weight.contiguous(), stride, padding,
                                     dilation)


def load_official_operator(path):
    """The official CuPy operator: ``involution_cuda.py`` of a d-li14/involution checkout
    (``cls/mmcls/models/utils/``; det/ and seg/ hold the same file), loaded unchanged, for
    timing against ours. It runs float32 and float64 only.

    Two stand-ins let it load beside today's libraries without OpenMMLab: ``mmcv.cnn`` (the
    file imports ConvModule for its layer class, which is not timed) where mmcv is not
    installed, and ``cupy.cuda.compile_with_cache`` (gone from recent CuPy) as an NVRTC
    module with the same ``get_function``."""
    import importlib.util
    import sys
    import types

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--official-kernel {path!r}: no such file; give the path of "
            "cls/mmcls/models/utils/involution_cuda.py in a clone of "
            "https://github.com/d-li14/involution")
    import cupy

    if importlib.util.find_spec("mmcv") is None:
        cnn = types.ModuleType("mmcv.cnn")
        cnn.ConvModule = None
        sys.modules.setdefault("mmcv", types.ModuleType("mmcv")).cnn = cnn
        sys.modules.setdefault("mmcv.cnn", cnn)
    if not hasattr(cupy.cuda, "compile_with_cache"):
        cupy.cuda.compile_with_cache = lambda code: cupy.RawModule(code=code)
    spec = importlib.util.spec_from_file_location("official_involution_cuda", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The dtypes the official operator runs (its kernels are templated on float and double).
OFFICIAL_DTYPES = (torch.float32, torch.float64)


def make_runner(backend, official=None):
    if backend == "official":
        return lambda x, w, s, p: official._involution.apply(x, w, (s, s), (p, p), (1, 1))
    if backend == "naive":
        return lambda x, w, s, p: naive_cupy_involution(x, w, s, p, 1)
    return lambda x, w, s, p: involution(x, w, s, p, 1, backend=backend)


def run_once(run, inputs, mode):
    x, w, gout, s, p = inputs
    if mode == "fwd":
        with torch.no_grad():
            run(x, w, s, p)
    else:
        run(x, w, s, p).backward(gout)
        x.grad = w.grad = None


def peak_once(run, inputs, mode, device, glibc):
    if glibc is not None:
        glibc.memory_mode()
    try:
        with PeakMemory(device) as mem:
            run_once(run, inputs, mode)
        return mem.peak
    finally:
        if glibc is not None:
            glibc.timing_mode()


def benchmark_shape(name, dtype, device, backends, modes, repeat, warmup, glibc,
                    official=None):
    n, c, h, w, k, s = SHAPES[name]
    p = (k - 1) // 2
    ho, wo = output_size(h, k, s, p), output_size(w, k, s, p)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, c, h, w, device=device, dtype=dtype, generator=gen).requires_grad_()
    wt = torch.randn(n, c // 16, k, k, ho, wo, device=device, dtype=dtype,
                     generator=gen).requires_grad_()
    gout = torch.randn(n, c, ho, wo, device=device, dtype=dtype, generator=gen)
    inputs = (x, wt, gout, s, p)
    runners = {b: make_runner(b, official) for b in backends}
    results = {}
    for mode in modes:
        runs = {b: (lambda b=b: run_once(runners[b], inputs, mode)) for b in backends}
        times = time_round_robin(runs, device, repeat, warmup)
        for b in backends:
            peak = peak_once(runners[b], inputs, mode, device, glibc)
            results[(b, mode)] = (times[b], peak)
    return results


def call_layers(device, official=None):
    """{label: fn(x, w, s, p)}: the forward call at each layer of the path from the public
    function down to the kernel launch, plus the official operator and one plain ATen
    operator on the same tensor (the floor a call costs)."""
    if device.type == "cuda":
        from involution_d2.ops.cupy_backend import cupy_forward

        layers = {"involution()": make_runner("cupy"),
                  "custom operator": lambda x, w, s, p: torch.ops.involution_d2.involution(
                      x, w, s, p, 1),
                  "CuPy launch": lambda x, w, s, p: cupy_forward(x, w, s, p, 1),
                  "naive": make_runner("naive")}
        if official is not None:
            layers["official"] = make_runner("official", official)
    else:
        from involution_d2.ops.backends import kernels_for

        kernels_for("native", "cpu")  # says why, where the native kernels cannot run
        layers = {"involution()": make_runner("native"),
                  "custom operator": lambda x, w, s, p: torch.ops.involution_d2.involution(
                      x, w, s, p, 1),
                  "native kernel": lambda x, w, s, p: torch.ops.involution_d2_cpu.forward(
                      x, w, s, p, 1)}
    layers["torch.add (floor)"] = lambda x, w, s, p: torch.add(x, 1.0)
    return layers


def per_call(name, dtype, device, layers, calls):
    """(wall us, kernel us or None) per forward call of each layer: the wall time of
    ``calls`` calls issued back to back with one synchronisation at the end (on a GPU the
    host's cost per call where it exceeds the kernel's), and on a GPU the time of the kernels
    alone, from torch.profiler."""
    import time

    from torch.profiler import ProfilerActivity, profile

    n, c, h, w, k, s = SHAPES[name]
    p = (k - 1) // 2
    ho, wo = output_size(h, k, s, p), output_size(w, k, s, p)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, c, h, w, device=device, dtype=dtype, generator=gen)
    wt = torch.randn(n, c // 16, k, k, ho, wo, device=device, dtype=dtype, generator=gen)
    results = {}
    with torch.no_grad():
        for label, run in layers.items():
            for _ in range(3):
                run(x, wt, s, p)
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                run(x, wt, s, p)
            synchronize(device)
            wall = (time.perf_counter() - t0) / calls * 1e6
            kernels = None
            if device.type == "cuda":
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(calls):
                        run(x, wt, s, p)
                    synchronize(device)
                kernels = sum(e.self_device_time_total for e in prof.key_averages()) / calls
            results[label] = (wall, kernels)
    return results


def report_per_call(args, device, shapes, dtypes, official):
    calls = args.repeat or 100
    print(f"# per call: {calls} forward calls back to back, one synchronisation at the end")
    rows = []
    for dtype in dtypes:
        layers = call_layers(device, official if DTYPES[dtype] in OFFICIAL_DTYPES else None)
        for name in shapes:
            print(f"# {name}: {SHAPES[name]}, {dtype}", flush=True)
            for label, (wall, kernels) in per_call(name, DTYPES[dtype], device, layers,
                                                   calls).items():
                row = [name, dtype, label, f"{wall:.1f}"]
                if device.type == "cuda":
                    row += [f"{kernels:.1f}", f"{max(wall - kernels, 0.0):.1f}"]
                rows.append(row)
    print()
    header = ["shape", "dtype", "call", "wall us/call"]
    if device.type == "cuda":
        header += ["kernels us/call", "host beyond kernels us/call"]
    print_table(rows, header)


# Per kernel kind: the variants launched directly (the first is the baseline of the ratios),
# and the elements it must move at least (inputs read once, outputs written once) from the
# sizes of x, w (generated kernels), out (= grad_out) and r (reduced features).
KERNEL_KINDS = {
    "forward": (("chunked", "rows"), lambda x, w, out, r: x + w + out),
    "backward_input": (("chunked", "rows"), lambda x, w, out, r: out + w + x),
    "backward_weight": (("chunked", "rows"), lambda x, w, out, r: out + x + w),
    # The fused kernels generate w in registers: x (grad_out) and r in, out (grad_x) written.
    "fused_forward": (("fused", "rows"), lambda x, w, out, r: x + r + out),
    "fused_backward_input": (("rows",), lambda x, w, out, r: out + r + x),
}
REDUCTION = 4  # RedNet's reduced features: C / 4 channels


def kernel_launches(kind, variant, tensors, s, p):
    """The launch of ``kind``'s kernel ``variant`` (cupy_backend's planning, as a call makes
    it) on ``tensors`` (x, w, grad_out, reduced, span, span bias, and the buffers out,
    grad_x, grad_w that it writes)."""
    from involution_d2.ops import cupy_backend

    x, wt, gout, r, span, bias, out, gx, gw = tensors
    if kind == "forward":
        return cupy_backend.forward_launch(variant, x, wt, out, s, p, 1)
    if kind == "backward_input":
        return cupy_backend.backward_input_launch(variant, gout, x, wt, gx, s, p, 1)
    if kind == "backward_weight":
        return cupy_backend.backward_weight_launch(variant, gout, x, wt, gw, s, p, 1)
    if kind == "fused_backward_input":
        return cupy_backend.fused_backward_input_launch(gout, r, span, bias, gx, wt.shape[1],
                                                        wt.shape[2], s, p, 1)
    return cupy_backend.fused_forward_launch(variant, x, r, span, bias, out, wt.shape[1],
                                             wt.shape[2], s, p, 1)


def kernel_tensors(name, dtype, device):
    """The inputs and output buffers of every kernel kind at shape ``name``."""
    n, c, h, w, k, s = SHAPES[name]
    p = (k - 1) // 2
    ho, wo = output_size(h, k, s, p), output_size(w, k, s, p)
    g, cr = c // 16, c // REDUCTION
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, device=device, generator=gen) * scale).to(dtype)

    x, wt, gout = randn(n, c, h, w), randn(n, g, k, k, ho, wo), randn(n, c, ho, wo)
    r, span, bias = randn(n, cr, ho, wo), randn(g * k * k, cr, scale=cr ** -0.5), randn(g * k * k)
    return (x, wt, gout, r, span, bias, torch.empty_like(gout), torch.empty_like(x),
            torch.empty_like(wt))


def kernel_times(name, dtype, device, repeat, warmup):
    """{(kind, variant): GPU us per launch}: each CUDA kernel variant of each kind on the
    shape, launched directly (no host path), timed with CUDA events over ``repeat`` launches
    after ``warmup`` (which compile it), the variants of a kind alternating round by round."""
    from involution_d2.ops import cupy_backend

    s = SHAPES[name][5]
    p = (SHAPES[name][4] - 1) // 2
    tensors = kernel_tensors(name, dtype, device)
    results = {}
    for kind, (variants, _) in KERNEL_KINDS.items():
        if kind == "backward_input":
            variants = cupy_backend.variants_for(kind, s)
        elif kind == "fused_backward_input" and "rows" not in cupy_backend.variants_for(
                "fused_backward", s):
            continue  # it gathers at strides dividing its pixels: others run unfused
        launches = {v: kernel_launches(kind, v, tensors, s, p) for v in variants}
        for launch in launches.values():
            for _ in range(max(warmup, 1)):
                cupy_backend._launch(launch, device)
        samples = {v: [] for v in launches}
        for _ in range(repeat):
            for v, launch in launches.items():
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                cupy_backend._launch(launch, device)
                end.record()
                end.synchronize()
                samples[v].append(start.elapsed_time(end) * 1e3)
        for v, times in samples.items():
            results[(kind, v)] = sorted(times)[len(times) // 2]
    return results


def report_kernels(args, device, shapes, dtypes):
    """Per shape and kernel kind, the GPU time of each kernel variant side by side, the
    ratio against the chunked kernels and the time over the least-traffic time."""
    if device.type != "cuda":
        raise SystemExit("--kernels times the CUDA kernels: it needs --device cuda and a GPU")
    bandwidth = (args.bandwidth * 1e9 if args.bandwidth else device_bandwidth(device))
    repeat = args.repeat or 20
    print(f"# kernels: GPU time per launch (CUDA events), median of {repeat} after "
          f"{max(args.warmup, 1)} warm-up, variants alternating")
    rows = []
    for dtype in dtypes:
        size = torch.empty((), dtype=DTYPES[dtype]).element_size()
        for name in shapes:
            print(f"# {name}: {SHAPES[name]}, {dtype}", flush=True)
            times = kernel_times(name, DTYPES[dtype], device, repeat, args.warmup)
            n, c, h, w, k, s = SHAPES[name]
            p = (k - 1) // 2
            ho, wo = output_size(h, k, s, p), output_size(w, k, s, p)
            elements = (n * c * h * w, n * (c // 16) * k * k * ho * wo, n * c * ho * wo,
                        n * (c // REDUCTION) * ho * wo)
            for (kind, variant), us in times.items():
                variants, least_elements = KERNEL_KINDS[kind]
                least = least_elements(*elements) * size / bandwidth * 1e6 \
                    if bandwidth else None
                rows.append([name, dtype, kind, variant, f"{us:.1f}",
                             f"{times[(kind, variants[0])] / us:.2f}x",
                             f"{us / least:.1f}" if least else "-"])
    print()
    print_table(rows, ["shape", "dtype", "kernel", "variant", "GPU us",
                       "speed-up over the first variant", "x of least-traffic time"])


def calls_of_ours(run, *args):
    """The Python functions of this package that one ``run(*args)`` calls, in order."""
    import sys

    import involution_d2

    package = os.path.dirname(os.path.abspath(involution_d2.__file__))
    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(package):
            path = os.path.relpath(frame.f_code.co_filename, package)
            calls.append(f"{path}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        run(*args)
    finally:
        sys.setprofile(None)
    return calls


def report_host_cost(args, device):
    """Host time of one call on tiny tensors (1x16x4x4, K=7), where the kernel costs nearly
    nothing: the public function, the backend's forward kernel called directly, an Involution
    layer, each against a ``torch.add`` on the same input, timed in alternating rounds; and
    the calls of ours in one layer forward."""
    import timeit

    from involution_d2.layers import Involution
    from involution_d2.ops.backends import select

    calls = args.repeat or 2000
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 4, 4, generator=gen).to(device)
    w = torch.randn(1, 1, 7, 7, 4, 4, generator=gen).to(device)
    layer = Involution(16, 7).to(device).eval()
    name, kernels = select("auto", device.type)
    print(f"# host cost: {calls} calls back to back, one synchronisation at the end, min of 7 "
          f"alternating rounds; backend 'auto' is {name!r}")
    trainable = x.clone().requires_grad_()
    runs = {"torch.add (floor)": lambda: torch.add(x, 1.0),
            "involution()": lambda: involution(x, w, 1, 3, 1),
            f"{name} forward kernel": lambda: kernels.forward(x, w, 1, 3, 1),
            "involution(), x requires grad": lambda: involution(trainable, w, 1, 3, 1),
            "Involution layer": lambda: layer(x)}
    best = {label: float("inf") for label in runs}
    with torch.no_grad():
        for _ in range(7):
            for label, run in runs.items():
                if "grad" in label:
                    with torch.enable_grad():
                        seconds = timeit.timeit(run, number=calls)
                else:
                    seconds = timeit.timeit(run, number=calls)
                synchronize(device)
                best[label] = min(best[label], seconds / calls * 1e6)
        layer_calls = calls_of_ours(layer, x)
    floor = best["torch.add (floor)"]
    print_table([[label, f"{us:.2f}", f"{us / floor:.1f}x"] for label, us in best.items()],
                ["call", "us/call", "x torch.add"])
    print(f"\ncalls of ours in one Involution forward (no grad): {len(layer_calls)}")
    for call in layer_calls:
        print(f"  {call}")


FUSED_VARIANTS = ("unfused", "fused")


def benchmark_fused(name, dtype, device, backend, modes, repeat, warmup, glibc):
    """The span convolution and the aggregation, fused against unfused, with ``backend``."""
    n, c, h, w, k, s = SHAPES[name]
    p, g, cr = (k - 1) // 2, c // 16, c // 4
    ho, wo = output_size(h, k, s, p), output_size(w, k, s, p)
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*size, scale=1.0):
        t = torch.randn(*size, device=device, dtype=dtype, generator=gen) * scale
        return t.requires_grad_()

    x, reduced = randn(n, c, h, w), randn(n, cr, ho, wo)
    span_weight, span_bias = randn(g * k * k, cr, 1, 1, scale=cr ** -0.5), randn(g * k * k)
    gout = torch.randn(n, c, ho, wo, device=device, dtype=dtype, generator=gen)
    leaves = (x, reduced, span_weight, span_bias)

    def unfused():
        kernels = F.conv2d(reduced, span_weight, span_bias).view(n, g, k, k, ho, wo)
        return involution(x, kernels, s, p, 1, backend=backend)

    def fused():
        return fused_involution(x, reduced, span_weight, span_bias, g, k, s, p, 1,
                                backend=backend)

    def once(run, mode):
        if mode == "fwd":
            with torch.no_grad():
                run()
        else:
            run().backward(gout)
            for t in leaves:
                t.grad = None

    variants = {"unfused": unfused, "fused": fused}
    results = {}
    for mode in modes:
        times = time_round_robin({v: (lambda f=f: once(f, mode)) for v, f in variants.items()},
                                 device, repeat, warmup)
        for v, f in variants.items():
            if glibc is not None:
                glibc.memory_mode()
            try:
                with PeakMemory(device) as mem:
                    once(f, mode)
            finally:
                if glibc is not None:
                    glibc.timing_mode()
            results[(v, mode)] = (times[v], mem.peak)
    return results


def bytes_moved(name, dtype, mode):
    """The least traffic to device memory of one call: each input read once and each
    output written once (forward: x, w -> out; backward: grad_out, x, w -> grad_x, grad_w)."""
    n, c, h, w, k, s = SHAPES[name]
    p = (k - 1) // 2
    ho, wo = output_size(h, k, s, p), output_size(w, k, s, p)
    x, wt, out = n * c * h * w, n * (c // 16) * k * k * ho * wo, n * c * ho * wo
    elements = x + wt + out
    if mode == "fwd+bwd":
        elements += out + x + wt + x + wt
    return elements * torch.empty((), dtype=DTYPES[dtype]).element_size()


def cpu_bandwidth(repeat=7, mib=512):
    """The bandwidth (bytes/s) of copying a ``mib`` MiB tensor into another (bytes read plus
    bytes written), median of ``repeat`` copies, with torch's threads."""
    import statistics
    import time

    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # both touched: no page faults in the timed copies
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times)


def device_bandwidth(device):
    """Peak memory bandwidth (bytes/s) from the device's memory clock and bus width, or None
    where CuPy cannot tell."""
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(device.index or 0)
        # Double data rate: two transfers per clock of memoryClockRate (kHz).
        return 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8
    except Exception:  # noqa: BLE001 - no CuPy, no answer: the column is left out
        return None


def print_results(rows, backends, baselines, bandwidth=None):
    header = ["shape", "dtype", "mode", "backend", "time ms", "peak MiB"]
    header += [f"speed-up vs {b}" for b in baselines] + [f"memory / {b}" for b in baselines]
    if bandwidth:
        header += ["GB/s", "x of bandwidth bound"]
    lines = []
    for (name, dtype, mode), res in rows:
        for b in backends:
            if (b, mode) not in res:
                continue  # the official operator in a dtype it does not run
            t, m = res[(b, mode)]
            line = [name, dtype, mode, b, f"{t:.2f}", f"{m:.1f}"]
            line += [f"{res[(base, mode)][0] / t:.2f}x" if (base, mode) in res else "-"
                     for base in baselines]
            line += [f"{m / res[(base, mode)][1]:.3f}"
                     if (base, mode) in res and res[(base, mode)][1] > 0 else "-"
                     for base in baselines]
            if bandwidth:
                # The least traffic over our time, and our time over the time that traffic
                # needs at the bandwidth (1.0 is the limit).
                moved = bytes_moved(name, dtype, mode)
                line.append(f"{moved / (t / 1e3) / 1e9:.3g}")
                line.append(f"{t / 1e3 / (moved / bandwidth):.2f}")
            lines.append(line)
    print_table(lines, header)


def report(args):
    """Runs the benchmark that ``args`` (the tool's command line) asks for and prints it."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    glibc = None
    if not cuda:
        glibc = Glibc()
        glibc.timing_mode()
    shapes = args.shapes or list(SHAPES)
    dtypes = args.dtypes or (["float32", "bfloat16"] if cuda else ["float32"])
    if args.fused:
        backends = args.backends or (["cupy"] if cuda else ["native"])
    else:
        backends = args.backends or (["reference", "torch", "cupy", "naive"] if cuda
                                     else ["reference", "torch", "native"])
    official = None
    if args.official_kernel:  # the tool has checked that the device is a GPU
        official = load_official_operator(args.official_kernel)
        backends = [*backends, "official"]
    repeat = args.repeat or (20 if cuda else 3)
    baselines = [b for b in ("reference", "torch", "naive", "official") if b in backends]
    if not cuda and "native" in backends:
        from involution_d2.ops.backends import kernels_for

        kernels_for("native", "cpu")  # says why, where the native kernels cannot run

    name, bf16 = cpu_model()
    device_name = torch.cuda.get_device_name(device) if cuda else \
        f"{name} (native bfloat16: {'yes' if bf16 else 'no'})"
    how = ("" if args.per_call or args.host_cost
           else f", median of {repeat} runs after {args.warmup} warm-up")
    print(f"# device: {device_name}, torch {torch.__version__}, {torch.get_num_threads()} CPU "
          f"threads{how}")
    if not cuda:
        print(f"# load average before the run: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.per_call:
        report_per_call(args, device, shapes, dtypes, official)
        return
    if args.kernels:
        report_kernels(args, device, shapes, dtypes)
        return
    if args.host_cost:
        report_host_cost(args, device)
        return
    if args.fused:
        rows = []
        for dtype in dtypes:
            for name in shapes:
                for backend in backends:
                    print(f"# {name}: {SHAPES[name]}, {dtype}, [{backend}]", flush=True)
                    res = benchmark_fused(name, DTYPES[dtype], device, backend, args.modes,
                                          repeat, args.warmup, glibc)
                    for mode in args.modes:
                        (tu, mu), (tf, mf) = res[("unfused", mode)], res[("fused", mode)]
                        rows.append([name, dtype, mode, backend, f"{tu:.2f}", f"{tf:.2f}",
                                     f"{tu / tf:.2f}x", f"{mu:.1f}", f"{mf:.1f}",
                                     f"{mf / mu:.2f}" if mu > 0 else "-"])
        print()
        print_table(rows, ["shape", "dtype", "mode", "backend", "unfused ms", "fused ms",
                           "fused speed-up", "unfused peak MiB", "fused peak MiB",
                           "fused / unfused memory"])
        return
    rows = []
    for dtype in dtypes:
        for name in shapes:
            n, c, h, w, k, s = SHAPES[name]
            print(f"# {name}: x ({n}, {c}, {h}, {w}), K={k}, stride={s}, {dtype}", flush=True)
            runs = [b for b in backends
                    if b != "official" or DTYPES[dtype] in OFFICIAL_DTYPES]
            res = benchmark_shape(name, DTYPES[dtype], device, runs, args.modes,
                                  repeat, args.warmup, glibc, official)
            for mode in args.modes:
                rows.append(((name, dtype, mode), res))
    print()
    if args.bandwidth:
        bandwidth = args.bandwidth * 1e9
    else:
        bandwidth = device_bandwidth(device) if cuda else cpu_bandwidth()
    if bandwidth:
        how = "peak" if cuda or args.bandwidth else "measured (copy)"
        print(f"# memory bandwidth, {how}: {bandwidth / 1e9:.1f} GB/s")
    print_results(rows, backends, baselines, bandwidth)
