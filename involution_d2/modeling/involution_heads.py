"""What the involution neck and heads share: their layer and their config."""
from torch import nn

from ..layers import Involution
from ..config import involution_kwargs_from_config

__all__ = ["involution_relu", "with_involution_kwargs"]


def involution_relu(channels, involution_kwargs=None):
    """An involution that keeps ``channels``, followed by a ReLU (a head's 3x3 conv)."""
    return Involution(channels, stride=1, activation=nn.ReLU(), **(involution_kwargs or {}))


def with_involution_kwargs(args, cfg):
    """``args`` of a head's from_config, plus ``involution_kwargs`` from cfg.MODEL.INVOLUTION."""
    return {**args, "involution_kwargs": involution_kwargs_from_config(cfg)}
