"""An involution conv+FC box head: Detectron2's FastRCNNConvFCHead with an involution + ReLU
for each 3x3 conv.  (The official R-CNN configs keep the 2-FC head; this one goes beyond.)
Built directly, with the parent's module names and config."""
import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead
from torch import nn

from ..involution_heads import involution_relu, with_involution_kwargs

__all__ = ["InvolutionConvFCHead"]


@ROI_BOX_HEAD_REGISTRY.register()
class InvolutionConvFCHead(nn.Sequential):
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
        super().__init__()
        channels = input_shape.channels
        if any(d != channels for d in conv_dims):
            raise ValueError(f"InvolutionConvFCHead: conv_dims={list(conv_dims)} change the "
                             f"channel count, which an involution keeps ({channels}); set "
                             f"MODEL.ROI_BOX_HEAD.CONV_DIM = {channels}")
        if conv_norm:
            raise ValueError(f"InvolutionConvFCHead: conv_norm={conv_norm!r} is not used; "
                             "set the involutions' norm with MODEL.INVOLUTION.NORM")
        if not conv_dims and not fc_dims:
            raise ValueError("InvolutionConvFCHead: no layers; set MODEL.ROI_BOX_HEAD.NUM_CONV "
                             "or NUM_FC")
        for k in range(len(conv_dims)):
            self.add_module(f"conv{k + 1}", involution_relu(channels, involution_kwargs))
        self._output_size = (channels, input_shape.height, input_shape.width)
        for k, fc_dim in enumerate(fc_dims):
            if k == 0:
                self.add_module("flatten", nn.Flatten())
            fc = nn.Linear(int(np.prod(self._output_size)), fc_dim)
            weight_init.c2_xavier_fill(fc)  # as FastRCNNConvFCHead
            self.add_module(f"fc{k + 1}", fc)
            self.add_module(f"fc_relu{k + 1}", nn.ReLU())
            self._output_size = fc_dim

    @classmethod
    def from_config(cls, cfg, input_shape):
        return with_involution_kwargs(FastRCNNConvFCHead.from_config(cfg, input_shape), cfg)

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x

    @property
    @torch.jit.unused
    def output_shape(self):
        o = self._output_size
        if isinstance(o, int):
            return ShapeSpec(channels=o)
        return ShapeSpec(channels=o[0], height=o[1], width=o[2])
