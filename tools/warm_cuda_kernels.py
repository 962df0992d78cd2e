#!/usr/bin/env python3
"""Compile every CUDA kernel that one training step of a model needs, and say how long it took.

On a GPU: one training step (forward and backward, batch 1 at 800x1216 by default) of the
config in each dtype (float32; bfloat16 autocast). The "cupy" backend compiles the kernels
each layer needs on first use (one NVRTC program per layer and size, both kernel variants,
which it then times to keep the faster), and CuPy keeps them in its disk cache
(~/.cupy/kernel_cache, or $CUPY_CACHE_DIR), so a second run of this tool, or any later
process, loads them instead.
Prints the step's wall time, and the programs, kernels and seconds spent compiling or loading.

With --compile-only (no GPU needed): the same step runs on the CPU with the "cupy" backend's
own planning, its launches replaced by zero-filled outputs and its timing by a constant, to
list the programs it would compile; then NVRTC (cuda-bindings, which CUDA builds of torch
install) compiles them here, one after another, as the backend would: the first-use compile
time without a GPU, on this machine's CPU.

    python3 tools/warm_cuda_kernels.py            # Mask R-CNN RedNet-50 FPN, on the GPU
    python3 tools/warm_cuda_kernels.py --config COCO-Detection/retinanet_rednet50_fpn_1x.yaml
    python3 tools/warm_cuda_kernels.py --compile-only --batch 2
"""
import argparse
import contextlib
import time

import torch

from benchmarking.models import build_config, residual_branches_start_at_zero, synthetic_batch


def training_step(model, inputs, dtype, device):
    from detectron2.utils.events import EventStorage

    with EventStorage(0), torch.autocast(device.type, dtype=dtype or torch.float32,
                                         enabled=dtype is not None):
        loss = sum(model(inputs).values())
    loss.backward()
    model.zero_grad(set_to_none=True)


def build(config, size, batch, device):
    from detectron2.modeling import build_model

    cfg = build_config(config, device)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    residual_branches_start_at_zero(model)
    return model, synthetic_batch(cfg, batch, size, device)[0]


def warm(config, dtypes, size, batch, device="cuda"):
    from involution_d2.ops import cupy_backend

    device = torch.device(device)
    model, inputs = build(config, size, batch, device)
    for dtype in dtypes:
        before = dict(cupy_backend.COMPILED)
        began = time.perf_counter()
        training_step(model, inputs, dtype, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - began
        done = {k: cupy_backend.COMPILED[k] - before[k] for k in before}
        print(f"{config} {dtype or torch.float32}: first training step {took:.1f} s; "
              f"{done['kernels']} kernels in {done['programs']} programs compiled or loaded "
              f"from CuPy's disk cache in {done['seconds']:.1f} s", flush=True)


@contextlib.contextmanager
def planning_on_the_cpu(programs):
    """The "cupy" backend for CPU tensors, compiling and launching nothing: the kernel names
    of each program it would compile are appended to ``programs``; each launch fills its
    output with zeros (the step stays finite) and every variant times the same."""
    from involution_d2.ops import backends, cupy_backend
    from involution_d2.ops.backends import complete

    compiled = set()

    def compile_kernels(names, device_index):
        missing = sorted(set(names) - compiled)
        if missing:
            compiled.update(missing)
            programs.append(missing)

    def launch(plan, device):
        name, _, args = plan
        compile_kernels([name], None)
        args[cupy_backend.input_pointers(name)].zero_()

    saved = {k: getattr(cupy_backend, k) for k in ("compile_kernels", "_launch", "time_run")}
    cupy_backend.compile_kernels, cupy_backend._launch = compile_kernels, launch
    cupy_backend.time_run = lambda run, device: (run(), 1.0)[1]
    key = ("auto", "cpu")
    previous = backends._SELECTED.get(key)
    backends._SELECTED[key] = ("cupy", complete(cupy_backend.KERNELS))
    chosen = dict(cupy_backend._CHOSEN)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(cupy_backend, k, v)
        backends._SELECTED.pop(key)
        if previous is not None:
            backends._SELECTED[key] = previous
        cupy_backend._CHOSEN.clear()
        cupy_backend._CHOSEN.update(chosen)


_NVRTC_OPTIONS = [b"--std=c++14", b"--gpu-architecture=sm_90", b"-ftz=true"]


def nvrtc_seconds(names):
    """Seconds NVRTC takes to compile the backend's program for ``names`` (as CuPy asks it
    to: C++14, flush to zero; for sm_90, the H200's)."""
    from cuda.bindings import nvrtc

    from involution_d2.ops import cupy_backend

    began = time.perf_counter()
    err, program = nvrtc.nvrtcCreateProgram(cupy_backend.program_source(names).encode(),
                                            b"involution.cu", 0, [], [])
    (err,) = nvrtc.nvrtcCompileProgram(program, len(_NVRTC_OPTIONS), _NVRTC_OPTIONS)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"NVRTC could not compile {names}: {err}")
    return time.perf_counter() - began


def compile_only(config, dtypes, size, batch):
    from involution_d2.ops import cupy_backend

    programs = []
    model, inputs = build(config, size, batch, torch.device("cpu"))
    with planning_on_the_cpu(programs):
        training_step(model, inputs, None, torch.device("cpu"))
    for dtype in dtypes:  # the plans depend on the shapes only: the same names in each dtype
        ctype = cupy_backend._CTYPES[dtype or torch.float32]
        named = [[n.replace("<float,", f"<{ctype},", 1) for n in p] for p in programs]
        seconds = sum(nvrtc_seconds(p) for p in named)
        print(f"{config} {dtype or torch.float32}: {sum(map(len, named))} kernels in "
              f"{len(named)} programs; NVRTC compiles them in {seconds:.1f} s on this CPU",
              flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config",
                        default="COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x.yaml")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--size", nargs=2, type=int, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda",
                        help="cuda (default); cpu runs the same step and compiles nothing "
                             "(a dry run)")
    parser.add_argument("--compile-only", action="store_true",
                        help="no GPU: plan the step's kernels on the CPU and time NVRTC "
                             "compiling them here")
    args = parser.parse_args(argv)
    dtypes = [None if d == "float32" else getattr(torch, d) for d in args.dtypes]
    if args.compile_only:
        compile_only(args.config, dtypes, tuple(args.size), args.batch)
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (and CuPy): it compiles the CUDA kernels; "
                     "--device cpu for a dry run, --compile-only to time NVRTC here")
    warm(args.config, dtypes, tuple(args.size), args.batch, args.device)


if __name__ == "__main__":
    main()
