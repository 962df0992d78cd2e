#!/usr/bin/env python3
"""Compile every CUDA kernel that one training step of a model needs, and say how long it took.

One training step (forward and backward, batch 1 at 800x1216 by default) of the config, in
each dtype (float32; bfloat16 autocast), on the GPU: the "cupy" backend compiles the kernels
each shape needs on first use (one NVRTC program per shape, both kernel variants, which it
then times to keep the faster) and CuPy keeps them in its disk cache (~/.cupy/kernel_cache,
or $CUPY_CACHE_DIR), so a second run of this tool, or any later process, loads them instead.
Prints the step's wall time, and the programs, kernels and seconds spent compiling or loading.

    python3 tools/warm_cuda_kernels.py            # Mask R-CNN RedNet-50 FPN
    python3 tools/warm_cuda_kernels.py --config COCO-Detection/retinanet_rednet50_fpn_1x.yaml
"""
import argparse
import time

import torch

from benchmarking.models import build_config, residual_branches_start_at_zero, synthetic_batch


def warm(config, dtypes, size, device="cuda"):
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from involution_d2.ops import cupy_backend

    device = torch.device(device)
    cfg = build_config(config, device)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    residual_branches_start_at_zero(model)
    inputs, _ = synthetic_batch(cfg, 1, size, device)
    for dtype in dtypes:
        before = dict(cupy_backend.COMPILED)
        began = time.perf_counter()
        with EventStorage(0), torch.autocast(device.type, dtype=dtype or torch.float32,
                                             enabled=dtype is not None):
            loss = sum(model(inputs).values())
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - began
        done = {k: cupy_backend.COMPILED[k] - before[k] for k in before}
        print(f"{config} {dtype or torch.float32}: first training step {took:.1f} s; "
              f"{done['kernels']} kernels in {done['programs']} programs compiled or loaded "
              f"from CuPy's disk cache in {done['seconds']:.1f} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config",
                        default="COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x.yaml")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--size", nargs=2, type=int, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--device", default="cuda",
                        help="cuda (default); cpu runs the same step and compiles nothing "
                             "(a dry run)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (and CuPy): it compiles the CUDA kernels; "
                     "--device cpu for a dry run")
    dtypes = [None if d == "float32" else getattr(torch, d) for d in args.dtypes]
    warm(args.config, dtypes, tuple(args.size), args.device)


if __name__ == "__main__":
    main()
