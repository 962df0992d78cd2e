"""The involution mask head (the official Mask R-CNN "Head: involution"): Detectron2's
MaskRCNNConvUpsampleHead with an involution + ReLU for each 3x3 conv; the 2x deconv and the
1x1 predictor as there.  Built directly, with the parent's module names and config."""
import fvcore.nn.weight_init as weight_init
from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, ShapeSpec
from detectron2.modeling.roi_heads import (
    ROI_MASK_HEAD_REGISTRY,
    BaseMaskRCNNHead,
    MaskRCNNConvUpsampleHead,
)
from torch import nn

from ..involution_heads import involution_relu, with_involution_kwargs

__all__ = ["InvolutionMaskRCNNHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class InvolutionMaskRCNNHead(BaseMaskRCNNHead, nn.Sequential):
    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes, conv_dims, conv_norm="",
                 involution_kwargs=None, **kwargs):
        """
        Args:
            conv_dims (list[int]): as MaskRCNNConvUpsampleHead's: N-1 involutions and the
                deconv; the involutions' entries must equal the input channels, which an
                involution keeps.
            conv_norm: must be empty: the involutions' own norm is in ``involution_kwargs``.
            involution_kwargs (dict): arguments of the :class:`Involution` layers.
            others: as :class:`MaskRCNNConvUpsampleHead`.
        """
        super().__init__(**kwargs)
        channels = input_shape.channels
        if not conv_dims:
            raise ValueError("InvolutionMaskRCNNHead: conv_dims is empty; it needs at least "
                             "the deconv's channels (MODEL.ROI_MASK_HEAD.CONV_DIM)")
        if any(d != channels for d in conv_dims[:-1]):
            raise ValueError(f"InvolutionMaskRCNNHead: conv_dims={list(conv_dims)} change "
                             f"the channel count, which an involution keeps ({channels}); set "
                             f"MODEL.ROI_MASK_HEAD.CONV_DIM = {channels}")
        if conv_norm:
            raise ValueError(f"InvolutionMaskRCNNHead: conv_norm={conv_norm!r} is not used; "
                             "set the involutions' norm with MODEL.INVOLUTION.NORM")
        for k in range(len(conv_dims) - 1):
            self.add_module(f"mask_fcn{k + 1}", involution_relu(channels, involution_kwargs))
        self.deconv = ConvTranspose2d(channels, conv_dims[-1], kernel_size=2, stride=2)
        self.add_module("deconv_relu", nn.ReLU())
        self.predictor = Conv2d(conv_dims[-1], num_classes, kernel_size=1)
        # As MaskRCNNConvUpsampleHead initialises its deconv and predictor.
        weight_init.c2_msra_fill(self.deconv)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return with_involution_kwargs(MaskRCNNConvUpsampleHead.from_config(cfg, input_shape), cfg)

    def layers(self, x):
        for layer in self:
            x = layer(x)
        return x
