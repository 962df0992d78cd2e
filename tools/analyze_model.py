#!/usr/bin/env python3
"""Parameters and FLOPs of a config's model (like Detectron2's tools/analyze_model.py), with
the involution aggregation counted, and the comparison with the official model zoo.

    python3 tools/analyze_model.py --config-file configs/COCO-Detection/faster_rcnn_rednet50_invfpn_invhead_1x.yaml
    python3 tools/analyze_model.py --config-file CONFIG --tasks flop --convention detectron2 --input-size 800 1216
    python3 tools/analyze_model.py --official-table             # every row of the official model zoo
    python3 tools/analyze_model.py --official-table --rows rednet26 retinanet

FLOPs are multiply-adds (fvcore's and OpenMMLab's unit). --convention openmmlab (default)
measures what the official model zoo's FLOPs column measured: OpenMMLab's get_flops.py forward on one
image of that tool's default size (224x224, 1280x800, 2048x1024 as height x width) and its
counting rules; --convention detectron2 counts the model's real inference with fvcore's
rules. Both report the total with and without the involution aggregation, which
OpenMMLab's counter cannot see inside a custom operator (the official figures agree with the
total *with* it; see docs/MODEL_ZOO.md).
"""
import argparse
import sys
import time

TASKS = ("parameter", "flop", "structure")


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config-file", metavar="FILE", help="a LazyConfig .py or yacs .yaml")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["parameter", "flop"])
    parser.add_argument("--convention", choices=("openmmlab", "detectron2"), default="openmmlab")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                        help="image height and width (default: OpenMMLab's for the task)")
    parser.add_argument("--max-depth", type=int, default=3,
                        help="depth of the per-module tables")
    parser.add_argument("--official-table", action="store_true",
                        help="analyse every config of the official model zoo and print our "
                             "Params and FLOPs beside the official ones (about 25 min on 2 "
                             "CPU cores)")
    parser.add_argument("--rows", nargs="+", default=[],
                        help="with --official-table: only configs whose path contains one of "
                             "these")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides (yacs KEY VALUE pairs, LazyConfig key=value)")
    args = parser.parse_args(argv)
    if not args.official_table and not args.config_file:
        parser.error("give --config-file CONFIG, or --official-table")
    if args.input_size and min(args.input_size) < 32:
        parser.error(f"--input-size {args.input_size[0]} {args.input_size[1]}: both sides must "
                     "be at least 32 pixels (the backbone's total stride)")
    return args


def _build(config_file, opts):
    """The config's model with its weights, if it names any (as Detectron2's analysis tool
    loads them), by the checkpointer that never runs code from a file."""
    from involution_d2.config.files import setup_config
    from involution_d2.engine import build_model_with_weights

    return build_model_with_weights(setup_config(config_file, opts))


def _g(n):
    return f"{n / 1e9:,.2f} G"


def analyze(args):
    from fvcore.nn import flop_count_table, parameter_count_table

    from involution_d2.analysis import count_parameters, model_flops

    model = _build(args.config_file, args.opts)
    if "structure" in args.tasks:
        print(model)
    if "parameter" in args.tasks:
        counts = count_parameters(model)
        print(parameter_count_table(model, max_depth=args.max_depth))
        print(f"Parameters of {args.config_file}:")
        print(f"  all                        {counts.all:>14,}")
        print(f"  trainable                  {counts.trainable:>14,}")
        print(f"  as OpenMMLab counts them   {counts.openmmlab:>14,}   (trainable + the "
              "scale/shift of FrozenBN in trained blocks)")
    if "flop" in args.tasks:
        start = time.perf_counter()
        report, (h, w) = model_flops(model, args.convention, args.input_size)
        seconds = time.perf_counter() - start
        print(flop_count_table(report.analysis, max_depth=args.max_depth))
        print(f"FLOPs (multiply-adds) of {args.config_file}, {args.convention} convention, "
              f"one {h}x{w} image (counted in {seconds:.0f} s):")
        print(f"  total, with the involution aggregation   {_g(report.total):>12}")
        print(f"  without the aggregation                  {_g(report.without_aggregation):>12}")
        print(f"  the aggregation alone                    {_g(report.aggregation):>12}")


def official_table(args):
    from tabulate import tabulate

    from involution_d2.analysis import OFFICIAL_MODEL_ZOO, count_parameters, model_flops
    from involution_d2.model_zoo import get_config_file

    rows = [r for r in OFFICIAL_MODEL_ZOO
            if not args.rows or any(key in r.config for key in args.rows)]
    if not rows:
        raise SystemExit(f"--rows {' '.join(args.rows)}: no official config matches; configs "
                         "are " + ", ".join(r.config for r in OFFICIAL_MODEL_ZOO))
    table = []
    for row in rows:
        model = _build(get_config_file(row.config), [])
        params = count_parameters(model).openmmlab / 1e6
        report, _ = model_flops(model, "openmmlab")
        with_agg, without = report.total / 1e9, report.without_aggregation / 1e9
        table.append([row.name, f"{params:.3f}", row.params_m,
                      f"{100 * (params / row.params_m - 1):+.1f} %", f"{with_agg:.2f}",
                      f"{without:.2f}", row.flops_g, f"{100 * (with_agg / row.flops_g - 1):+.1f} %",
                      f"{100 * (without / row.flops_g - 1):+.1f} %"])
        print(f"{row.name}: done", file=sys.stderr, flush=True)  # a row takes minutes
        del model
    print(tabulate(table, tablefmt="github", disable_numparse=True, colalign=(
        "left",) + ("right",) * 8, headers=[
        "Model", "Params (M): ours", "official", "diff", "FLOPs (G): ours, with aggregation",
        "without", "official", "diff (with)", "diff (without)"]))


def main(argv=None):
    args = _parse(argv)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation notes
    if args.official_table:
        official_table(args)
        return 0
    from involution_d2.utils.errors import exit_status

    return exit_status(analyze, args)


if __name__ == "__main__":
    sys.exit(main())
