#!/usr/bin/env python3
"""Export a RedNet model for deployment, and check each export against the eager model.

- ``torchscript``: the whole detector (``model.ts``; load it with ``torch.jit.load`` after
  ``import involution_d2.ops``, which registers the involution operator), by
  ``--method tracing`` (default: Detectron2's ``TracingAdapter``, one image in, its
  predictions out) or ``--method scripting`` (Detectron2's ``scripting_with_instances``, as
  its ``tools/deploy/export_model.py`` scripts: a list of ``{"image": tensor}`` in, a list of
  dicts of prediction fields out, before post-processing);
- ``export``: the backbone (RedNet) through ``torch.export`` (``backbone.pt2``), one
  ``involution_d2::involution`` node per involution;
- ``onnx``: that exported backbone with each involution lowered to standard ONNX operators
  (Conv, Mul, ReduceSum, Add; see ``involution_d2.ops.export``), checked with onnxruntime
  (``pip install -e ".[export]"``: onnx, onnxscript, onnxruntime).

    python3 tools/export_model.py --config-file configs/COCO-Detection/faster_rcnn_rednet50_fpn_1x.yaml \\
        --output exported/ MODEL.WEIGHTS output/model_final.pth
    python3 tools/export_model.py --config-file CONFIG --format onnx --size 800 1216 --output exported/

The sample input is a random image of --size (height, width); the traced detector then
runs on images of any size, the exported backbone and ONNX graph on that size. The
functions are in ``involution_d2.export``.
"""
import argparse
import os
import sys

import torch

from involution_d2.export import (Backbone, backbone_input, count_involution_nodes,
                                  export_backbone, export_onnx, relative_error, run_onnx,
                                  sample_image, script_detector, scripted_predictions,
                                  trace_detector)

FORMATS = ("torchscript", "export", "onnx")
METHODS = ("tracing", "scripting")


def load_model(config_file, opts=()):
    """The config's model in eval mode, with MODEL.WEIGHTS (yacs) or train.init_checkpoint
    (LazyConfig) loaded when set, by the checkpointer that never runs code from a file."""
    from involution_d2.config.files import setup_config
    from involution_d2.engine import build_model_with_weights

    return build_model_with_weights(setup_config(config_file, opts)).eval()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="a LazyConfig .py or yacs .yaml")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--method", choices=METHODS, default="tracing",
                        help="how the torchscript format is made (default: tracing)")
    parser.add_argument("--output", required=True, help="directory for the exported files")
    parser.add_argument("--size", nargs=2, type=int, default=(800, 1216), metavar=("H", "W"),
                        help="height and width of the sample image (default: 800 1216)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides (yacs KEY VALUE pairs, LazyConfig key=value)")
    return parser.parse_args(argv)


def main(argv=None):
    """The command: exit status 0, or 2 with one line saying what to fix."""
    from involution_d2.utils.errors import exit_status

    return exit_status(export, parse_args(argv))


def export(args):
    """Runs the command; returns {format: path or (path, relative error)}."""
    from detectron2.utils.testing import assert_instances_allclose

    import involution_d2.ops  # noqa: F401 (registers the operator)

    os.makedirs(args.output, exist_ok=True)
    model = load_model(args.config_file, args.opts)
    image = sample_image(tuple(args.size))
    results = {}
    if "torchscript" in args.format and args.method == "tracing":
        path = os.path.join(args.output, "model.ts")
        traced, want, got = trace_detector(model, image, path)
        if len(want) or len(got):  # Detectron2's comparison fails on two empty results
            assert_instances_allclose(want, got, size_as_tensor=True)
        results["torchscript"] = path
        print(f"{path}: the detector traced ({count_involution_nodes(traced)} involution "
              f"nodes), {len(got)} predictions, equal to eager")
    elif "torchscript" in args.format:
        path = os.path.join(args.output, "model.ts")
        scripted = script_detector(model, path)
        # Checked on a batch of two images of different sizes.
        small = sample_image(tuple(max(32, s * 3 // 4) for s in args.size), seed=1)
        wants, gots = scripted_predictions(model, scripted, [image, small])
        for want, got in zip(wants, gots):
            if len(want) or len(got):
                assert_instances_allclose(want, got, size_as_tensor=True)
        results["torchscript"] = path
        print(f"{path}: the detector scripted ({count_involution_nodes(scripted)} involution "
              f"operator calls), {sum(len(g) for g in gots)} predictions on two images, equal "
              "to eager")
    if "export" in args.format or "onnx" in args.format:
        tensor = backbone_input(model, image)
        path = os.path.join(args.output, "backbone.pt2")
        program = export_backbone(model, tensor, path)
        with torch.no_grad():
            want = Backbone(model).eval()(tensor)
        error = relative_error(program.module()(tensor), want)
        results["export"] = (path, error)
        print(f"{path}: torch.export of the backbone ({count_involution_nodes(program)} "
              f"involution nodes), relative error {error:.1e}")
        if "onnx" in args.format:
            path = os.path.join(args.output, "backbone.onnx")
            export_onnx(program, tensor, path)
            try:
                error = relative_error(run_onnx(path, tensor), want)
            except ImportError:
                error = None
                print(f"{path}: written; not checked (pip install onnxruntime to check it)")
            else:
                print(f"{path}: ONNX backbone checked with onnxruntime, relative error "
                      f"{error:.1e}")
            results["onnx"] = (path, error)
    return results


if __name__ == "__main__":
    sys.exit(main())
