#!/usr/bin/env python3
"""Run a trained model on images and write pictures of its predictions.

    python demo.py --config-file configs/Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.yaml \\
        --input photo.jpg more_photos/ --output predictions/ \\
        --opts MODEL.WEIGHTS output/demo_mask_rcnn_shapes/model_final.pth

Both config systems run Detectron2's DefaultPredictor steps (LazyConfig weights: ``--opts
train.init_checkpoint=PATH``); weights load without running code.  Instances (boxes, masks,
classes, scores) or semantic segmentation are drawn with Detectron2's Visualizer into one
PNG per input image, <name>.png, renamed (and said so) where that would write over an input
or another picture. Images that cannot be read are reported and skipped; the exit status is
then 1.
"""
import argparse
import itertools
import os
import sys

import tqdm
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer

from involution_d2.config.files import setup_config
from involution_d2.engine import read_config
from involution_d2.engine.predictor import build_predictor, test_metadata
from involution_d2.utils.errors import DiskFullError, UserError, exit_status
from involution_d2.utils.file_io import atomic_write, is_disk_full

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(inputs):
    """The image files of ``inputs`` (files and folders), each once."""
    files, seen = [], set()
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(path):
            found = [path]
        else:
            raise UserError(f"--input {path}: no such file or folder")
        for f in found:
            if os.path.realpath(f) not in seen:
                seen.add(os.path.realpath(f))
                files.append(f)
    if not files:
        raise UserError(f"--input {' '.join(inputs)}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _file_id(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def output_paths(files, output_dir):
    """{input: picture path} in ``output_dir``: <name>.png, unless that file is one of the
    inputs (also through a link) or another input's picture; then <name>_<extension>.png,
    then <name>_<extension>_2.png, ... Also returns notes [(input, picture, reason)] for the
    inputs whose picture was renamed."""
    inputs = {_file_id(f): f for f in files}
    planned, paths, notes = {}, {}, []
    for f in files:
        stem, ext = os.path.splitext(os.path.basename(f))
        kind = ext.lstrip(".").lower() or "image"
        reason = None
        for i in itertools.count():
            name = (f"{stem}.png", f"{stem}_{kind}.png")[i] if i < 2 else f"{stem}_{kind}_{i}.png"
            path = os.path.join(output_dir, name)
            real = os.path.realpath(path)
            overwritten = inputs.get(_file_id(path)) if os.path.exists(path) else None
            if overwritten is None and real not in planned:
                break
            reason = reason or (f"{name} is the input {overwritten}" if overwritten is not None
                                else f"{name} is the picture of {planned[real]}")
        planned[real] = f
        paths[f] = path
        if reason:
            notes.append((f, path, reason))
    return paths, notes


def draw(image_bgr, prediction, metadata, threshold):
    vis = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    if "instances" in prediction:
        instances = prediction["instances"].to("cpu")
        out = vis.draw_instance_predictions(instances[instances.scores >= threshold])
    else:
        out = vis.draw_sem_seg(prediction["sem_seg"].argmax(dim=0).to("cpu"))
    return out.get_image()


def write_png(picture, path):
    from PIL import Image

    try:
        atomic_write(path, lambda f: Image.fromarray(picture).save(f, format="PNG"))
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFullError(f"no space left on device in {os.path.dirname(path) or '.'}: "
                                f"{os.path.basename(path)} was not written") from exc
        raise


def run(args):
    cfg = setup_config(args.config_file, args.opts)
    files = list_images(args.input)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(f"--output {args.output}: a file; give a folder for the pictures")
    os.makedirs(args.output, exist_ok=True)
    paths, notes = output_paths(files, args.output)
    if not read_config(cfg).weights:
        print("WARNING: no weights given (--opts MODEL.WEIGHTS PATH for yacs configs, "
              "train.init_checkpoint=PATH for LazyConfig files): the pictures show the "
              "predictions of an UNTRAINED model", file=sys.stderr, flush=True)
    predictor = build_predictor(cfg)
    metadata = test_metadata(cfg)
    for f, path, reason in notes:
        print(f"{f} -> {path} ({reason})", file=sys.stderr)

    skipped = []
    for f in tqdm.tqdm(files, desc="predicting", unit="image"):
        try:
            image = read_image(f, format="BGR")
        except Exception as exc:  # whatever the file holds, report it and go on
            skipped.append(f)
            tqdm.tqdm.write(f"skipped {f}: not a readable image ({type(exc).__name__}: "
                            f"{exc})", file=sys.stderr)
            continue
        write_png(draw(image, predictor(image), metadata, args.confidence_threshold), paths[f])
    drawn = len(files) - len(skipped)
    print(f"drew {drawn} of {len(files)} images into {args.output}"
          + (f"; skipped {len(skipped)} that could not be read: {', '.join(skipped)}"
             if skipped else ""), file=sys.stderr)
    return 1 if skipped else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="a LazyConfig .py or yacs .yaml")
    parser.add_argument("--input", nargs="+", required=True, help="images and/or folders")
    parser.add_argument("--output", required=True,
                        help="folder for the pictures, <name>.png each (renamed rather than "
                             "written over an input or another picture)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides, e.g. MODEL.WEIGHTS model_final.pth (yacs) "
                             "or train.init_checkpoint=model_final.pth (LazyConfig)")
    return exit_status(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
