"""The involution mask head (the official Mask R-CNN "Head: involution"): Detectron2's
MaskRCNNConvUpsampleHead with an involution + ReLU for each 3x3 conv; the 2x deconv and the
1x1 predictor as there."""
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead
from torch import nn

from ...config import involution_kwargs_from_config
from ...layers import Involution

__all__ = ["InvolutionMaskRCNNHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class InvolutionMaskRCNNHead(MaskRCNNConvUpsampleHead):
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
        channels = input_shape.channels
        # Checked before the parent sizes its deconv after conv_dims.
        if any(d != channels for d in conv_dims[:-1]):
            raise ValueError(f"InvolutionMaskRCNNHead: conv_dims={list(conv_dims)} change "
                             f"the channel count, which an involution keeps ({channels}); set "
                             f"MODEL.ROI_MASK_HEAD.CONV_DIM = {channels}")
        if conv_norm:
            raise ValueError(f"InvolutionMaskRCNNHead: conv_norm={conv_norm!r} is not used; "
                             "set the involutions' norm with MODEL.INVOLUTION.NORM")
        super().__init__(input_shape, num_classes=num_classes, conv_dims=conv_dims, **kwargs)
        # The parent builds and initialises the deconv and the predictor; its 3x3 convs
        # ("mask_fcn{k}", also listed in conv_norm_relus) become involutions.
        for k in range(len(conv_dims) - 1):
            involution = Involution(channels, activation=nn.ReLU(), **(involution_kwargs or {}))
            self.add_module(f"mask_fcn{k + 1}", involution)
            self.conv_norm_relus[k] = involution

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["involution_kwargs"] = involution_kwargs_from_config(cfg)
        return ret
