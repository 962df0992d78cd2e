"""Parameter counts, including the one the official tables use."""
from dataclasses import dataclass

from torch import nn

__all__ = ["ParameterCounts", "count_parameters"]


@dataclass
class ParameterCounts:
    all: int        # every parameter
    trainable: int  # requires_grad, what the optimizer updates here
    openmmlab: int  # what OpenMMLab's counter reports for the same model (see below)


def _is_frozen_bn(module):
    from detectron2.layers import FrozenBatchNorm2d

    return isinstance(module, FrozenBatchNorm2d)


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Counts parameters three ways.

    OpenMMLab counts parameters with ``requires_grad``. Its detectors freeze the stem and
    the first stage (``frozen_stages=1``) but only put the other stages' BatchNorms in eval
    mode (``norm_eval``), so their scale and shift stay trainable parameters; Detectron2's
    ``FrozenBatchNorm2d`` keeps them as buffers. The OpenMMLab count therefore adds the
    scale and shift of every FrozenBatchNorm2d that sits in a block (a module with direct
    trainable parameters among its descendants) that is itself trained.
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    extra = 0
    for block in _trained_blocks(model):
        for m in block.modules():
            if _is_frozen_bn(m):
                extra += m.weight.numel() + m.bias.numel()
    return ParameterCounts(total, trainable, trainable + extra)


def _trained_blocks(model):
    """Modules from Detectron2's ``CNNBlockBase`` (stems and residual blocks) with a
    trainable parameter; outside backbones, FrozenBatchNorm2d does not occur."""
    from detectron2.layers import CNNBlockBase

    for m in model.modules():
        if isinstance(m, CNNBlockBase) and any(p.requires_grad for p in m.parameters()):
            yield m
