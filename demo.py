#!/usr/bin/env python3
"""Run a trained model on images and write pictures of its predictions.

    python demo.py --config-file configs/Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.yaml \\
        --input photo.jpg more_photos/ --output predictions/ \\
        --opts MODEL.WEIGHTS output/demo_mask_rcnn_shapes/model_final.pth

yacs configs run through Detectron2's DefaultPredictor, LazyConfig files through its
equivalent (weights: ``--opts train.init_checkpoint=PATH``).  Instances (boxes, masks,
classes, scores) or semantic segmentation are drawn with Detectron2's Visualizer into one
PNG per input image.
"""
import argparse
import os
import sys

import tqdm
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer

from involution_d2.engine import setup_config
from involution_d2.engine.predictor import build_predictor, test_metadata

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(inputs):
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path)
                            if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"--input {' '.join(inputs)}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def draw(image_bgr, prediction, metadata, threshold):
    vis = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    if "instances" in prediction:
        instances = prediction["instances"].to("cpu")
        out = vis.draw_instance_predictions(instances[instances.scores >= threshold])
    else:
        out = vis.draw_sem_seg(prediction["sem_seg"].argmax(dim=0).to("cpu"))
    return out.get_image()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="a LazyConfig .py or yacs .yaml")
    parser.add_argument("--input", nargs="+", required=True, help="images and/or folders")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides, e.g. MODEL.WEIGHTS model_final.pth (yacs) "
                             "or train.init_checkpoint=model_final.pth (LazyConfig)")
    args = parser.parse_args(argv)

    cfg = setup_config(args.config_file, args.opts)
    predictor = build_predictor(cfg)
    metadata = test_metadata(cfg)
    os.makedirs(args.output, exist_ok=True)
    from PIL import Image

    for path in tqdm.tqdm(list_images(args.input), desc="predicting", unit="image"):
        image = read_image(path, format="BGR")
        picture = draw(image, predictor(image), metadata, args.confidence_threshold)
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        Image.fromarray(picture).save(os.path.join(args.output, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
