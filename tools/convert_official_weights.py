"""Convert an official OpenMMLab RedNet checkpoint for this project's Detectron2 configs.

    python tools/convert_official_weights.py rednet50.pth rednet50_d2.pth

Same as the ``involution-convert`` console script; see ``--help``.
"""
import os
import sys

# Run from a checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from involution_d2.checkpoint.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
