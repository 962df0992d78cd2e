"""The involution mask head (the seed's Mask R-CNN "Head: involution"): Detectron2's
MaskRCNNConvUpsampleHead with each 3x3 conv replaced by an involution + ReLU; the 2x deconv
and the 1x1 predictor stay."""
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead

from ..involution_heads import InvolutionConfigMixin, involution_relu_layers

__all__ = ["InvolutionMaskRCNNHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class InvolutionMaskRCNNHead(InvolutionConfigMixin, MaskRCNNConvUpsampleHead):
    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes, conv_dims, conv_norm="",
                 involution_kwargs=None, **kwargs):
        """
        Args:
            conv_dims (list[int]): as MaskRCNNConvUpsampleHead's; all but the last (the
                deconv) must equal the input channels, which an involution keeps.
            conv_norm: must be empty: the involutions' own norm is in ``involution_kwargs``.
            involution_kwargs (dict): arguments of the :class:`Involution` layers.
        """
        channels = input_shape.channels
        if any(d != channels for d in conv_dims[:-1]):
            raise ValueError(f"InvolutionMaskRCNNHead: conv_dims={list(conv_dims)} change "
                             f"the channel count, which an involution keeps ({channels}); set "
                             f"MODEL.ROI_MASK_HEAD.CONV_DIM = {channels}")
        if conv_norm:
            raise ValueError(f"InvolutionMaskRCNNHead: conv_norm={conv_norm!r} is not used; "
                             "set the involutions' norm with MODEL.INVOLUTION.NORM")
        super().__init__(input_shape=input_shape, num_classes=num_classes, conv_dims=conv_dims,
                         **kwargs)
        layers = involution_relu_layers(channels, len(conv_dims) - 1, involution_kwargs)
        for k, layer in enumerate(layers):
            setattr(self, f"mask_fcn{k + 1}", layer)  # keeps its place in the Sequential
        self.conv_norm_relus = layers
