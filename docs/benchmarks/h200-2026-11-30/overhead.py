"""Per call: wall time with no sync between calls (host-bound if above the kernel time)
against the GPU time of the kernels alone (torch.profiler), for our CuPy kernels, the naive
kernel and the official operator.

    python3 overhead.py PATH/TO/d-li14/involution/cls/mmcls/models/utils/involution_cuda.py
"""
import sys, time
import torch
from involution_d2.ops import involution, fused_involution, output_size
from involution_d2.utils.benchmark_operator import SHAPES, load_official_operator, naive_cupy_involution
from torch.profiler import profile, ProfilerActivity

official = load_official_operator(sys.argv[1])
for name in ("det.stem", "det.res3", "det.res4", "det.res5"):
    n, c, h, w, k, s = SHAPES[name]
    p = (k - 1) // 2
    ho, wo = output_size(h, k, s, p), output_size(w, k, s, p)
    x = torch.randn(n, c, h, w, device="cuda")
    wt = torch.randn(n, c // 16, k, k, ho, wo, device="cuda")
    runs = {"cupy": lambda: involution(x, wt, s, p, 1, backend="cupy"),
            "naive": lambda: naive_cupy_involution(x, wt, s, p, 1),
            "official": lambda: official._involution.apply(x, wt, (s, s), (p, p), (1, 1)),
            "torch.add (floor)": lambda: torch.add(x, 1.0)}
    for label, run in runs.items():
        with torch.no_grad():
            for _ in range(10):
                run()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(100):
                run()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / 100 * 1e6
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    run()
                torch.cuda.synchronize()
            gpu = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages()) / 20
        print(f"{name:9s} {label:18s} wall {wall:8.1f} us/call  GPU kernels {gpu:8.1f} us/call", flush=True)
