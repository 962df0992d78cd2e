"""The involution RPN head (the seed's "Head: involution"): Detectron2's StandardRPNHead with
its shared 3x3 conv replaced by an involution + ReLU."""
from detectron2.config import configurable
from detectron2.modeling.proposal_generator import RPN_HEAD_REGISTRY, StandardRPNHead

from ..involution_heads import InvolutionConfigMixin, involution_relu_layers

__all__ = ["InvolutionRPNHead"]


@RPN_HEAD_REGISTRY.register()
class InvolutionRPNHead(InvolutionConfigMixin, StandardRPNHead):
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
        layers = involution_relu_layers(in_channels, len(conv_dims), involution_kwargs)
        if len(conv_dims) == 1:
            self.conv = layers[0]
        else:
            for name, layer in zip(list(self.conv._modules), layers):
                setattr(self.conv, name, layer)
