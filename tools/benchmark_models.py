#!/usr/bin/env python3
"""Throughput and peak memory of RedNet-50 models against Detectron2's ResNet-50 twins,
side by side in one run, in float32 and bfloat16 (autocast), with a profile of where the
time goes.

    python3 tools/benchmark_models.py --suites backbone faster_rcnn            # GPU
    python3 tools/benchmark_models.py --device cpu --suites backbone           # CPU: native, torch
    python3 tools/benchmark_models.py --suites mask_rcnn --size 800 1216 --batch 2 --profile
    python3 tools/benchmark_models.py --device cpu --suites demo               # demo eval s/image
    python3 tools/benchmark_models.py --device cpu --suites backbone_all_trained --memory-variants

Every model of a suite is built from its config (Detectron2's model-zoo config for the
ResNet-50 twin) with random weights and measured on the same synthetic batch. The models
take turns (A B C A B C ...) so that a noisy machine slows them alike; the table gives the
median, and ratios against the twin (> 1: faster than ResNet-50) and, with several involution
backends or memory variants, against the first of the same model: that one is the median of
the ratios within each round, with their quartiles (a slow spell of the machine shifts
medians apart, but slows both runs of a round).

- inference: the network's forward pass as OpenMMLab's benchmarks run it (two-stage
  detectors: box head on 1000 proposals and mask head on 100 per image), so that every
  model does the same work whatever its random weights detect; no post-processing.
- train: forward with losses, backward and an SGD step on synthetic annotations (three
  boxes per image; Cityscapes-style labels for segmentation).
- peak memory: what one iteration adds on top of the model and batch (the CUDA allocator's
  peak on a GPU; the resident-set high-water mark on the CPU).
- demo (suite): seconds per image of the demo Mask R-CNN (configs/Demo, RedNet-26 with
  involution FPN, RPN and mask heads) evaluating 128x128 images, post-processing included,
  with every one of its 100 detections kept (random weights, score threshold 0), per
  involution backend: there is no ResNet twin.
"""
import argparse

import torch

from benchmarking.models import DTYPES, SUITES, report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--suites", nargs="+", choices=sorted(SUITES) + ["demo"],
                        default=["backbone", "faster_rcnn"])
    parser.add_argument("--backends", nargs="+", default=None,
                        choices=["auto", "native", "torch", "reference", "cupy"],
                        help="involution backends to compare (default: auto on GPU; native "
                             "and torch on CPU; reference is unfold)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=sorted(DTYPES))
    parser.add_argument("--modes", nargs="+", default=["inference", "train"],
                        choices=["inference", "train"])
    parser.add_argument("--batch", type=int, default=None, help="default: 2 GPU, 1 CPU")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                        help="image size (default: 800 1216; 512 1024 for semantic_fpn)")
    parser.add_argument("--repeat", type=int, default=None, help="default: 20 GPU, 3 CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default: 5 GPU, 1 CPU")
    parser.add_argument("--profile", action="store_true",
                        help="also print where the time goes, per model and mode")
    parser.add_argument("--memory-variants", action="store_true",
                        help="each RedNet model three times: without recomputation, with the "
                             "default recomputation of norm+ReLU outputs, and with with_cp "
                             "(the blocks checkpointed, two at a time); the last column compares "
                             "each with the first")
    parser.add_argument("--saved-only", action="store_true",
                        help="only count the bytes one training forward saves for backward "
                             "(exact, seconds per model; no timing)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU; use --device cpu")
    report(args)


if __name__ == "__main__":
    main()
