"""An involution conv+FC box head: Detectron2's FastRCNNConvFCHead with an involution + ReLU
for each 3x3 conv.  (The official R-CNN configs keep the 2-FC head; this one goes beyond.)"""
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead
from torch import nn

from ...config import involution_kwargs_from_config
from ...layers import Involution

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
            involution_kwargs (dict): arguments of the :class:`Involution` layers.
            others: as :class:`FastRCNNConvFCHead`.
        """
        channels = input_shape.channels
        # Checked before the parent sizes its FCs after conv_dims.
        if any(d != channels for d in conv_dims):
            raise ValueError(f"InvolutionConvFCHead: conv_dims={list(conv_dims)} change the "
                             f"channel count, which an involution keeps ({channels}); set "
                             f"MODEL.ROI_BOX_HEAD.CONV_DIM = {channels}")
        if conv_norm:
            raise ValueError(f"InvolutionConvFCHead: conv_norm={conv_norm!r} is not used; "
                             "set the involutions' norm with MODEL.INVOLUTION.NORM")
        super().__init__(input_shape, conv_dims=conv_dims, fc_dims=fc_dims)
        # The parent builds and initialises the FCs; its 3x3 convs ("conv{k}", also listed
        # in conv_norm_relus) become involutions.
        for k in range(len(conv_dims)):
            involution = Involution(channels, activation=nn.ReLU(), **(involution_kwargs or {}))
            self.add_module(f"conv{k + 1}", involution)
            self.conv_norm_relus[k] = involution

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["involution_kwargs"] = involution_kwargs_from_config(cfg)
        return ret
