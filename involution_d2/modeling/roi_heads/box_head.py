"""An involution conv+FC box head: Detectron2's FastRCNNConvFCHead whose 3x3 convs are
involutions + ReLU.  (The seed's R-CNN configs keep the 2-FC head; this one goes beyond.)"""
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead

from ...layers import Involution
from ..backbone.rednet import involution_kwargs_from_config

__all__ = ["InvolutionConvFCHead"]


@ROI_BOX_HEAD_REGISTRY.register()
class InvolutionConvFCHead(FastRCNNConvFCHead):
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
        super().__init__(input_shape, conv_dims=conv_dims, fc_dims=fc_dims)
        kw = dict(kernel_size=7)
        kw.update(involution_kwargs or {})
        for k in range(len(conv_dims)):
            layer = Involution(channels, stride=1, activation=nn.ReLU(), **kw)
            setattr(self, f"conv{k + 1}", layer)  # keeps its place in the Sequential
            self.conv_norm_relus[k] = layer

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["involution_kwargs"] = involution_kwargs_from_config(cfg)
        return ret
