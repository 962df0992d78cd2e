"""Convert an official OpenMMLab RedNet checkpoint for this project's Detectron2 configs.

    python tools/convert_official_weights.py rednet50.pth rednet50_d2.pth

Same as the ``involution-convert`` console script; see ``--help``.
"""
import sys

from involution_d2.checkpoint.cli import main

if __name__ == "__main__":
    sys.exit(main())
