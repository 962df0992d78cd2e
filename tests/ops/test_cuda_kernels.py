"""The CUDA kernels, checked without a GPU.

1. Host emulation: the kernel source is compiled as C++ (INVOLUTION_HOST_EMULATION) and the
   exact launches that the CuPy backend plans (kernel instantiation, item count, arguments)
   run thread by thread on the CPU, with a grid smaller than needed so that the grid-stride
   loop is exercised.  Results are compared with the unfold reference.  This checks the
   index arithmetic and the host planning of every kernel, in every dtype.
2. Compilation: every instantiation the backend can ask for compiles with NVRTC (what CuPy
   uses) and with nvcc for sm_80 / sm_90, when those are present.
The same kernels run on a real GPU in tests/ops/test_ops.py (skipped without one).
"""
import ctypes
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from involution_d2.ops import cupy_backend
from involution_d2.ops.reference import involution_reference
from benchmarking.operator import naive_backward_plan, naive_forward_plan

CXX = shutil.which("g++") or shutil.which("c++")

# (N, C, G, H, W, K, stride, dilation); padding is dilation * (K - 1) // 2.
CASES = [
    (2, 32, 2, 9, 11, 3, 1, 1),
    (1, 24, 1, 7, 10, 5, 2, 1),   # odd sizes, stride 2, chunk remainder (Cg = 24)
    (2, 16, 2, 8, 6, 7, 1, 2),    # dilation 2, Cg = 8
    (1, 12, 4, 11, 9, 3, 3, 1),   # stride 3, Cg = 3
    (1, 8, 2, 10, 10, 7, 2, 2),
]
DTYPES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (1e-1, 5e-2),
}


def _make_case(case, dtype, seed):
    n, c, g, h, w, k, s, d = case
    p = d * (k - 1) // 2
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen).to(dtype)
    wt = torch.randn(n, g, k, k, ho, wo, generator=gen).to(dtype)
    gout = torch.randn(n, c, ho, wo, generator=gen).to(dtype)
    return x, wt, gout, s, p, d


def _plans(min_threads, naive):
    """Every (case, dtype) with its planned launches, under the chunk heuristic's
    min_threads (0 gives the largest chunks)."""
    old = cupy_backend.MIN_THREADS
    cupy_backend.MIN_THREADS = min_threads
    try:
        out = []
        for ci, case in enumerate(CASES):
            for dtype in DTYPES:
                x, wt, gout, s, p, d = _make_case(case, dtype, ci)
                if naive:  # the benchmark's baseline kernels
                    y, fl = naive_forward_plan(x, wt, s, p, d)
                    gx, gw, bl = naive_backward_plan(gout, x, wt, s, p, d, True, True)
                else:
                    y, fl = cupy_backend.forward_plan(x, wt, s, p, d)
                    gx, gw, bl = cupy_backend.backward_plan(gout, x, wt, s, p, d, True, True)
                out.append(((case, dtype), (x, wt, gout, s, p, d), (y, gx, gw), fl + bl))
        return out
    finally:
        cupy_backend.MIN_THREADS = old


ALL_PLANS = {
    ("chunked", 0, False): None,
    ("default", cupy_backend.MIN_THREADS, False): None,
    ("naive", 0, True): None,
}


def _emulation_source(names, pointers=3, values=8):
    """C++ launchers running each kernel thread by thread: launch_<i>(pointers, values,
    grid, block) calls names[i] with ``pointers`` tensors (the last one written) and
    ``values`` integers."""
    lines = [
        "#define INVOLUTION_HOST_EMULATION",
        '#include "involution.cuh"',
        "inv_dim3 blockIdx, blockDim, threadIdx, gridDim;",
    ]
    for idx, name in enumerate(names):
        t, i = name[name.index("<") + 1:-1].split(", ")[:2]
        args = [f"(const {t}*)p[{k}]" for k in range(pointers - 1)]
        args += [f"({t}*)p[{pointers - 1}]"] + [f"({i})v[{k}]" for k in range(values)]
        lines.append(
            f'extern "C" void launch_{idx}(void** p, const long long* v, unsigned grid, '
            "unsigned block) {\n"
            "  gridDim.x = grid; blockDim.x = block;\n"
            "  for (unsigned b = 0; b < grid; ++b) for (unsigned t = 0; t < block; ++t) {\n"
            "    blockIdx.x = b; threadIdx.x = t;\n"
            f"    {name}({', '.join(args)});\n"
            "  }\n}"
        )
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if CXX is None:
        pytest.skip("needs a C++ compiler (g++) for the host emulation of the CUDA kernels")
    plans = {key: _plans(key[1], key[2]) for key in ALL_PLANS}
    names = sorted({launch[0] for p in plans.values() for item in p for launch in item[3]})
    build = tmp_path_factory.mktemp("emulation")
    src = build / "emulation.cpp"
    src.write_text(_emulation_source(names))
    lib = build / "emulation.so"
    include = os.path.dirname(cupy_backend._SOURCE_PATH)
    subprocess.run(
        [CXX, "-O1", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wno-unknown-pragmas",
         "-I", include, str(src), "-o", str(lib)],
        check=True, capture_output=True, text=True,
    )
    dll = ctypes.CDLL(str(lib))
    functions = {name: getattr(dll, f"launch_{i}") for i, name in enumerate(names)}

    def run(launch, grid_cap):
        name, total, args = launch
        if total == 0:
            return
        ptrs = (ctypes.c_void_p * 3)(*[a.data_ptr() for a in args[:3]])
        vals = (ctypes.c_longlong * 8)(*args[3:])
        grid = min(cupy_backend.grid_size(total), grid_cap)
        functions[name](ptrs, vals, ctypes.c_uint(grid), ctypes.c_uint(cupy_backend.THREADS))

    return plans, run


@pytest.mark.parametrize("variant", list(ALL_PLANS), ids=[k[0] for k in ALL_PLANS])
def test_emulated_kernels_match_reference(emulator, variant):
    plans, run = emulator
    chunks_seen = set()
    for (case, dtype), (x, wt, gout, s, p, d), (y, gx, gw), launches in plans[variant]:
        for launch in launches:
            chunks_seen.add(launch[0])
            run(launch, grid_cap=3)
        xr = x.double().requires_grad_()
        wr = wt.double().requires_grad_()
        ref = involution_reference(xr, wr, s, p, d)
        gxr, gwr = torch.autograd.grad(ref, (xr, wr), gout.double())
        rtol, atol = DTYPES[dtype]
        scale = lambda t: 1 + t.abs().max().item()  # noqa: E731 (relative to magnitude)
        for got, want, what in ((y, ref, "forward"), (gx, gxr, "grad x"), (gw, gwr, "grad w")):
            torch.testing.assert_close(
                got.double(), want.detach(), rtol=rtol, atol=atol * scale(want),
                msg=lambda m: f"{variant[0]} {what} {case} {dtype}: {m}",
            )
    if variant[0] == "chunked":
        # The largest chunks (16 channels per thread) really were exercised.
        assert any(name.endswith(", 16>") for name in chunks_seen)


def _fused_plans():
    """(case, dtype, bias, min_threads) with inputs and the planned launch."""
    plans = []
    old = cupy_backend.MIN_THREADS
    try:
        for min_threads in (0, old):
            cupy_backend.MIN_THREADS = min_threads
            for ci, case in enumerate(CASES):
                n, c, g, h, w, k, s, d = case
                for dtype in DTYPES:
                    for bias in (True, False):
                        x, _, _, s, p, d = _make_case(case, dtype, ci)
                        ho, wo = _make_case(case, dtype, ci)[1].shape[4:]
                        gen = torch.Generator().manual_seed(100 + ci)
                        r = torch.randn(n, 5, ho, wo, generator=gen).to(dtype)
                        span = (torch.randn(g * k * k, 5, 1, 1, generator=gen) / 3).to(dtype)
                        sb = torch.randn(g * k * k, generator=gen).to(dtype) if bias else None
                        out, launches = cupy_backend.fused_forward_plan(x, r, span, sb, g, k, s,
                                                                        p, d)
                        plans.append(((case, dtype, bias, min_threads), (x, r, span, sb, g, k,
                                                                         s, p, d), out,
                                      launches))
    finally:
        cupy_backend.MIN_THREADS = old
    return plans


def test_emulated_fused_forward_matches_the_composition(tmp_path):
    # The fused kernel (span convolution in registers, then the aggregation) against the
    # span convolution followed by the unfold reference, every case, dtype, with and
    # without bias, at the largest and the default channel chunks.
    if CXX is None:
        pytest.skip("needs a C++ compiler (g++) for the host emulation of the CUDA kernels")
    plans = _fused_plans()
    names = sorted({launch[0] for *_, launches in plans for launch in launches})
    src = tmp_path / "fused.cpp"
    src.write_text(_emulation_source(names, pointers=5, values=10))
    lib = tmp_path / "fused.so"
    subprocess.run([CXX, "-O1", "-std=c++17", "-shared", "-fPIC", "-Wall",
                    "-Wno-unknown-pragmas", "-I", os.path.dirname(cupy_backend._SOURCE_PATH),
                    str(src), "-o", str(lib)], check=True, capture_output=True, text=True)
    dll = ctypes.CDLL(str(lib))
    functions = {name: getattr(dll, f"launch_{i}") for i, name in enumerate(names)}
    for key, (x, r, span, sb, g, k, s, p, d), out, launches in plans:
        for name, total, args in launches:
            ptrs = (ctypes.c_void_p * 5)(*[a.data_ptr() for a in args[:5]])
            vals = (ctypes.c_longlong * 10)(*args[5:])
            grid = min(cupy_backend.grid_size(total), 3)  # the grid-stride loop runs too
            functions[name](ptrs, vals, ctypes.c_uint(grid), ctypes.c_uint(cupy_backend.THREADS))
        n, _, ho, wo = r.shape
        # The generated weights rounded to the dtype, as both operators round them.
        kernels = torch.nn.functional.conv2d(r.double(), span.double(),
                                             sb.double() if sb is not None else None)
        kernels = kernels.to(x.dtype).double().view(n, g, k, k, ho, wo)
        want = involution_reference(x.double(), kernels, s, p, d)
        rtol, atol = DTYPES[x.dtype]
        torch.testing.assert_close(out.double(), want, rtol=rtol,
                                   atol=atol * (1 + want.abs().max().item()),
                                   msg=lambda m: f"fused {key}: {m}")
    assert any(name.endswith(", 16>") for name in names)


def _all_kernel_names():
    """Every kernel kind in every dtype and index width, at RedNet's K = 7, stride 2 (the
    emulation above already covers the other sizes; compiling all of them takes minutes)."""
    names = set()
    for dtype in DTYPES:
        for big in (False, True):
            for kind, chunk in (("involution_forward", 16), ("involution_forward", 1),
                                ("involution_backward_input", 16),
                                ("involution_backward_weight", None),
                                ("involution_backward_weight_naive", None)):
                names.add(cupy_backend.kernel_name(kind, dtype, big, 7, 2, 1, chunk))
            for chunk in (16, 1):
                names.add(cupy_backend.kernel_name("involution_fused_forward", dtype, big, 7,
                                                   2, 1, chunk))
    return sorted(names)


# Run in a child process: importing cuda.bindings into the test process leaves torch's
# checkpoint loading broken for the tests that follow ("record size ... does not match").
_NVRTC_CHECK = """
import json, sys
from cuda.bindings import nvrtc
job = json.load(sys.stdin)
err, prog = nvrtc.nvrtcCreateProgram(job["source"].encode(), b"involution.cuh", 0, [], [])
assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
for name in job["names"]:
    (err,) = nvrtc.nvrtcAddNameExpression(prog, name.encode())
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, name
opts = [b"--std=c++14", b"--gpu-architecture=compute_90"]
(err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
_, size = nvrtc.nvrtcGetProgramLogSize(prog)
log = b" " * size
nvrtc.nvrtcGetProgramLog(prog, log)
assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
for name in job["names"]:
    err, lowered = nvrtc.nvrtcGetLoweredName(prog, name.encode())
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS and lowered, name
print("compiled", len(job["names"]))
"""


def test_kernels_compile_with_nvrtc():
    import importlib.util
    import json

    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec(
            "cuda.bindings") is None:
        pytest.skip("needs NVRTC (cuda-bindings, installed with CUDA torch)")
    names = _all_kernel_names()
    job = json.dumps({"source": cupy_backend._source(), "names": names})
    proc = subprocess.run([sys.executable, "-c", _NVRTC_CHECK], input=job, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # (print's separator comes out as a NUL byte in a process that imported cuda.bindings)
    assert re.fullmatch(r"compiled\W+(\d+)\s*", proc.stdout)[1] == str(len(names))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")
def test_kernels_compile_with_nvcc(tmp_path):
    lines = ['#include "involution.cuh"']
    for name in _all_kernel_names():
        kind, targs = name.split("<", 1)
        t, i = targs.split(", ")[:2]
        pointers, values = (4, 10) if kind == "involution_fused_forward" else (2, 8)
        params = [f"const {t}*"] * pointers + [f"{t}*"] + [i] * values
        lines.append(f"template __global__ void {name}({', '.join(params)});")
    src = tmp_path / "instantiate.cu"
    src.write_text("\n".join(lines) + "\n")
    include = os.path.dirname(cupy_backend._SOURCE_PATH)
    proc = subprocess.run(
        ["nvcc", "-arch=sm_90", "-std=c++14", "-Werror", "all-warnings", "-I", include,
         "-c", str(src), "-o", str(tmp_path / "kernels.o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
