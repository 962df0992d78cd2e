"""The involution RPN head (the official "Head: involution"): Detectron2's StandardRPNHead
whose shared 3x3 conv is an involution + ReLU."""
from detectron2.config import configurable
from detectron2.modeling.proposal_generator import RPN_HEAD_REGISTRY, StandardRPNHead
from torch import nn

from ...config import involution_kwargs_from_config
from ...layers import Involution

__all__ = ["InvolutionRPNHead"]


@RPN_HEAD_REGISTRY.register()
class InvolutionRPNHead(StandardRPNHead):
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
        if not conv_dims or any(d not in (-1, in_channels) for d in conv_dims):
            raise ValueError(f"InvolutionRPNHead: conv_dims={list(conv_dims)} change the "
                             f"channel count, which an involution keeps ({in_channels}); "
                             "use -1 (MODEL.RPN.CONV_DIMS)")
        super().__init__(in_channels=in_channels, num_anchors=num_anchors, box_dim=box_dim,
                         conv_dims=conv_dims)
        # The hidden convs are replaced after the parent has built and initialised its
        # layers, not through its _get_rpn_conv hook: the parent initialises every
        # nn.Conv2d below it with a bias, which the involution's kernel generation
        # (conv + norm) has not.  Names as the parent's: "conv", or "conv.conv{k}".
        def involution_relu():
            return Involution(in_channels, activation=nn.ReLU(), **(involution_kwargs or {}))

        if len(conv_dims) == 1:
            self.conv = involution_relu()
        else:
            for name, _ in list(self.conv.named_children()):
                self.conv.add_module(name, involution_relu())

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["involution_kwargs"] = involution_kwargs_from_config(cfg)
        return ret
