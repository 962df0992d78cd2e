"""Normalization layers chosen by name, the Detectron2 way."""
from torch import nn


def get_norm(norm, out_channels):
    """Detectron2's ``get_norm`` ("BN", "SyncBN", "FrozenBN", "GN", "LN", ... or a callable).

    Without Detectron2 installed, the plain PyTorch norms still work ("BN", "SyncBN", "GN"),
    so that the layers can be used and tested with torch alone.
    """
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
        "GN": lambda channels: nn.GroupNorm(32, channels),
    }
    if norm not in plain:
        raise ValueError(f"norm={norm!r} needs Detectron2, which is not installed; "
                         f"without it choose one of {sorted(plain)}")
    return plain[norm](out_channels)
