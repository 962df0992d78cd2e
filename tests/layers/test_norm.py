"""involution_d2.layers.get_norm: Detectron2's get_norm wherever that works, "GN" also on
channel counts that are not multiples of 32, and the plain PyTorch norms without Detectron2."""
import sys

import pytest
import torch
from torch import nn

from involution_d2.layers import get_norm

from helpers import requires_detectron2


@requires_detectron2
@pytest.mark.parametrize("norm", ["BN", "SyncBN", "FrozenBN", "GN", "LN", "naiveSyncBN", "",
                                  None, lambda c: nn.InstanceNorm2d(c)])
def test_detectron2s_where_detectron2s_works(norm):
    from detectron2.layers import get_norm as detectron2_get_norm

    ours, theirs = get_norm(norm, 64), detectron2_get_norm(norm, 64)
    assert type(ours) is type(theirs)
    if isinstance(theirs, nn.GroupNorm):
        assert ours.num_groups == theirs.num_groups == 32


@pytest.mark.parametrize("channels, groups", [(8, 8), (16, 16), (48, 16), (96, 32)])
def test_group_norm_on_any_channel_count(channels, groups):
    """The kernel generation of an involution has C / 4 channels: 8 in RedNet's stem."""
    norm = get_norm("GN", channels)
    assert type(norm) is nn.GroupNorm and norm.num_groups == groups
    assert norm(torch.randn(2, channels, 3, 3)).shape == (2, channels, 3, 3)


@requires_detectron2
def test_detectron2_alone_rejects_those_channel_counts():
    """Why the extension exists (if Detectron2 ever accepts them, it can go)."""
    from detectron2.layers import get_norm as detectron2_get_norm

    with pytest.raises(ValueError):
        detectron2_get_norm("GN", 8)


def test_plain_torch_norms_without_detectron2(monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2.layers", None)  # its import now fails
    assert type(get_norm("BN", 64)) is nn.BatchNorm2d
    assert type(get_norm("SyncBN", 64)) is nn.SyncBatchNorm
    assert get_norm("GN", 64).num_groups == 32 and get_norm("GN", 8).num_groups == 8
    assert get_norm("", 64) is None and get_norm(None, 64) is None
    assert type(get_norm(nn.InstanceNorm2d, 64)) is nn.InstanceNorm2d
    with pytest.raises(ValueError, match="'FrozenBN' needs Detectron2"):
        get_norm("FrozenBN", 64)
