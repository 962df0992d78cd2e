from .box_head import InvolutionConvFCHead
from .mask_head import InvolutionMaskRCNNHead

__all__ = ["InvolutionConvFCHead", "InvolutionMaskRCNNHead"]
