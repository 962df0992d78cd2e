"""Config defaults of the involution models (yacs)."""
from detectron2.config import CfgNode as CN

from . import modeling  # noqa: F401  (registers the components the configs name)


def add_involution_config(cfg):
    """Add the keys of RedNet backbones and involution necks/heads to a Detectron2 config."""
    cfg.MODEL.REDNET = CN()
    cfg.MODEL.REDNET.DEPTH = 50  # 26, 38, 50, 101, 152
    cfg.MODEL.REDNET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Norm of the backbone (and of its involutions' kernel generation).
    cfg.MODEL.REDNET.NORM = "FrozenBN"
    cfg.MODEL.REDNET.STEM_OUT_CHANNELS = 64
    cfg.MODEL.REDNET.RES2_OUT_CHANNELS = 256

    cfg.MODEL.INVOLUTION = CN()
    cfg.MODEL.INVOLUTION.KERNEL_SIZE = 7
    cfg.MODEL.INVOLUTION.GROUP_CHANNELS = 16  # channels sharing one generated kernel
    cfg.MODEL.INVOLUTION.REDUCTION_RATIO = 4  # of the kernel-generation bottleneck
    # "auto": CuPy kernels on CUDA when CuPy works, else the memory-efficient torch path.
    cfg.MODEL.INVOLUTION.BACKEND = "auto"
    # Norm in the kernel generation of the involutions of necks and heads.
    cfg.MODEL.INVOLUTION.NORM = "BN"
