"""Layers built on the involution operator.  Detectron2 is optional here: with it, norms are
chosen by all of Detectron2's names; without it, by the plain PyTorch ones."""
from .conv_norm_act import ConvNormAct
from .involution import (
    DEFAULT_GROUP_CHANNELS,
    DEFAULT_KERNEL_SIZE,
    DEFAULT_REDUCTION_RATIO,
    Involution,
)
from .norm import get_norm

__all__ = ["ConvNormAct", "DEFAULT_GROUP_CHANNELS", "DEFAULT_KERNEL_SIZE",
           "DEFAULT_REDUCTION_RATIO", "Involution", "get_norm"]
