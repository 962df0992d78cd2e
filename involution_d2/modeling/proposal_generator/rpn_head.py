"""The involution RPN head (the seed's "Head: involution"): Detectron2's StandardRPNHead with
its shared 3x3 conv replaced by an involution + ReLU."""
from torch import nn

from detectron2.config import configurable
from detectron2.modeling.proposal_generator import RPN_HEAD_REGISTRY, StandardRPNHead

from ...layers import Involution
from ..backbone.rednet import involution_kwargs_from_config

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
        if any(d not in (-1, in_channels) for d in conv_dims):
            raise ValueError(f"InvolutionRPNHead: conv_dims={list(conv_dims)} change the "
                             f"channel count, which an involution keeps ({in_channels}); "
                             "use -1 (MODEL.RPN.CONV_DIMS)")
        super().__init__(in_channels=in_channels, num_anchors=num_anchors, box_dim=box_dim,
                         conv_dims=conv_dims)
        kw = dict(kernel_size=7)
        kw.update(involution_kwargs or {})

        def involution_relu():
            return Involution(in_channels, stride=1, activation=nn.ReLU(), **kw)

        if len(conv_dims) == 1:
            self.conv = involution_relu()
        else:
            for name in list(self.conv._modules):
                setattr(self.conv, name, involution_relu())

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["involution_kwargs"] = involution_kwargs_from_config(cfg)
        return ret
