"""involution-convert: official RedNet checkpoint -> Detectron2 checkpoint of our configs."""
import argparse
import os
import sys

from .official import (
    KINDS,
    CheckpointFormatError,
    convert,
    load_official_state_dict,
    STEM_KERNEL_GENERATION,
    rednet_depth,
    stem_involution_kernel,
    to_detectron2_checkpoint,
)
from ..config import DETECTION_STEM_INVOLUTION_KERNEL
from ..utils.file_io import is_disk_full, save_atomically


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="involution-convert",
        description="Convert an official OpenMMLab RedNet checkpoint (mmcls ImageNet, mmdet "
                    "2.x Faster/Mask R-CNN or RetinaNet, mmseg 0.x semantic FPN or UPerNet) "
                    "into a Detectron2 checkpoint for MODEL.WEIGHTS / train.init_checkpoint.")
    parser.add_argument("src", help="official .pth file")
    parser.add_argument("dst", help="output .pth file (written atomically), or a folder to "
                                    "write <SRC name>_d2.pth into; never SRC itself")
    parser.add_argument("--expect", choices=sorted(KINDS),
                        help="fail unless SRC is a checkpoint of this kind")
    parser.add_argument("--allow-unmatched", action="store_true",
                        help="write DST even if some official keys have no counterpart")
    return parser.parse_args(argv)


def destination(src, dst):
    """The file to write: ``dst``, or ``dst/<src name>_d2.pth`` when ``dst`` is a folder
    (or ends with a separator). Refuses the file ``src`` itself, also through a link or
    another path to it."""
    if os.path.isdir(dst) or dst.endswith(("/", os.sep)):
        dst = os.path.join(dst, os.path.splitext(os.path.basename(src))[0] + "_d2.pth")
    if os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst):
        raise CheckpointFormatError(
            f"DST {dst} is the file SRC {src}: writing it would replace the official "
            "checkpoint; give another file name (or a folder)")
    return dst


def main(argv=None):
    args = parse_args(argv)
    try:
        args.dst = destination(args.src, args.dst)
        official = load_official_state_dict(args.src)
        converted, family, unmatched = convert(official, expect=args.expect)
        depth = rednet_depth(official)
    except (CheckpointFormatError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.src}: RedNet-{depth} {family}, {len(converted)} tensors converted")
    if unmatched:
        print(f"{len(unmatched)} official keys have no counterpart in our {family} model:")
        for key in unmatched:
            print(f"  {key} {tuple(official[key].shape)}")
        if not args.allow_unmatched:
            print(f"nothing written; pass --allow-unmatched to write {args.dst} without them",
                  file=sys.stderr)
            return 1
    try:
        save_atomically(to_detectron2_checkpoint(converted, family), args.dst)
    except Exception as exc:  # torch.save reports a full disk as a RuntimeError
        if not is_disk_full(exc):
            raise
        print(f"error: no space left on device in {os.path.dirname(os.path.abspath(args.dst))}"
              f": {args.dst} was not written", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    if family == "classification":
        kernel = stem_involution_kernel(converted[STEM_KERNEL_GENERATION[0]])
        if kernel != DETECTION_STEM_INVOLUTION_KERNEL:
            print(_stem_note(kernel))
    return 0


def _stem_note(kernel):
    k = DETECTION_STEM_INVOLUTION_KERNEL
    return (
        f"note: the stem involution of this checkpoint is {kernel}x{kernel}, as in the official "
        "ImageNet classifier. It initialises every tensor of the classifier configs "
        "(configs/ImageNet-Classification), and every RedNet tensor of the detection and "
        "segmentation configs except the stem involution's kernel generation "
        f"({', '.join(STEM_KERNEL_GENERATION)}): their stem involution is {k}x{k}, so it keeps "
        "its initialisation, as in the official detectors and segmentors trained from these "
        "weights.")


if __name__ == "__main__":
    sys.exit(main())
