"""Convolution, normalization and activation, with the submodule names of OpenMMLab's
ConvModule (``conv``, ``bn`` / ``gn``) so that official checkpoints load by prefix alone."""
from torch import nn

from .norm import get_norm


def _norm_attr(norm_module):
    # OpenMMLab names the norm after its kind; every official RedNet checkpoint uses "bn".
    return "gn" if isinstance(norm_module, nn.GroupNorm) else "bn"


class ConvNormAct(nn.Module):
    __jit_unused_properties__ = ["norm"]

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, *, norm="BN",
                 activation=True):
        """
        Args:
            norm (str or callable): normalization by Detectron2's name; "" for none, in which
                case the convolution has a bias.
            activation (bool): ReLU after the norm.
        """
        super().__init__()
        norm_module = get_norm(norm, out_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=(kernel_size - 1) // 2, bias=norm_module is None)
        # One of the two is the norm, the other None (TorchScript reads neither by name).
        is_gn = norm_module is not None and _norm_attr(norm_module) == "gn"
        self.bn = None if is_gn else norm_module
        self.gn = norm_module if is_gn else None
        self.activation = nn.ReLU(inplace=True) if activation else None

    @property
    def norm(self):
        return self.gn if self.gn is not None else self.bn

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.gn is not None:
            x = self.gn(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
