"""An involution conv+FC box head: Detectron2's FastRCNNConvFCHead whose 3x3 convs are
involutions + ReLU.  (The seed's R-CNN configs keep the 2-FC head; this one goes beyond.)"""
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead

from ..involution_heads import InvolutionConfigMixin, involution_relu_layers

__all__ = ["InvolutionConvFCHead"]


@ROI_BOX_HEAD_REGISTRY.register()
class InvolutionConvFCHead(InvolutionConfigMixin, FastRCNNConvFCHead):
    @configurable
    def __init__(self, input_shape: ShapeSpec, *, conv_dims, fc_dims, conv_norm="",
                 involution_kwargs=None):
        """
        Args:
            conv_dims (list[int]): one involution each; every entry must equal the input
                channels, which an involution keeps.
            conv_norm: must be empty: the involutions' own norm is in ``involution_kwargs``.
            fc_dims, input_shape: as :class:`FastRCNNConvFCHead`.
            involution_kwargs (dict): arguments of the :class:`Involution` layers.
        """
        channels = input_shape.channels
        if any(d != channels for d in conv_dims):
            raise ValueError(f"InvolutionConvFCHead: conv_dims={list(conv_dims)} change the "
                             f"channel count, which an involution keeps ({channels}); set "
                             f"MODEL.ROI_BOX_HEAD.CONV_DIM = {channels}")
        if conv_norm:
            raise ValueError(f"InvolutionConvFCHead: conv_norm={conv_norm!r} is not used; "
                             "set the involutions' norm with MODEL.INVOLUTION.NORM")
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, fc_dims=fc_dims)
        layers = involution_relu_layers(channels, len(conv_dims), involution_kwargs)
        for k, layer in enumerate(layers):
            setattr(self, f"conv{k + 1}", layer)  # keeps its place in the Sequential
        self.conv_norm_relus = layers
