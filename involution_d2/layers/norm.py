"""Normalization layers chosen by name, the Detectron2 way."""
import math

from torch import nn


def get_norm(norm, out_channels):
    """Detectron2's ``get_norm`` ("BN", "SyncBN", "FrozenBN", "GN", "LN", ... or a callable).

    Without Detectron2 installed, the plain PyTorch norms still work ("BN", "SyncBN", "GN"),
    so that the layers can be used and tested with torch alone.

    "GN" is GroupNorm with 32 groups as in Detectron2, or gcd(32, C) groups where C is not a
    multiple of 32: the kernel-generation bottleneck of an involution can have only 8.
    """
    if norm == "GN":
        return nn.GroupNorm(math.gcd(32, out_channels), out_channels)
    try:
        from detectron2.layers import get_norm as d2_get_norm
    except ImportError:
        d2_get_norm = None
    if d2_get_norm is not None:
        return d2_get_norm(norm, out_channels)
    if norm is None or norm == "":
        return None
    if callable(norm):
        return norm(out_channels)
    plain = {
        "BN": nn.BatchNorm2d,
        "SyncBN": nn.SyncBatchNorm,
    }
    if norm not in plain:
        raise ValueError(f"norm={norm!r} needs Detectron2, which is not installed; "
                         f"without it choose one of {sorted(plain)}")
    return plain[norm](out_channels)
