#!/usr/bin/env python3
"""Time and peak memory of the involution backends on RedNet-50's involution shapes.

Every backend runs on the same inputs in one process, round-robin (A B C A B C ...), so that
a noisy machine slows all of them alike; the table gives medians and the ratios against the
unfold baseline ("reference"), on the CPU also against the pure-PyTorch "torch" backend, and
on a GPU against "naive", a one-thread-per-output-element CUDA kernel written the way the
official one works (our own code), and with --official-kernel against the official CuPy
operator itself (float32 and float64; loaded from a clone of d-li14/involution).

"x of bandwidth bound" is the time over the time the least traffic (each input read once,
each output written once) takes at the memory bandwidth: on a GPU its peak (from CuPy), on
the CPU the bandwidth of a large tensor copy measured at the start of the run with the same
threads (1.0 would be the bound).

Peak memory, measured in a separate run after the timed ones, is what the call adds on top
of its inputs: on a GPU from the CUDA allocator's peak, on the CPU from the process's
resident-set high-water mark (reset before the call through /proc/self/clear_refs; Linux
with glibc only).

    python3 tools/benchmark_involution.py --device cpu --backends reference torch native
    python3 tools/benchmark_involution.py --device cpu --shapes det.res2 cls.res2
    python3 tools/benchmark_involution.py --device cuda --dtypes float32 bfloat16
    python3 tools/benchmark_involution.py --fused --device cpu     # fused against unfused
    python3 tools/benchmark_involution.py --device cuda --per-call --shapes det.res4 det.res5
    python3 tools/benchmark_involution.py --host-cost              # CPU; --device cuda too
    python3 tools/benchmark_involution.py --device cuda --kernels --shapes det.stem det.res2
    python3 tools/benchmark_involution.py --device cuda \
        --official-kernel ../involution/cls/mmcls/models/utils/involution_cuda.py

With --per-call it times one forward call at each layer of its path (the public function,
the custom operator, the kernel launch; on a GPU also "naive" and the official operator):
the wall time per call of calls issued back to back, and on a GPU the kernels' own time
(torch.profiler), whose difference is what the host costs beyond the kernels.

With --host-cost it times one call on tiny tensors (where the kernel costs nearly nothing)
against a ``torch.add`` on the same tensor: the public function, the backend's forward kernel
called directly, an Involution layer; and it lists the Python calls of ours in one layer
forward.

With --kernels (CUDA) it times each variant of the CUDA kernels (the chunked ones and the
row-blocked ones, which the backend chooses between per shape by measuring) for the forward,
the input gradient, the weight gradient and the fused forward (reduced features C/4), launched
directly and timed with CUDA events, with the speed-up over the first variant and the time
over the least-traffic time (the fused kernels' least traffic: x and the reduced features
read, the output written).

With --fused it compares, per backend, the layer's last two steps run as the fused operator
(``fused_involution``: span convolution C/4 -> G*K*K and aggregation in one) against the
same steps unfused (the span as a 1x1 convolution writing the generated kernels, then the
aggregation), on the same inputs.
"""
import argparse

import torch

from benchmarking.operator import DTYPES, SHAPES, report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=None, choices=sorted(SHAPES),
                        metavar="SHAPE", help=f"default: all of {', '.join(SHAPES)}")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES),
                        help="default: float32 on CPU; float32 and bfloat16 on CUDA")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: reference torch native (CPU); reference torch cupy "
                             "naive (CUDA)")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"],
                        choices=["fwd", "fwd+bwd"])
    parser.add_argument("--repeat", type=int, default=None, help="default: 3 CPU, 20 CUDA")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bandwidth", type=float, default=None, metavar="GB/s",
                        help="the memory bandwidth for the 'x of bandwidth bound' column "
                             "(default: on a GPU its peak from CuPy's device properties, "
                             "H200: 4800; on the CPU a tensor copy measured in the run)")
    parser.add_argument("--fused", action="store_true",
                        help="compare the fused operator (span convolution + aggregation) "
                             "with the two steps unfused, per backend (default: native on "
                             "the CPU, cupy on CUDA)")
    parser.add_argument("--per-call", action="store_true",
                        help="time one forward call at each layer of its path (wall and, on "
                             "a GPU, kernel time per call; --repeat calls, default 100)")
    parser.add_argument("--host-cost", action="store_true",
                        help="the host cost of one call on tiny tensors against a torch.add, "
                             "and the calls of ours in one Involution forward")
    parser.add_argument("--kernels", action="store_true",
                        help="CUDA: time each kernel variant (chunked, row-blocked) of the "
                             "forward, both gradients and the fused forward, launched "
                             "directly, side by side")
    parser.add_argument("--official-kernel", metavar="PATH", default=None,
                        help="also time the official CuPy operator: the path of "
                             "cls/mmcls/models/utils/involution_cuda.py in a clone of "
                             "d-li14/involution (CUDA, float32/float64 only)")
    args = parser.parse_args(argv)
    if args.official_kernel and not args.device.startswith("cuda"):
        parser.error("--official-kernel needs --device cuda: the official operator is CUDA "
                     "only")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    report(args)


if __name__ == "__main__":
    main()
