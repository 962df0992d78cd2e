"""The project's one norm factory: Detectron2's ``get_norm``, extended where the involution
layers need it."""
import math

from torch import nn

__all__ = ["get_norm"]


def get_norm(norm, out_channels):
    """Detectron2's :func:`detectron2.layers.get_norm` ("BN", "SyncBN", "FrozenBN", "GN",
    "LN", ... or a callable), with two extensions:

    * "GN" on a channel count that is not a multiple of 32 has gcd(32, C) groups, where
      Detectron2's ``GroupNorm(32, C)`` fails: the kernel generation of an involution
      reduces its channels by 4 (RedNet's stem involution has 8, a 64-channel block's 16).
      On multiples of 32 it is Detectron2's GroupNorm(32, C).
    * Without Detectron2 installed, the plain PyTorch norms ("BN", "SyncBN", "GN") work,
      so that the layers can be used and tested with torch alone.
    """
    if norm == "GN" and out_channels % 32 != 0:
        return nn.GroupNorm(math.gcd(32, out_channels), out_channels)
    try:
        from detectron2.layers import get_norm as detectron2_get_norm
    except ImportError:
        return _torch_norm(norm, out_channels)
    return detectron2_get_norm(norm, out_channels)


def _torch_norm(norm, out_channels):
    """get_norm without Detectron2: its names whose layers PyTorch has."""
    if norm is None or norm == "":
        return None
    if callable(norm):
        return norm(out_channels)
    plain = {
        "BN": nn.BatchNorm2d,
        "SyncBN": nn.SyncBatchNorm,
        "GN": lambda channels: nn.GroupNorm(32, channels),
    }
    if norm not in plain:
        raise ValueError(f"norm={norm!r} needs Detectron2, which is not installed; "
                         f"without it choose one of {sorted(plain)}")
    return plain[norm](out_channels)
