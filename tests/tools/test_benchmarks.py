"""The benchmark scripts run and print their tables (no timing is asserted: these machines
are noisy), and the measuring helpers measure what they claim.

What the printed tables are held to: the header, exactly; the rows, exactly and in order;
every ratio equal to the ratio of the printed numbers it is made of (within the rounding of
the printed digits); and the quantities that are exact (bytes moved, bytes saved for
backward, the calls of ours) equal to hand counts."""
import math
import os
import re
import subprocess
import sys
import types
from importlib.util import find_spec

import pytest
import torch

from helpers import REPO, requires_detectron2, skip_if_unavailable
from benchmarking.timing import Glibc, PeakMemory, paired_speed, time_round_robin


def run_tool(name, *args):
    cmd = [sys.executable, os.path.join(REPO, "tools", name), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd[1:])} failed:\n{out.stderr[-3000:]}"
    return out.stdout


def tables(stdout):
    """Every table print_table printed: [(header, rows)], each row a list of cells. The
    columns are where the dashes under the header are: a cell may hold single spaces."""
    lines = stdout.splitlines()
    found = []
    for i in range(1, len(lines)):
        if not re.fullmatch(r"-+(  -+)*\s*", lines[i]) or not lines[i - 1].strip():
            continue
        spans = [m.span() for m in re.finditer(r"-+", lines[i])]
        spans[-1] = (spans[-1][0], None)  # the last cell: to the end of the line

        def cells(line):
            return [line[a:b].strip() for a, b in spans]

        rows = []
        for line in lines[i + 1:]:
            if not line.strip() or line.startswith("#"):
                break
            rows.append(cells(line))
        found.append((cells(lines[i - 1]), rows))
    return found


def table(stdout, header):
    """The rows (dicts by column) of the table with exactly ``header``."""
    for head, rows in tables(stdout):
        if head == header:
            return [dict(zip(head, r)) for r in rows]
    raise AssertionError(f"no table with the columns {header}; the tables printed: "
                         f"{[head for head, _ in tables(stdout)]}\n{stdout[-3000:]}")


def half_unit(printed):
    """Half a unit in the last printed digit of a number ("12.34", "1.2x", "3.4e+03"):
    how far the printed value may be from the value it was printed from."""
    mantissa, _, exponent = printed.rstrip("x %").lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def value(printed):
    return float(printed.rstrip("x %"))


def bounds(printed):
    """The interval of values that print as ``printed`` (exact for a number)."""
    if isinstance(printed, (int, float)):
        return printed, printed
    v, h = value(printed), half_unit(printed)
    return v - h, v + h


def assert_ratio(ratio, numerator, denominator, what):
    """``ratio`` as printed is numerator / denominator as printed, up to the rounding of
    all three (each a printed string, or an exact number)."""
    (n0, n1), (d0, d1), (r0, r1) = bounds(numerator), bounds(denominator), bounds(ratio)
    lowest = n0 / d1 if d1 > 0 else 0.0
    highest = n1 / d0 if d0 > 0 else math.inf
    assert r1 >= lowest * (1 - 1e-9) and r0 <= highest * (1 + 1e-9), (
        f"{what}: printed {ratio}, but {numerator} / {denominator} is in "
        f"[{lowest:.4g}, {highest:.4g}]")


def assert_product(a, b, product, what):
    """``a`` x ``b`` as printed is ``product`` as printed, up to their rounding."""
    (a0, a1), (b0, b1), (p0, p1) = bounds(a), bounds(b), bounds(product)
    assert p1 >= a0 * b0 * (1 - 1e-9) and p0 <= a1 * b1 * (1 + 1e-9), (
        f"{what}: printed {a} x {b}, expected {product}")


def test_ratio_checks_catch_a_misprinted_ratio():
    """The checks above fail where the printed numbers disagree, and allow only rounding."""
    assert_ratio("2.00x", "10.00", "5.00", "exact")
    assert_ratio("1.50x", "3.00", "2.01", "rounded: 3.00 / 2.01 = 1.4925")
    assert_ratio("1.0x", 10, "9.63", "one decimal")
    with pytest.raises(AssertionError, match="wrong: printed 1.60x, but 3.00 / 2.00"):
        assert_ratio("1.60x", "3.00", "2.00", "wrong")
    with pytest.raises(AssertionError, match="inverted"):
        assert_ratio("0.50x", "10.00", "5.00", "inverted")
    assert_product("12.3", "2.00", "24.6", "product")
    with pytest.raises(AssertionError, match="product"):
        assert_product("12.3", "2.00", "26.0", "product")
    assert half_unit("1.2e+03") == 50 and half_unit("123") == 0.5 and half_unit("1.50x") == 0.005
    text = ("x\n\na  b c  d\n-  ---  -\n1  2 3  4\n5  6    \n\n# after\n")
    assert tables(text) == [(["a", "b c", "d"], [["1", "2 3", "4"], ["5", "6", ""]])]


def test_round_robin_interleaves_and_returns_medians(monkeypatch):
    """Calls in turn, A B A B, the warm-up rounds left out, and the median of each: with a
    clock that each call advances by a known time, the medians are exact."""
    import benchmarking.timing as timing

    clock = [0.0]
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    # Seconds per round: the warm-up round is the slowest (it must not count).
    durations = {"a": iter([9.0, 0.005, 0.001, 0.003]), "b": iter([9.0, 0.010, 0.030, 0.020])}
    calls = []

    def step(name):
        def run():
            calls.append(name)
            clock[0] += next(durations[name])
        return run

    times = time_round_robin({"a": step("a"), "b": step("b")}, "cpu", repeat=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    # Milliseconds: the medians of (5, 1, 3) and (10, 30, 20).
    assert times == pytest.approx({"a": 3.0, "b": 20.0}, abs=1e-9)


def test_paired_speed_cancels_a_slow_spell():
    # Rounds 3-5 ran on a machine twice as slow: the medians alone would say 1.0x; within
    # each round b takes 1.25x a's time.
    a = [100.0, 100.0, 200.0, 200.0, 200.0]
    b = [125.0, 125.0, 250.0, 250.0, 250.0]
    median, low, high = paired_speed(a, b)
    assert (median, low, high) == pytest.approx((0.8, 0.8, 0.8))
    assert paired_speed([10.0, 30.0, 20.0], [10.0, 10.0, 10.0])[0] == pytest.approx(2.0)


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
    # The whole 64 MiB, less the kernel's per-CPU RSS counting lag (0.25 MiB seen on 2 CPUs;
    # it grows with the CPUs: 2 MiB of slack), and not much more.
    assert 62 < mem.peak < 200, mem.peak


CLS_RES5 = (64, 512, 7, 7, 7, 1)  # (N, C, H, W, K, stride): cls.res5, 32 groups of 16


def cls_res5_bytes_moved(mode):
    """By hand for cls.res5 in float32: x and out (64, 512, 7, 7), the kernels
    (64, 32, 7, 7, 7, 7); fwd reads x, w and writes out; bwd reads grad_out, x, w and writes
    grad_x, grad_w."""
    x = out = 64 * 512 * 7 * 7
    w = 64 * 32 * 7 * 7 * 7 * 7
    fwd = x + w + out
    return 4 * (fwd if mode == "fwd" else fwd + out + x + w + x + w)


def test_operator_benchmark_prints_ratios():
    from involution_d2.ops import native

    backends = ["reference", "torch"] + (["native"] if native.native_is_available() else [])
    out = run_tool("benchmark_involution.py", "--device", "cpu", "--shapes", "cls.res5",
                   "--repeat", "1", "--warmup", "0", "--backends", *backends)
    assert "# memory bandwidth, measured (copy):" in out
    assert "# cls.res5: x (64, 512, 7, 7), K=7, stride=1, float32" in out
    assert ", median of 1 runs after 0 warm-up" in out.splitlines()[0]
    bandwidth = re.search(r"# memory bandwidth, measured \(copy\): (\S+) GB/s", out).group(1)
    baselines = ["reference", "torch"]
    rows = table(out, ["shape", "dtype", "mode", "backend", "time ms", "peak MiB",
                       "speed-up vs reference", "speed-up vs torch", "memory / reference",
                       "memory / torch", "GB/s", "x of bandwidth bound"])
    # One row per mode and backend, in the order asked for.
    assert [(r["shape"], r["dtype"], r["mode"], r["backend"]) for r in rows] == [
        ("cls.res5", "float32", mode, b) for mode in ("fwd", "fwd+bwd") for b in backends]
    for r in rows:
        of = {b: s for b, s in ((s["backend"], s) for s in rows if s["mode"] == r["mode"])}
        where = f"{r['mode']} [{r['backend']}]"
        assert r["speed-up vs reference"].endswith("x")
        assert float(r["speed-up vs reference"][:-1]) > 0 and float(r["speed-up vs torch"][:-1]) > 0
        assert float(r["GB/s"]) > 0 and float(r["x of bandwidth bound"]) > 0
        for base in baselines:
            # Speed-up: the baseline's time over this one's, as printed.
            assert_ratio(r[f"speed-up vs {base}"], of[base]["time ms"], r["time ms"],
                         f"{where} speed-up vs {base}")
            if r["backend"] == base:
                assert r[f"speed-up vs {base}"] == "1.00x", where
            # Memory: this peak over the baseline's ("-" where the baseline's is not > 0).
            if r[f"memory / {base}"] == "-":
                assert float(of[base]["peak MiB"]) <= 0.05, where
            else:
                assert_ratio(r[f"memory / {base}"], r["peak MiB"], of[base]["peak MiB"],
                             f"{where} memory / {base}")
        # The least traffic, counted by hand, over the printed time; and the time over the
        # time that traffic takes at the printed bandwidth: GB/s x that ratio = bandwidth.
        assert_ratio(r["GB/s"], cls_res5_bytes_moved(r["mode"]) / 1e6, r["time ms"],
                     f"{where} GB/s")
        assert_product(r["GB/s"], r["x of bandwidth bound"], bandwidth, f"{where} bandwidth")
        if r["backend"] != "reference":
            assert float(r["memory / reference"]) < 0.5  # a fraction of unfold's memory


def assert_calls_of_ours(calls):
    """Calls of this package (files of involution_d2/, as path:function), starting with
    the layer's forward."""
    assert calls, "no call of involution_d2 recorded in one Involution forward"
    assert calls[0] == "layers/involution.py:forward", calls
    for call in calls:
        path, _, function = call.rpartition(":")
        assert function.isidentifier(), call
        assert os.path.isfile(os.path.join(REPO, "involution_d2", path)), \
            f"{call}: not a file of involution_d2 (the paths are relative to the package)"


def test_host_cost_benchmark_prints_ratios_and_the_calls_of_one_layer_forward():
    out = run_tool("benchmark_involution.py", "--device", "cpu", "--host-cost", "--repeat", "20")
    backend = re.search(r"backend 'auto' is '(\w+)'", out).group(1)
    assert "# host cost: 20 calls back to back" in out
    table_rows = table(out, ["call", "us/call", "x torch.add"])
    rows = {r["call"]: [r["us/call"], r["x torch.add"]] for r in table_rows}
    assert [r["call"] for r in table_rows] == [
        "torch.add (floor)", "involution()", f"{backend} forward kernel",
        "involution(), x requires grad", "Involution layer"]
    assert rows["torch.add (floor)"][1] == "1.0x"
    assert all(float(us) > 0 and ratio.endswith("x") for us, ratio in rows.values())
    for call, (us, ratio) in rows.items():  # each against the floor, as printed
        assert_ratio(ratio, us, rows["torch.add (floor)"][0], f"{call} x torch.add")
    calls = out[out.index("calls of ours in one Involution forward"):].splitlines()
    calls = [line for line in calls if line.strip()]
    assert int(calls[0].rsplit(": ", 1)[1]) == len(calls) - 1
    assert_calls_of_ours([line.strip() for line in calls[1:]])
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
    assert_calls_of_ours(calls)  # some calls, all ours: not an empty list by mistake
    assert len(calls) <= 10, calls
    assert not any("validate" in call for call in calls), calls  # the layer checks nothing twice


MODEL_COLUMNS = ["suite", "model [involution backend]", "mode", "dtype", "images/s", "ms/iter",
                 "peak MiB", "speed vs ResNet-50", "memory / ResNet-50",
                 "saved for backward MiB", "saved / ResNet-50"]
CATEGORIES = ["involution span + aggregation", "involution reduction", "convolution",
              "normalization", "RoIAlign / NMS", "other"]


@requires_detectron2
def test_model_benchmark_prints_throughput_and_profile():
    from involution_d2.ops import native

    backends = ["native", "torch"] if native.native_is_available() else ["torch", "reference"]
    out = run_tool("benchmark_models.py", "--device", "cpu", "--suites", "backbone",
                   "--size", "64", "96", "--repeat", "1", "--warmup", "0",
                   "--dtypes", "float32", "--modes", "inference", "train", "--profile",
                   "--backends", *backends)
    assert "native bfloat16 (AVX-512 BF16 / AMX): " in out.splitlines()[0]
    assert "batch 1, median of 1 after 0 warm-up" in out.splitlines()[0]
    names = [f"RedNet-50 [{b}]" for b in backends] + ["ResNet-50"]
    speed_rows = table(out, MODEL_COLUMNS + [f"speed vs [{backends[0]}]"])
    profile_rows = table(out, ["suite", "model", "mode", "dtype", "total ms"] + CATEGORIES)
    # Every model in both modes, the twin last, in both tables.
    order = [("backbone", mode, name, "float32") for mode in ("inference", "train")
             for name in names]
    assert [(r["suite"], r["mode"], r["model [involution backend]"], r["dtype"])
            for r in speed_rows] == order
    assert [(r["suite"], r["mode"], r["model"], r["dtype"]) for r in profile_rows] == order
    for mode in ("inference", "train"):
        assert f"# backbone, {mode}, float32, 1x3x64x96" in out
        speed = {r["model [involution backend]"]: r for r in speed_rows if r["mode"] == mode}
        profile = {r["model"]: r for r in profile_rows if r["mode"] == mode}
        twin = speed["ResNet-50"]
        assert twin["speed vs ResNet-50"] == "1.00x"  # the twin against itself
        for name, r in speed.items():
            where = f"{mode} {name}"
            # images/s is the batch (1) over the time; the ratios are of the printed columns.
            assert_ratio(r["images/s"], 1000, r["ms/iter"], f"{where} images/s")
            assert_ratio(r["speed vs ResNet-50"], twin["ms/iter"], r["ms/iter"],
                         f"{where} speed vs ResNet-50")
            if r["memory / ResNet-50"] == "-":
                assert float(twin["peak MiB"]) <= 0.5, where
            else:
                assert_ratio(r["memory / ResNet-50"], r["peak MiB"], twin["peak MiB"],
                             f"{where} memory / ResNet-50")
            if name == "ResNet-50":
                assert r[f"speed vs [{backends[0]}]"] == "-"  # no involution backend
            elif name != f"RedNet-50 [{backends[0]}]":
                # The median of the rounds' ratios, with their quartiles: one round here,
                # so all three are the ratio of the printed times.
                paired = re.fullmatch(r"(\S+x) \((\S+)-(\S+)\)", r[f"speed vs [{backends[0]}]"])
                assert paired, r[f"speed vs [{backends[0]}]"]
                for ratio in paired.groups():
                    assert_ratio(ratio, speed[f"RedNet-50 [{backends[0]}]"]["ms/iter"],
                                 r["ms/iter"], f"{where} speed vs [{backends[0]}]")
        assert speed[f"RedNet-50 [{backends[0]}]"][f"speed vs [{backends[0]}]"] == "1.00x"
        # Bytes saved for backward: counted in training only, exact.
        saved = {name: r["saved for backward MiB"] for name, r in speed.items()}
        if mode == "train":
            assert twin["saved / ResNet-50"] == "1.00"
            assert all(float(v) > 0 for v in saved.values())
            for name, r in speed.items():
                assert_ratio(r["saved / ResNet-50"], saved[name], saved["ResNet-50"],
                             f"{name} saved / ResNet-50")
            if backends == ["native", "torch"]:  # both recompute the kernels: the same bytes
                assert saved["RedNet-50 [native]"] == saved["RedNet-50 [torch]"]
        else:
            assert set(saved.values()) == {"-"}
            assert {r["saved / ResNet-50"] for r in speed.values()} == {"-"}
        assert float(speed[f"RedNet-50 [{backends[0]}]"]["images/s"]) > 0
        assert set(profile) == set(speed)
        for name, r in profile.items():
            # Shares of one total: they add up to 100 % (each printed to 0.1 %).
            shares = [value(r[c]) for c in CATEGORIES]
            assert all(r[c].endswith(" %") and 0 <= s <= 100 for c, s in zip(CATEGORIES, shares))
            assert abs(sum(shares) - 100) <= 0.05 * len(CATEGORIES) + 1e-9, (name, shares)
            assert float(r["total ms"]) > 0
        aggregation = {name: value(r["involution span + aggregation"])
                       for name, r in profile.items()}
        reduction = {name: value(r["involution reduction"]) for name, r in profile.items()}
        # The twin has no involution at all.
        assert aggregation["ResNet-50"] == 0.0 and reduction["ResNet-50"] == 0.0
        # The forward and (in training) the backward of every backend are found.
        assert all(aggregation[f"RedNet-50 [{b}]"] > 0 for b in backends)
        assert all(reduction[f"RedNet-50 [{b}]"] > 0 for b in backends)


def test_bytes_moved_counts_each_tensor_once(monkeypatch):
    from benchmarking import operator as bench

    # det.res5: x (2, 512, 25, 38), 32 groups of 16 channels, K = 7, stride 1.
    x, w = 2 * 512 * 25 * 38, 2 * 32 * 49 * 25 * 38
    assert bench.bytes_moved("det.res5", "float32", "fwd") == 4 * (x + w + x)
    # fwd: x, w -> out; bwd: grad_out, x, w -> grad_x, grad_w (out and grads: x-sized here)
    assert bench.bytes_moved("det.res5", "bfloat16", "fwd+bwd") == 2 * (5 * x + 3 * w)
    # With stride 2 the output is smaller than x: cls.res3.s2, x (64, 128, 56, 56), out and
    # kernels at 28x28 (8 groups).
    x, out, w = 64 * 128 * 56 * 56, 64 * 128 * 28 * 28, 64 * 8 * 49 * 28 * 28
    assert bench.bytes_moved("cls.res3.s2", "float32", "fwd") == 4 * (x + w + out)
    assert bench.bytes_moved("cls.res3.s2", "float32", "fwd+bwd") == \
        4 * ((x + w + out) + (out + x + w) + (x + w))
    # A tiny shape, every size by hand: x (1, 16, 4, 6), K = 3, stride 2, padding 1 ->
    # out (1, 16, 2, 3); kernels (1, 1, 3, 3, 2, 3): 384 + 54 + 96 elements forward.
    monkeypatch.setitem(bench.SHAPES, "tiny", (1, 16, 4, 6, 3, 2))
    assert bench.bytes_moved("tiny", "float32", "fwd") == 4 * (384 + 54 + 96)
    assert bench.bytes_moved("tiny", "float64", "fwd") == 8 * 534
    assert bench.bytes_moved("tiny", "bfloat16", "fwd+bwd") == 2 * (534 + 96 + 384 + 54 + 384 + 54)


FUSED_COLUMNS = ["shape", "dtype", "mode", "backend", "unfused ms", "fused ms",
                 "fused speed-up", "unfused peak MiB", "fused peak MiB", "fused / unfused memory"]


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_operator_benchmark_compares_fused_with_unfused(backend):
    from involution_d2.ops import native

    if backend == "native" and not native.native_is_available():
        pytest.skip("the native CPU kernel is unavailable")
    out = run_tool("benchmark_involution.py", "--fused", "--device", "cpu", "--shapes",
                   "cls.res5", "--repeat", "1", "--warmup", "0", "--backends", backend)
    assert f"# cls.res5: {CLS_RES5}, float32, [{backend}]" in out
    rows = table(out, FUSED_COLUMNS)
    assert [(r["shape"], r["dtype"], r["mode"], r["backend"]) for r in rows] == [
        ("cls.res5", "float32", "fwd", backend), ("cls.res5", "float32", "fwd+bwd", backend)]
    for r in rows:
        assert float(r["fused speed-up"][:-1]) > 0
        assert float(r["unfused ms"]) > 0 and float(r["fused ms"]) > 0
        assert r["fused speed-up"].endswith("x")
        assert_ratio(r["fused speed-up"], r["unfused ms"], r["fused ms"],
                     f"{r['mode']} fused speed-up")
        if r["fused / unfused memory"] == "-":
            assert float(r["unfused peak MiB"]) <= 0.05, r
        else:
            assert_ratio(r["fused / unfused memory"], r["fused peak MiB"],
                         r["unfused peak MiB"], f"{r['mode']} fused / unfused memory")


def test_saved_bytes_counter_matches_a_hand_count():
    """count_saved_bytes on a conv + ReLU whose saved tensors are known: the convolution
    keeps its input (and its weight: a parameter, not counted), the ReLU its output; a
    storage saved twice counts once; nothing is saved without gradients."""
    from benchmarking.models import count_saved_bytes

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    x = torch.randn(1, 3, 5, 5)
    # x: 3 x 5 x 5 floats, the ReLU's output 4 x 5 x 5: 4 bytes each.
    loss, saved = count_saved_bytes(model, lambda: model(x).sum())
    assert saved == 4 * (3 * 25 + 4 * 25)
    assert loss.requires_grad  # the forward's result is handed back
    model.double()
    assert count_saved_bytes(model, lambda: model(x.double()).sum())[1] == 8 * (75 + 100)

    def square():  # the product saves the ReLU's output (twice), as the ReLU does
        y = model(x.double())
        return (y * y).sum()

    assert count_saved_bytes(model, square)[1] == 8 * (75 + 100)
    with torch.no_grad():
        assert count_saved_bytes(model, lambda: model(x.double()).sum())[1] == 0


@requires_detectron2
def test_model_benchmark_counts_the_bytes_saved_for_backward():
    # Exact counts. The fused involution keeps no generated kernels (with them RedNet-50
    # saved 1.67x ResNet-50's bytes); what remains is RedNet's own structure (docs/BENCHMARKS.md,
    # "Memory"): 1.19x at this size, 1.20x at 800x1216.
    out = run_tool("benchmark_models.py", "--device", "cpu", "--suites", "backbone_all_trained",
                   "--size", "64", "96", "--dtypes", "float32", "--saved-only")
    table_rows = table(out, ["suite", "model [involution backend]", "dtype",
                             "saved for backward MiB", "saved / ResNet-50"])
    twin = "ResNet-50, all stages trained"
    assert [(r["suite"], r["model [involution backend]"], r["dtype"]) for r in table_rows] == [
        ("backbone_all_trained", name, "float32")
        for name in ("RedNet-50, all stages trained [native]",
                     "RedNet-50, all stages trained [torch]", twin)]
    rows = {r["model [involution backend]"]: list(r.values()) for r in table_rows}
    assert set(rows) == {twin, "RedNet-50, all stages trained [native]",
                         "RedNet-50, all stages trained [torch]"}
    assert rows[twin][4] == "1.00"
    for name, row in rows.items():
        assert float(row[3]) > 0
        assert_ratio(row[4], row[3], rows[twin][3], f"{name} saved / ResNet-50")
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
    # An argparse error: the usage first, the reason after, nothing benchmarked.
    assert out.stderr.startswith("usage: benchmark_involution.py") and not out.stdout
    assert "the official operator is CUDA only" in out.stderr



def test_operator_benchmark_times_each_layer_of_a_call():
    skip_if_unavailable("native")
    out = run_tool("benchmark_involution.py", "--device", "cpu", "--per-call", "--shapes",
                   "cls.res5", "--repeat", "3")
    assert f"# cls.res5: {CLS_RES5}, float32" in out
    table_rows = table(out, ["shape", "dtype", "call", "wall us/call"])  # no GPU columns
    # The layers of the path, outermost first, then the floor.
    assert [(r["shape"], r["dtype"], r["call"]) for r in table_rows] == [
        ("cls.res5", "float32", call) for call in
        ("involution()", "custom operator", "native kernel", "torch.add (floor)")]
    rows = {r["call"]: float(r["wall us/call"]) for r in table_rows}
    assert set(rows) == {"involution()", "custom operator", "native kernel", "torch.add (floor)"}
    assert all(v > 0 for v in rows.values())
    assert "# per call: 3 forward calls back to back" in out and "median of" not in out


@requires_detectron2
def test_warm_tool_runs_a_training_step_and_counts_what_it_compiled():
    # On the CPU (a dry run) nothing is compiled; the line says so in the format the device
    # check's log is read in.
    out = run_tool("warm_cuda_kernels.py", "--device", "cpu", "--size", "64", "96",
                   "--dtypes", "float32")
    assert re.fullmatch(
        r"COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x\.yaml torch\.float32: first "
        r"training step \d+\.\d s; 0 kernels in 0 programs compiled or loaded from CuPy's "
        r"disk cache in 0\.0 s", out.strip())


@requires_detectron2
def test_warm_tool_plans_a_training_steps_kernels_and_times_nvrtc_without_a_gpu():
    if find_spec("cuda") is None or find_spec("cuda.bindings") is None:
        pytest.skip("needs NVRTC (cuda-bindings, installed with CUDA torch)")
    out = run_tool("warm_cuda_kernels.py", "--compile-only", "--size", "64", "96",
                   "--dtypes", "float32", "bfloat16")
    lines = out.strip().splitlines()
    counts = []
    for line, dtype in zip(lines, ("float32", "bfloat16")):
        match = re.fullmatch(
            r"COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x\.yaml torch\." + dtype
            + r": (\d+) kernels in (\d+) programs; NVRTC compiles them in \d+\.\d s on this "
            r"CPU", line)
        assert match, line
        counts.append((int(match[1]), int(match[2])))
    assert len(lines) == 2 and counts[0] == counts[1]
    kernels, programs = counts[0]
    # Both variants of each kind, for RedNet-50's strided and plain layers (frozen stem and
    # res2 run no backward), one program per shape and kind.
    assert 8 <= kernels <= 64 and 4 <= programs <= kernels


def test_kernel_timing_needs_a_gpu():
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark_involution.py"), "--device",
           "cpu", "--kernels"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "--kernels times the CUDA kernels: it needs --device cuda" \
        in out.stderr


def test_kernel_table_plans_every_kind_into_its_own_buffer():
    # The --kernels table (CUDA only) launches the backend's own plans: each kind and variant
    # on its inputs, writing the buffer of its output. Planned here on the CPU.
    from benchmarking.operator import KERNEL_KINDS, kernel_launches, kernel_tensors
    from involution_d2.ops import cupy_backend

    for shape, stride in (("det.res3.s2", 2), ("det.res3", 1)):
        tensors = kernel_tensors(shape, torch.float32, torch.device("cpu"))
        x, wt, gout, r, span, bias, out, gx, gw = tensors
        written = {"forward": out, "backward_input": gx, "backward_weight": gw,
                   "fused_forward": out, "fused_backward_input": gx}
        assert set(KERNEL_KINDS) == set(written)
        for kind, (variants, _) in KERNEL_KINDS.items():
            for variant in variants:
                name, total, args = kernel_launches(kind, variant, tensors, stride, 3)
                assert name.startswith(f"involution_{kind}" + ("_rows<" if variant == "rows"
                                                                else "<")), name
                buffer = args[cupy_backend.input_pointers(name)]
                assert buffer is written[kind] and total > 0
        assert r.shape[1] == x.shape[1] // 4 and span.shape == (wt.shape[1] * 49, r.shape[1])
