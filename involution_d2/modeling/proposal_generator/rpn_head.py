"""The involution RPN head (the official "Head: involution"): Detectron2's StandardRPNHead
whose shared 3x3 conv is an involution + ReLU.  Built directly, with the parent's module
names, config and outputs: its ``_get_rpn_conv`` hook cannot be used, because the parent then
re-initialises every nn.Conv2d below it assuming each has a bias, which the involution's
kernel generation (conv + norm) has not."""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.modeling.proposal_generator import RPN_HEAD_REGISTRY, StandardRPNHead
from torch import nn

from ..involution_heads import involution_relu, with_involution_kwargs

__all__ = ["InvolutionRPNHead"]


@RPN_HEAD_REGISTRY.register()
class InvolutionRPNHead(nn.Module):
    @configurable
    def __init__(self, *, in_channels, num_anchors, box_dim=4, conv_dims=(-1,),
                 involution_kwargs=None):
        """
        Args:
            conv_dims: as StandardRPNHead's, but an involution keeps its channels: each entry
                must be -1 or ``in_channels``.
            involution_kwargs (dict): arguments of the :class:`Involution` layers.
            others: as :class:`StandardRPNHead`.
        """
        super().__init__()
        if not conv_dims or any(d not in (-1, in_channels) for d in conv_dims):
            raise ValueError(f"InvolutionRPNHead: conv_dims={list(conv_dims)} change the "
                             f"channel count, which an involution keeps ({in_channels}); "
                             "use -1 (MODEL.RPN.CONV_DIMS)")
        if len(conv_dims) == 1:
            self.conv = involution_relu(in_channels, involution_kwargs)
        else:
            self.conv = nn.Sequential()
            for k in range(len(conv_dims)):
                self.conv.add_module(f"conv{k}", involution_relu(in_channels, involution_kwargs))
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * box_dim, kernel_size=1)
        for layer in (self.objectness_logits, self.anchor_deltas):  # as StandardRPNHead
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return with_involution_kwargs(StandardRPNHead.from_config(cfg, input_shape), cfg)

    def forward(self, features: List[torch.Tensor]):
        """As StandardRPNHead's: per level, objectness logits (N, A, Hi, Wi) and anchor
        deltas (N, A * box_dim, Hi, Wi)."""
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas
