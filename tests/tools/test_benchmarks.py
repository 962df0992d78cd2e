"""The benchmark scripts run and print their tables (no timing is asserted: these machines
are noisy), and the measuring helpers measure what they claim."""
import os
import re
import subprocess
import sys
from importlib.util import find_spec

import pytest
import torch

from helpers import REPO, requires_detectron2, skip_if_unavailable
from benchmarking.timing import Glibc, PeakMemory, time_round_robin



def run_tool(name, *args):
    cmd = [sys.executable, os.path.join(REPO, "tools", name), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def table_rows(stdout, first_cell):
    return [line.split("  ") for line in stdout.splitlines() if line.startswith(first_cell)]


def test_round_robin_interleaves_and_returns_medians():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_round_robin(runs, "cpu", repeat=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_cpu_peak_memory_sees_a_temporary():
    glibc = Glibc()
    glibc.memory_mode()
    try:
        with PeakMemory("cpu") as mem:
            t = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
            del t
    finally:
        glibc.timing_mode()
    assert 60 < mem.peak < 200


def test_operator_benchmark_prints_ratios():
    from involution_d2.ops import native

    backends = ["reference", "torch"] + (["native"] if native.native_is_available() else [])
    out = run_tool("benchmark_involution.py", "--device", "cpu", "--shapes", "cls.res5",
                   "--repeat", "1", "--warmup", "0", "--backends", *backends)
    lines = out.splitlines()
    header = re.split(r"\s{2,}", next(line for line in lines if line.startswith("shape")))
    rows = [dict(zip(header, re.split(r"\s{2,}", line.strip()))) for line in lines
            if line.startswith("cls.res5")]
    assert {(r["mode"], r["backend"]) for r in rows} == {
        (mode, b) for mode in ("fwd", "fwd+bwd") for b in backends}
    assert "# memory bandwidth, measured (copy):" in out
    for r in rows:
        assert r["speed-up vs reference"].endswith("x")
        assert float(r["speed-up vs reference"][:-1]) > 0 and float(r["speed-up vs torch"][:-1]) > 0
        assert float(r["GB/s"]) > 0 and float(r["x of bandwidth bound"]) > 0
        if r["backend"] != "reference":
            assert float(r["memory / reference"]) < 0.5  # a fraction of unfold's memory


def test_host_cost_benchmark_prints_ratios_and_the_calls_of_one_layer_forward():
    out = run_tool("benchmark_involution.py", "--device", "cpu", "--host-cost", "--repeat", "20")
    rows = {re.split(r"\s{2,}", line.strip())[0]: re.split(r"\s{2,}", line.strip())[1:]
            for line in out.splitlines()
            if line.startswith(("torch.add", "involution()", "Involution layer"))}
    assert set(rows) == {"torch.add (floor)", "involution()", "involution(), x requires grad",
                         "Involution layer"}
    assert rows["torch.add (floor)"][1] == "1.0x"
    assert all(float(us) > 0 and ratio.endswith("x") for us, ratio in rows.values())
    calls = out[out.index("calls of ours in one Involution forward"):].splitlines()
    assert int(calls[0].rsplit(": ", 1)[1]) == len(calls) - 1
    assert calls[1].strip() == "layers/involution.py:forward"


def test_one_involution_forward_makes_few_calls_of_ours():
    """Counted, not timed: the Python calls of this package in one layer forward without
    gradients, down to the kernel (the native one: the "torch" kernels are Python)."""
    from involution_d2.layers import Involution
    from benchmarking.operator import calls_of_ours

    skip_if_unavailable("native")
    layer = Involution(16, 7, backend="native").eval()
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        layer(x)  # the first call decides the backend (cached after it)
        calls = calls_of_ours(layer, x)
    assert len(calls) <= 10, calls
    assert not any("validate" in call for call in calls), calls  # the layer checks nothing twice


@requires_detectron2
def test_model_benchmark_prints_throughput_and_profile():
    from involution_d2.ops import native

    backends = ["native", "torch"] if native.native_is_available() else ["torch", "reference"]
    out = run_tool("benchmark_models.py", "--device", "cpu", "--suites", "backbone",
                   "--size", "64", "96", "--repeat", "1", "--warmup", "0",
                   "--dtypes", "float32", "--modes", "inference", "train", "--profile",
                   "--backends", *backends)
    assert "native bfloat16 (AVX-512 BF16 / AMX): " in out.splitlines()[0]
    for mode in ("inference", "train"):
        lines = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()
                 if line.startswith("backbone") and f" {mode} " in line]
        speed = {r[1]: r for r in lines if len(r) == 12}
        profile = {r[1]: r for r in lines if len(r) == 11}
        assert set(speed) == {f"RedNet-50 [{b}]" for b in backends} | {"ResNet-50"}
        assert speed["ResNet-50"][7] == "1.00x"  # the twin against itself
        # Bytes saved for backward: counted in training only, exact.
        saved = {name: r[9] for name, r in speed.items()}
        if mode == "train":
            assert speed["ResNet-50"][10] == "1.00" and all(float(v) > 0 for v in saved.values())
        else:
            assert set(saved.values()) == {"-"}
        assert float(speed[f"RedNet-50 [{backends[0]}]"][4]) > 0  # images/s
        assert set(profile) == set(speed)
        aggregation = {name: float(r[5].rstrip(" %")) for name, r in profile.items()}
        assert aggregation["ResNet-50"] == 0.0
        # The forward and (in training) the backward of every backend are found.
        assert all(aggregation[f"RedNet-50 [{b}]"] > 0 for b in backends)


def test_bytes_moved_counts_each_tensor_once():
    from involution_d2.utils import benchmark_operator as bench

    # det.res5: x (2, 512, 25, 38), 32 groups of 16 channels, K = 7, stride 1.
    x, w = 2 * 512 * 25 * 38, 2 * 32 * 49 * 25 * 38
    assert bench.bytes_moved("det.res5", "float32", "fwd") == 4 * (x + w + x)
    # fwd: x, w -> out; bwd: grad_out, x, w -> grad_x, grad_w (out and grads: x-sized here)
    assert bench.bytes_moved("det.res5", "bfloat16", "fwd+bwd") == 2 * (5 * x + 3 * w)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_operator_benchmark_compares_fused_with_unfused(backend):
    from involution_d2.ops import native

    if backend == "native" and not native.native_is_available():
        pytest.skip("the native CPU kernel is unavailable")
    out = run_tool("benchmark_involution.py", "--fused", "--device", "cpu", "--shapes",
                   "cls.res5", "--repeat", "1", "--warmup", "0", "--backends", backend)
    lines = out.splitlines()
    header = re.split(r"\s{2,}", next(line for line in lines if line.startswith("shape")))
    rows = [dict(zip(header, re.split(r"\s{2,}", line.strip()))) for line in lines
            if line.startswith("cls.res5")]
    assert [(r["mode"], r["backend"]) for r in rows] == [("fwd", backend), ("fwd+bwd", backend)]
    for r in rows:
        assert float(r["fused speed-up"][:-1]) > 0
        assert float(r["unfused ms"]) > 0 and float(r["fused ms"]) > 0


@requires_detectron2
def test_model_benchmark_counts_the_bytes_saved_for_backward():
    # Exact counts. The fused involution keeps no generated kernels (with them RedNet-50
    # saved 1.67x ResNet-50's bytes); what remains is RedNet's own structure (docs/BENCHMARKS.md,
    # "Memory"): 1.19x at this size, 1.20x at 800x1216.
    out = run_tool("benchmark_models.py", "--device", "cpu", "--suites", "backbone_all_trained",
                   "--size", "64", "96", "--dtypes", "float32", "--saved-only")
    rows = {r[1]: r for r in (re.split(r"\s{2,}", line.strip()) for line in out.splitlines()
                              if line.startswith("backbone_all_trained"))}
    twin = "ResNet-50, all stages trained"
    assert set(rows) == {twin, "RedNet-50, all stages trained [native]",
                         "RedNet-50, all stages trained [torch]"}
    assert rows[twin][4] == "1.00"
    for name, row in rows.items():
        assert float(row[3]) > 0
        if name != twin:
            assert float(row[4]) <= 1.25, row
    # Both backends recompute the kernels: they save the same.
    assert rows["RedNet-50, all stages trained [native]"][3:] == \
        rows["RedNet-50, all stages trained [torch]"][3:]


# What the official involution_cuda.py needs at import: mmcv.cnn.ConvModule, cupy's memoize
# and cupy.cuda.compile_with_cache (called at kernel load, not at import).
OFFICIAL_LIKE = '''
from mmcv.cnn import ConvModule
import cupy

@cupy._util.memoize(for_each_device=True)
def load_kernel(kernel_name, code):
    return cupy.cuda.compile_with_cache(code).get_function(kernel_name)
'''


def test_official_operator_loads_beside_recent_cupy_without_mmcv(tmp_path, monkeypatch):
    import types

    from benchmarking.operator import load_official_operator

    class Module:  # what cupy.RawModule(code=...) gives
        def __init__(self, code):
            self.code = code

        def get_function(self, name):
            return (name, self.code)

    cupy = types.ModuleType("cupy")  # a CuPy without compile_with_cache, as CuPy 14
    cupy.cuda = types.SimpleNamespace()
    cupy._util = types.SimpleNamespace(memoize=lambda **_: (lambda f: f))
    cupy.RawModule = Module
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    for name in ("mmcv", "mmcv.cnn"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "mmcv" else find_spec(name, *a))
    path = tmp_path / "involution_cuda.py"
    path.write_text(OFFICIAL_LIKE)
    try:
        official = load_official_operator(str(path))
    finally:  # the stand-in mmcv must not outlive the test
        for name in ("mmcv", "mmcv.cnn"):
            sys.modules.pop(name, None)
    assert official.ConvModule is None
    assert official.load_kernel("k", "__global__ void k() {}") == ("k", "__global__ void k() {}")


def test_official_operator_path_is_checked(tmp_path):
    from benchmarking.operator import load_official_operator

    with pytest.raises(FileNotFoundError, match="no such file; give the path of "
                                                "cls/mmcls/models/utils/involution_cuda.py"):
        load_official_operator(str(tmp_path / "missing.py"))
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "benchmark_involution.py"),
                          "--device", "cpu", "--official-kernel", str(tmp_path / "x.py")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--official-kernel needs --device cuda" in out.stderr


def test_operator_benchmark_times_each_layer_of_a_call():
    skip_if_unavailable("native")
    out = run_tool("benchmark_involution.py", "--device", "cpu", "--per-call", "--shapes",
                   "cls.res5", "--repeat", "3")
    rows = {r[2].strip(): float(r[3]) for r in
            (re.split(r"\s{2,}", line.strip()) for line in out.splitlines()
             if line.startswith("cls.res5"))}
    assert set(rows) == {"involution()", "custom operator", "native kernel", "torch.add (floor)"}
    assert all(v > 0 for v in rows.values())
    assert "# per call: 3 forward calls back to back" in out and "median of" not in out
