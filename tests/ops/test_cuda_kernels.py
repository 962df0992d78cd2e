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
import itertools
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
    # Rows whose lengths divide by 4 or 2: the row-blocked kernels load and store in packs.
    (2, 32, 2, 9, 16, 3, 1, 1),   # packs of 4 everywhere
    (1, 16, 2, 10, 16, 7, 2, 1),  # packs of 4; the strided gather, of 2
    (1, 8, 2, 8, 14, 5, 1, 1),    # packs of 2
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


def _plans(min_threads, kernels):
    """Every (case, dtype) with its planned launches of ``kernels`` ("chunked", "rows" or
    the benchmark's "naive"), under the chunk heuristic's min_threads (0 gives the largest
    chunks)."""
    old = cupy_backend.MIN_THREADS
    cupy_backend.MIN_THREADS = min_threads
    try:
        out = []
        for ci, case in enumerate(CASES):
            for dtype in DTYPES:
                x, wt, gout, s, p, d = _make_case(case, dtype, ci)
                if kernels == "naive":  # the benchmark's baseline kernels
                    y, fl = naive_forward_plan(x, wt, s, p, d)
                    gx, gw, bl = naive_backward_plan(gout, x, wt, s, p, d, True, True)
                else:
                    y, fl = cupy_backend.forward_plan(x, wt, s, p, d, kernels)
                    gx, gw, bl = cupy_backend.backward_plan(
                        gout, x, wt, s, p, d, True, True,
                        cupy_backend.variants_for("backward_input", s)[-1]
                        if kernels == "rows" else kernels, kernels)
                out.append(((case, dtype), (x, wt, gout, s, p, d), (y, gx, gw), fl + bl))
        return out
    finally:
        cupy_backend.MIN_THREADS = old


ALL_PLANS = {
    ("chunked", 0, "chunked"): None,
    ("default", cupy_backend.MIN_THREADS, "chunked"): None,
    ("rows", 0, "rows"): None,
    ("rows default", cupy_backend.MIN_THREADS, "rows"): None,
    ("naive", 0, "naive"): None,
}


def _signature(name):
    """(tensors, integers) that kernel ``name`` takes: its inputs and output, its values."""
    inputs = cupy_backend.input_pointers(name)
    return inputs + 1, (10 if inputs == 4 else 8)


def _emulation_source(names):
    """C++ launchers running each kernel thread by thread: launch_<i>(pointers, values,
    grid, block) calls names[i] with its tensors (the last one written) and integers."""
    lines = [
        "#define INVOLUTION_HOST_EMULATION",
        '#include "involution.cuh"',
        "inv_dim3 blockIdx, blockDim, threadIdx, gridDim;",
        "long long inv_misaligned_accesses = 0;",
        'extern "C" long long misaligned_accesses() { return inv_misaligned_accesses; }',
    ]
    for idx, name in enumerate(names):
        pointers, values = _signature(name)
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


def build_emulator(names, build_dir):
    """The kernels ``names`` compiled as C++ in ``build_dir``: run(launch, grid_cap) runs a
    planned launch (name, items, arguments) thread by thread on a grid of at most
    ``grid_cap`` blocks (smaller than needed: the grid-stride loop runs too)."""
    if CXX is None:
        pytest.skip("needs a C++ compiler (g++) for the host emulation of the CUDA kernels")
    names = sorted(set(names))
    src = build_dir / "emulation.cpp"
    src.write_text(_emulation_source(names))
    lib = build_dir / "emulation.so"
    proc = subprocess.run(
        [CXX, "-O1", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-Wall",
         "-Wno-unknown-pragmas", "-I", os.path.dirname(cupy_backend._SOURCE_PATH), str(src),
         "-o", str(lib)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    dll = ctypes.CDLL(str(lib))
    functions = {name: getattr(dll, f"launch_{i}") for i, name in enumerate(names)}

    def run(launch, grid_cap):
        name, total, args = launch
        if total == 0:
            return
        pointers, values = _signature(name)
        ptrs = (ctypes.c_void_p * pointers)(*[a.data_ptr() for a in args[:pointers]])
        vals = (ctypes.c_longlong * values)(*args[pointers:])
        assert len(args) == pointers + values, name
        grid = min(cupy_backend.grid_size(total), grid_cap)
        functions[name](ptrs, vals, ctypes.c_uint(grid), ctypes.c_uint(cupy_backend.THREADS))
        # A vector access off its alignment faults on a GPU: the emulation counts them.
        assert dll.misaligned_accesses() == 0, f"{name}: vector accesses off their alignment"

    dll.misaligned_accesses.restype = ctypes.c_longlong
    return run


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    plans = {key: _plans(key[1], key[2]) for key in ALL_PLANS}
    names = [launch[0] for p in plans.values() for item in p for launch in item[3]]
    return plans, build_emulator(names, tmp_path_factory.mktemp("emulation"))


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
    if variant[0] == "rows":
        kinds = {name.split("<")[0] for name in chunks_seen}
        assert {"involution_forward_rows", "involution_backward_input_rows",
                "involution_backward_weight_rows"} <= kinds
        assert any(re.search(r", 8, 4(, \d+)+>$", name) for name in chunks_seen)
        # Every pack width was planned (VEC: the last template argument but one).
        assert {int(re.search(r", (\d+), \d+>$", name)[1]) for name in chunks_seen
                if "_rows<" in name} == {1, 2, 4}


def test_emulated_row_kernels_equal_the_chunked_ones(emulator):
    # The row-blocked kernels add the same terms in the same order: the same numbers (in the
    # emulation, which contracts no multiply-add; a GPU contracts both alike).
    plans, run = emulator
    for rows, chunked in zip(plans[("rows", 0, "rows")], plans[("chunked", 0, "chunked")]):
        assert rows[0] == chunked[0]
        for plan in (rows, chunked):
            for launch in plan[3]:
                run(launch, grid_cap=5)
        for got, want, what in zip(rows[2], chunked[2], ("forward", "grad x", "grad w")):
            assert torch.equal(got, want), f"{what} {rows[0]}"


def _fused_plans():
    """(case, dtype, bias, min_threads) with inputs and the planned launch."""
    plans = []
    old = cupy_backend.MIN_THREADS
    try:
        for min_threads, variant in itertools.product((0, old), ("fused", "rows")):
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
                                                                        p, d, variant)
                        plans.append(((case, dtype, bias, min_threads, variant),
                                      (x, r, span, sb, g, k, s, p, d), out, launches))
    finally:
        cupy_backend.MIN_THREADS = old
    return plans


def test_emulated_fused_forward_matches_the_composition(tmp_path):
    # The fused kernel (span convolution in registers, then the aggregation) against the
    # span convolution followed by the unfold reference, every case, dtype, with and
    # without bias, at the largest and the default channel chunks.
    plans = _fused_plans()
    names = sorted({launch[0] for *_, launches in plans for launch in launches})
    run = build_emulator(names, tmp_path)
    for key, (x, r, span, sb, g, k, s, p, d), out, launches in plans:
        for launch in launches:
            run(launch, grid_cap=3)
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
    assert any(name.startswith("involution_fused_forward_rows<") for name in names)
    # The row-blocked kernel makes the same sums in the same order: the same numbers.
    outs = {key: out for key, _, out, _ in plans}
    for (case, dtype, bias, min_threads, variant), out in outs.items():
        if variant == "rows" and min_threads == 0:
            assert torch.equal(out, outs[(case, dtype, bias, 0, "fused")]), (case, dtype, bias)


# The fused input gradient's cases: the row-blocked kernels gather at strides dividing 4.
FUSED_BACKWARD_CASES = [case for case in CASES if 4 % case[6] == 0] + [
    (1, 24, 1, 7, 10, 5, 1, 1),   # odd sizes, chunk remainder (Cg = 24)
    (1, 12, 4, 11, 9, 3, 1, 1),   # Cg = 3
    (2, 32, 2, 9, 13, 7, 1, 1),   # RedNet's K = 7, 16 channels per group
    (1, 32, 2, 14, 15, 7, 2, 1),  # RedNet's strided blocks (padding 3: Q = 1)
    (1, 16, 2, 9, 11, 4, 2, 1),   # even K: padding 1 (Q = 1)
    (1, 8, 1, 12, 13, 3, 4, 1),   # stride 4, padding 1
    (1, 8, 2, 11, 10, 3, 2, 2),   # dilation 2: padding 2 (Q = 0)
    (1, 32, 2, 6, 16, 7, 1, 1),   # packs of 4
    (1, 32, 2, 12, 16, 7, 2, 1),  # packs of 2 at stride 2
]


def _generated_in_kernel_order(r, span, bias, dtype):
    """The generated kernels summed as the fused kernels sum them (the bias, then each
    reduced channel in order, in the accumulation type, products rounded before the sum),
    rounded to ``dtype``: what the unfused kernels must be given to compute bit for bit
    what the fused ones compute."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    n, cr, ho, wo = r.shape
    span = span.reshape(-1, cr).to(acc)
    w = (bias.to(acc) if bias is not None else torch.zeros(span.shape[0], dtype=acc))
    w = w.view(1, -1, 1, 1).expand(n, -1, ho, wo)
    for c in range(cr):
        w = w + span[:, c].view(1, -1, 1, 1) * r[:, c:c + 1].to(acc)
    return w.to(dtype)


def test_emulated_fused_input_gradient_matches_the_composition(tmp_path):
    # The fused input gradient (each tap row's weights generated in registers) against the
    # unfold reference's gradient with the kernels generated and rounded, at strides 1, 2
    # and 4, every dtype, with and without bias, at the largest and the default channel
    # chunks; and bit for bit what the unfused row-blocked kernel computes from the same
    # kernels.
    old = cupy_backend.MIN_THREADS
    plans = []
    try:
        for min_threads in (0, old):
            cupy_backend.MIN_THREADS = min_threads
            for ci, case in enumerate(FUSED_BACKWARD_CASES):
                n, c, g, h, w, k, s, d = case
                for dtype, bias in itertools.product(DTYPES, (True, False)):
                    x, wt, gout, s, p, d = _make_case(case, dtype, ci)
                    gen = torch.Generator().manual_seed(200 + ci)
                    r = torch.randn(n, 5, *wt.shape[4:], generator=gen).to(dtype)
                    span = (torch.randn(g * k * k, 5, generator=gen) / 3).to(dtype)
                    sb = torch.randn(g * k * k, generator=gen).to(dtype) if bias else None
                    gx, fused_gx = torch.empty_like(x), torch.empty_like(x)
                    kernels = _generated_in_kernel_order(r, span, sb, dtype).view(wt.shape)
                    launches = [cupy_backend.fused_backward_input_launch(
                        gout, r, span, sb, fused_gx, g, k, s, p, d),
                        cupy_backend.backward_input_launch("rows", gout, x, kernels, gx, s, p, d)]
                    plans.append(((case, dtype, bias, min_threads), (x, kernels, gout, s, p, d),
                                  (fused_gx, gx), launches))
    finally:
        cupy_backend.MIN_THREADS = old
    names = {launch[0] for *_, launches in plans for launch in launches}
    run = build_emulator(names, tmp_path)
    for key, (x, kernels, gout, s, p, d), (fused_gx, gx), launches in plans:
        for launch in launches:
            run(launch, grid_cap=3)
        xr = x.double().requires_grad_()
        (want,) = torch.autograd.grad(involution_reference(xr, kernels.double(), s, p, d), xr,
                                      gout.double())
        rtol, atol = DTYPES[x.dtype]
        torch.testing.assert_close(fused_gx.double(), want, rtol=rtol,
                                   atol=atol * (1 + want.abs().max().item()),
                                   msg=lambda m: f"fused input gradient {key}: {m}")
        assert torch.equal(fused_gx, gx), key
    fused = [n for n in names if n.startswith("involution_fused_backward_input_rows<")]
    # 16 channels a thread with packs, at strides 1 and 2 (Q = 1: packs of 2), 8 without.
    assert any(", 1, 1, 16, 4, 0, 4, 1>" in n for n in fused)
    assert any(", 2, 1, 16, 4, 1, 2, 0>" in n for n in fused)
    assert any(", 1, 1, 8, 4, 0, 1, 0>" in n for n in fused)
    assert {int(re.search(r", (\d+), \d+>$", n)[1]) for n in fused} == {1, 2, 4}


def test_row_kernels_use_packs_only_where_every_row_starts_on_one(tmp_path):
    # A tensor whose data starts one element past an allocation (a contiguous view of a
    # larger buffer) or whose rows are 14 long: smaller packs or none, and the kernels still
    # right, with no access off its alignment (the emulation counts them).
    def shifted(t):  # the same values, one element into a buffer
        buf = torch.empty(t.numel() + 1, dtype=t.dtype)
        view = buf[1:].view(t.shape)
        view.copy_(t)
        return view

    x, wt, gout, s, p, d = _make_case((1, 16, 2, 8, 16, 3, 1, 1), torch.float32, 5)
    cases = {"aligned": (x, wt, 4), "x shifted": (shifted(x), wt, 1),
             "rows of 14": (x[..., :14].contiguous(), wt[..., :14].contiguous(), 2)}
    launches, outputs = [], {}
    for what, (xi, wi, vec) in cases.items():
        out, plan = cupy_backend.forward_plan(xi, wi, s, p, d, "rows")
        assert re.search(r", (\d+), \d+>$", plan[0][0])[1] == str(vec), (what, plan[0][0])
        launches += plan
        outputs[what] = (xi, wi, out)
    run = build_emulator([launch[0] for launch in launches], tmp_path)
    for launch in launches:
        run(launch, grid_cap=2)
    for what, (xi, wi, out) in outputs.items():
        torch.testing.assert_close(out, involution_reference(xi, wi, s, p, d), msg=what)


@pytest.mark.parametrize("variant", ["rows", "unfused"])
def test_the_backends_fused_backward_by_emulation(tmp_path, monkeypatch, variant):
    # cupy_backend's whole fused backward (the variant chosen, the kernels planned and
    # launched, the weight gradient and the span convolution's backward after them) on CPU
    # tensors, its launches run by the emulation: every gradient against autograd through
    # the unfused composition, for each set of gradients asked for.
    cases = [(2, 32, 2, 9, 13, 7, 1, 1), (1, 16, 2, 10, 9, 7, 2, 1), (1, 12, 4, 8, 9, 3, 1, 2),
             (1, 8, 2, 11, 10, 3, 3, 1)]
    masks = [(True, True, True, True), (True, False, False, False),
             (False, True, True, False), (True, True, False, True)]
    monkeypatch.setattr(cupy_backend, "_CHOSEN", {})
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "measure")
    monkeypatch.setattr(cupy_backend, "compile_kernels", lambda names, index: None)
    monkeypatch.setattr(cupy_backend, "time_run",
                        lambda run, device: (run(), 1.0 if ran[-1] == variant else 2.0)[1])
    ran, planned = [], []

    def record(launch, device):  # first pass: which kernels the calls launch
        planned.append(launch[0])
        launch[2][cupy_backend.input_pointers(launch[0])].zero_()

    def inputs(case, bias):
        n, c, g, h, w, k, s, d = case
        x, wt, gout, s, p, d = _make_case(case, torch.float64, 7)
        gen = torch.Generator().manual_seed(300)
        r = torch.randn(n, 6, *wt.shape[4:], generator=gen, dtype=torch.float64)
        sw = torch.randn(g * k * k, 6, 1, 1, generator=gen, dtype=torch.float64) / 3
        sb = torch.randn(g * k * k, generator=gen, dtype=torch.float64) if bias else None
        return gout, (x, r, sw, sb, g, k, s, p, d)

    def calls():
        for case, bias, mask in itertools.product(cases, (True, False), masks):
            gout, args = inputs(case, bias)
            yield case, bias, mask, gout, args, cupy_backend.cupy_fused_backward(
                gout, *args, list(mask))

    real_unfused = cupy_backend._UNFUSED_BACKWARD
    monkeypatch.setattr(cupy_backend, "_UNFUSED_BACKWARD",
                        lambda *a: (ran.append("unfused"), real_unfused(*a))[1])
    real_rows = cupy_backend.fused_backward_input_launch
    monkeypatch.setattr(cupy_backend, "fused_backward_input_launch",
                        lambda *a: (ran.append("rows"), real_rows(*a))[1])
    monkeypatch.setattr(cupy_backend, "_launch", record)
    for _ in calls():
        pass
    run = build_emulator(planned, tmp_path)
    monkeypatch.setattr(cupy_backend, "_launch", lambda launch, device: run(launch, 1 << 20))
    for case, bias, mask, gout, args, grads in calls():
        x, r, sw, sb, g, k, s, p, d = args
        leaves = [t.detach().requires_grad_() for t in (x, r, sw, sb) if t is not None]
        kernels = torch.nn.functional.conv2d(leaves[1], leaves[2], leaves[3] if bias else None)
        out = involution_reference(leaves[0], kernels.view(x.shape[0], g, k, k,
                                                           *kernels.shape[2:]), s, p, d)
        want = torch.autograd.grad(out, leaves, gout)
        for i, (got, need) in enumerate(zip(grads, mask)):
            if need and (i < 3 or bias):
                torch.testing.assert_close(got, want[i], msg=lambda m: f"{case} {mask} {i}: {m}")
    # Measured on each shape at strides 1 and 2 (the faster chosen), never at stride 3
    # (unfused only: the row-blocked gather needs a stride that divides its 4 pixels).
    assert cupy_backend._CHOSEN and set(cupy_backend._CHOSEN.values()) >= {variant}
    fused_keys = [key for key in cupy_backend._CHOSEN if key[0] == "fused_backward"]
    assert sorted({key[6] for key in fused_keys}) == [1, 2]
    assert {cupy_backend._CHOSEN[key] for key in fused_keys} == {variant}
    assert any(name.startswith("involution_fused_backward_input_rows<") for name in planned)


class _FakeTimer:
    """Stands in for the GPU in cupy_backend's choice: records compilations and launches,
    and times each run as ``costs`` says of the kernel it launched."""

    def __init__(self, monkeypatch, costs, capturing=False):
        self.launched, self.timed, self.compiled = [], [], []
        self.costs = costs
        monkeypatch.setattr(cupy_backend, "compile_kernels",
                            lambda names, index: self.compiled.append(sorted(names)))
        monkeypatch.setattr(cupy_backend, "_launch", lambda launch, device: self.launched.append(
            launch[0]))
        monkeypatch.setattr(cupy_backend, "time_run", self.time)
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
        monkeypatch.setattr(cupy_backend, "_CHOSEN", {})

    def time(self, run, device):
        run()
        name = self.launched[-1]
        self.timed.append(name)
        return next(cost for kind, cost in self.costs.items() if name.startswith(kind + "<"))


def _choose(kind, stride=1, height=6, width=6):
    ho, wo = height // stride, width // stride
    x, wt = torch.zeros(1, 16, height, width), torch.zeros(1, 1, 3, 3, ho, wo)
    out = torch.zeros(1, 16, ho, wo)
    device = torch.device("cuda", 0)

    def make(variant):
        if kind == "forward":
            return cupy_backend.forward_launch(variant, x, wt, out, stride, 1, 1)
        return cupy_backend.backward_input_launch(variant, out, x, wt, x, stride, 1, 1)

    key = cupy_backend._choice_key(kind, x, wt, stride, 1, 1)
    return cupy_backend.choose_variant(
        kind, key, lambda vs: cupy_backend.launch_runs({v: make(v) for v in vs}, device),
        stride, device)


@pytest.mark.parametrize("faster", ["involution_forward", "involution_forward_rows"])
def test_the_backend_measures_each_shape_once_and_keeps_the_fastest(monkeypatch, faster):
    timer = _FakeTimer(monkeypatch, {"involution_forward": 2.0, "involution_forward_rows": 2.0,
                                     faster: 1.0})
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "measure")
    want = "rows" if faster.endswith("rows") else "chunked"
    assert _choose("forward") == want
    # Both variants compiled together (one NVRTC program), each ran once before it was timed.
    assert len(timer.compiled) == 1 and timer.compiled[0] == sorted(timer.timed)
    assert len(timer.timed) == 2 and sorted(timer.launched[:2]) == sorted(timer.timed)
    assert sorted(timer.launched[2:]) == sorted(timer.timed)
    assert _choose("forward") == want and len(timer.timed) == 2  # kept: not measured again
    # Sizes within the same half octave share the measurement (Detectron2's batches come in
    # many sizes); a size an octave away is measured anew.
    assert _choose("forward", height=5, width=7) == want and len(timer.timed) == 2
    assert _choose("forward", height=12, width=6) == want and len(timer.timed) == 4
    assert cupy_backend.size_bucket(36) == cupy_backend.size_bucket(35) != \
        cupy_backend.size_bucket(72)


@pytest.mark.parametrize("kind", ["fused_forward", "fused_backward"])
@pytest.mark.parametrize("faster", cupy_backend.FUSED_VARIANTS)
def test_the_fused_operator_runs_unfused_where_that_measures_faster(monkeypatch, faster, kind):
    ran = []
    costs = {"rows": 2.0, "unfused": 2.0, faster: 1.0}
    monkeypatch.setattr(cupy_backend, "_CHOSEN", {})
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "measure")
    monkeypatch.setattr(cupy_backend, "time_run", lambda run, device: (run(), costs[ran[-1]])[1])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    def runs_of(variants):
        return {v: (lambda v=v: ran.append(v)) for v in variants}

    device = torch.device("cuda", 0)
    assert cupy_backend.choose_variant(kind, "key", runs_of, 1, device) == faster
    assert sorted(ran) == sorted(cupy_backend.FUSED_VARIANTS * 2)
    # The fused backward's row-blocked input gradient gathers at strides that divide its 4
    # pixels: at stride 3 it runs unfused, unmeasured; at stride 2 it is measured.
    strided = cupy_backend.choose_variant(kind, "stride 3", runs_of, 3, device)
    assert strided == (faster if kind == "fused_forward" else "unfused")
    assert len(ran) == (8 if kind == "fused_forward" else 4)
    assert cupy_backend.choose_variant(kind, "stride 2", runs_of, 2, device) == faster
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "chunked")  # forced: no measuring
    assert cupy_backend.choose_variant(kind, "other", runs_of, 1, device) == (
        "fused" if kind == "fused_forward" else "unfused")
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "rows")
    assert cupy_backend.choose_variant(kind, "other", runs_of, 1, device) == "rows"
    assert cupy_backend.choose_variant(kind, "other", runs_of, 2, device) == "rows"
    assert cupy_backend.choose_variant(kind, "other", runs_of, 3, device) == (
        "rows" if kind == "fused_forward" else "unfused")


def test_the_backend_measures_nothing_where_one_kernel_applies_or_is_forced(monkeypatch):
    timer = _FakeTimer(monkeypatch, {"involution_forward": 1.0,
                                     "involution_forward_rows": 2.0})
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "measure")
    # The row-blocked input gradient gathers at strides that divide its 4 pixels.
    assert _choose("backward_input", stride=3) == "chunked"
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "rows")
    assert _choose("forward") == "rows"
    assert _choose("backward_input", stride=2) == "rows"
    assert _choose("backward_input", stride=3) == "chunked"
    assert timer.timed == []
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "fastest")
    with pytest.raises(ValueError, match="INVOLUTION_CUDA_KERNELS='fastest'.*'measure'"):
        _choose("forward")


def test_the_backend_does_not_measure_where_determinism_is_asked_for(monkeypatch):
    timer = _FakeTimer(monkeypatch, {"involution_forward": 2.0,
                                     "involution_forward_rows": 1.0})
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "measure")
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert _choose("forward") == "chunked" and timer.timed == []


def test_the_backend_does_not_measure_inside_a_cuda_graph_capture(monkeypatch):
    timer = _FakeTimer(monkeypatch, {"involution_forward": 2.0,
                                     "involution_forward_rows": 1.0}, capturing=True)
    monkeypatch.setattr(cupy_backend, "KERNEL_CHOICE", "measure")
    assert _choose("forward") == "chunked" and timer.timed == []
    assert cupy_backend._CHOSEN == {}  # measured on the first call outside a capture


def _all_kernel_names(dtypes=tuple(DTYPES), widths=(False, True)):
    """Every kernel kind in every dtype and index width, at RedNet's K = 7, stride 2 (1 for
    the row-blocked input gradients): the emulation above already covers the other sizes, and
    compiling all of them would take minutes."""
    names = set()
    px = cupy_backend.ROWS_PIXELS
    for dtype in dtypes:
        for big in widths:
            for kind, chunk in (("involution_forward", 16), ("involution_forward", 1),
                                ("involution_backward_input", 16),
                                ("involution_backward_weight", None),
                                ("involution_backward_weight_naive", None),
                                ("involution_fused_forward", 16),
                                ("involution_fused_forward", 1)):
                names.add(cupy_backend.kernel_name(kind, dtype, big, 7, 2, 1, chunk))
            # Padding 3, rows whose lengths divide by 4: packs of 4, segments starting at
            # phase 1 (the gathers at stride 2: Q = 1, packs of 2, phase 0).
            for kind, stride, chunk in (("involution_forward_rows", 2, 8),
                                        ("involution_backward_weight_rows", 2, None),
                                        ("involution_fused_forward_rows", 1, 16),
                                        ("involution_fused_forward_rows", 2, 8)):
                for vec, phase in ((4, 1), (1, 0)):
                    names.add(cupy_backend.kernel_name(kind, dtype, big, 7, stride, 1, chunk, px,
                                                       vec, phase))
            for kind, chunk in (("involution_backward_input_rows", 8),
                                ("involution_fused_backward_input_rows", 16)):
                for stride, packing in ((1, (0, 4, 1)), (2, (1, 2, 0)), (1, (0, 1, 0))):
                    names.add(cupy_backend.kernel_name(
                        kind, dtype, big, 7, stride, 1, 8 if packing[1] == 1 else chunk, px,
                        *packing))
    return sorted(names)


# Run in a child process: importing cuda.bindings into the test process leaves torch's
# checkpoint loading broken for the tests that follow ("record size ... does not match").
_NVRTC_CHECK = """
import json, re, sys
from cuda.bindings import nvrtc
job = json.load(sys.stdin)
err, prog = nvrtc.nvrtcCreateProgram(job["source"].encode(), b"involution.cu", 0, [], [])
assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
opts = [b"--std=c++14", b"--gpu-architecture=compute_90"]
(err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
_, size = nvrtc.nvrtcGetProgramLogSize(prog)
log = b" " * size
nvrtc.nvrtcGetProgramLog(prog, log)
assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
_, size = nvrtc.nvrtcGetPTXSize(prog)
ptx = b" " * size
nvrtc.nvrtcGetPTX(prog, ptx)
entries = set(re.findall(r"\\.entry\\s+(\\w+)", ptx.decode(errors="replace")))
missing = sorted(set(job["kernels"]) - entries)
assert not missing, missing
print("compiled", len(job["kernels"]))
"""


def test_kernels_compile_with_nvrtc(tmp_path):
    # What the backend hands CuPy: the kernels of ``names`` as extern "C" kernels, compiled
    # without name expressions; each must come out as a PTX entry of its name.
    import importlib.util
    import json

    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec(
            "cuda.bindings") is None:
        pytest.skip("needs NVRTC (cuda-bindings, installed with CUDA torch)")
    # Every dtype with 32-bit indices, and float32 with 64-bit ones (the index type is one
    # template argument, the same in every dtype), in two processes at once.
    names = sorted(set(_all_kernel_names(widths=(False,)))
                   | set(_all_kernel_names((torch.float32,), (True,))))
    halves = [names[0::2], names[1::2]]
    logs = [tmp_path / f"nvrtc{i}.log" for i in range(len(halves))]
    procs = [subprocess.Popen([sys.executable, "-c", _NVRTC_CHECK], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
             for log in logs]
    for proc, half in zip(procs, halves):  # both jobs handed over before either is awaited
        proc.stdin.write(json.dumps({"source": cupy_backend.program_source(half),
                                     "kernels": [cupy_backend.extern_c_name(n) for n in half]}))
        proc.stdin.close()
    for proc, half, log in zip(procs, halves, logs):
        out = proc.stdout.read()
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        # (print's separator comes out as a NUL byte in a process that imported cuda.bindings)
        assert re.fullmatch(r"compiled\W+(\d+)\s*", out)[1] == str(len(half))


def test_extern_c_names_are_distinct_identifiers():
    names = _all_kernel_names()
    kernels = [cupy_backend.extern_c_name(n) for n in names]
    assert len(set(kernels)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z_]\w*", k) for k in kernels)
    assert cupy_backend.extern_c_name("involution_forward<long long, 7>") == \
        "involution_forward__long_long_7"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")
def test_kernels_compile_with_nvcc_and_the_row_kernels_keep_their_registers(tmp_path):
    # The program the backend hands CuPy, compiled by nvcc with every warning an error, for
    # sm_90, in float32 and bfloat16 with 32-bit indices (NVRTC above compiles every dtype
    # and width); and the plain templates as __global__ kernels (INV_KERNEL's other form).
    # The row-blocked kernels keep their sums, weights and input segments in registers:
    # ptxas must report no more than a word or two spilled.
    names = _all_kernel_names((torch.float32, torch.bfloat16), (False,))
    src = tmp_path / "program.cu"
    src.write_text(cupy_backend.program_source(names))
    include = os.path.dirname(cupy_backend._SOURCE_PATH)
    proc = subprocess.run(
        ["nvcc", "-arch=sm_90", "-std=c++14", "-Werror", "all-warnings", "-Xptxas", "-v",
         "-c", str(src), "-o", str(tmp_path / "kernels.o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # ptxas -v: "Compiling entry function '<name>'", then its lines, a spill count among them.
    reports = {re.match(r"'(\w+)'", part)[1]: int(re.search(r"(\d+) bytes spill stores",
                                                            part)[1])
               for part in proc.stderr.split("Compiling entry function ")[1:]}
    assert sorted(reports) == sorted(cupy_backend.extern_c_name(n) for n in names)
    rows = {kernel: spilled for kernel, spilled in reports.items() if "_rows__" in kernel}
    assert len(rows) == 28
    # (A word or two may spill around the tap-row loop, which is left rolled so that the
    # kernels compile fast; the sums and the weights must not.)
    assert {kernel: spilled for kernel, spilled in rows.items() if spilled > 8} == {}

    templates = tmp_path / "templates.cu"
    lines = ['#include "involution.cuh"']
    for name in names[:4]:
        kind, targs = name.split("<", 1)
        t, i = targs.split(", ")[:2]
        pointers, values = _signature(name)
        params = [f"const {t}*"] * (pointers - 1) + [f"{t}*"] + [i] * values
        lines.append(f"template __global__ void {name}({', '.join(params)});")
    templates.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++14", "-Werror", "all-warnings", "-I",
                           include, "-c", str(templates), "-o", str(tmp_path / "t.o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
