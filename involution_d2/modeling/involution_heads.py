"""What the involution heads share: their layers and their config."""
from torch import nn

from ..layers import Involution
from .backbone.rednet import involution_kwargs_from_config


def involution_relu_layers(channels, count, involution_kwargs=None):
    """`count` involutions (K = 7 unless involution_kwargs says otherwise), each + ReLU."""
    kw = dict(kernel_size=7)
    kw.update(involution_kwargs or {})
    return [Involution(channels, stride=1, activation=nn.ReLU(), **kw) for _ in range(count)]


class InvolutionConfigMixin:
    """from_config of the Detectron2 head it extends, plus ``involution_kwargs`` from
    cfg.MODEL.INVOLUTION."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["involution_kwargs"] = involution_kwargs_from_config(cfg)
        return ret
