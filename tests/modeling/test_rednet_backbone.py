"""RedNet backbones: sizes of the official models, checkpoint key layout, freezing, shapes."""
import re

import pytest
import torch

from helpers import requires_detectron2

pytestmark = requires_detectron2

# Backbone parameters of the official code (official-architecture.md section 3), in M.
OFFICIAL_BACKBONE_PARAMS = {26: 7.184, 38: 10.338, 50: 13.492, 101: 23.604, 152: 31.936}

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# The key grammar of the official checkpoints (section 4), without the "backbone." prefix.
OFFICIAL_KEY = re.compile(
    rf"stem\.[04]\.(conv\.weight|bn\.{_BN})"
    rf"|stem\.1\.(conv1\.conv\.weight|conv1\.bn\.{_BN}|conv2\.conv\.(weight|bias))"
    rf"|stem\.2\.{_BN}"
    rf"|layer[1-4]\.\d+\.(conv1\.weight|bn1\.{_BN}|conv2\.conv1\.conv\.weight"
    rf"|conv2\.conv1\.bn\.{_BN}|conv2\.conv2\.conv\.(weight|bias)|bn2\.{_BN}|conv3\.weight"
    rf"|bn3\.{_BN}|downsample\.0\.weight|downsample\.1\.{_BN})"
)


def to_official(key):
    """Our key -> the official one: a prefix change only."""
    m = re.match(r"res(\d)\.(.*)", key)
    return f"layer{int(m.group(1)) - 1}.{m.group(2)}" if m else key


def build(depth=50, **kw):
    from involution_d2.modeling import RedNet

    kw.setdefault("norm", "BN")
    kw.setdefault("out_features", ["res2", "res3", "res4", "res5"])
    return RedNet(depth=depth, **kw)


@pytest.mark.parametrize("depth", sorted(OFFICIAL_BACKBONE_PARAMS))
def test_parameter_count_matches_official(depth):
    n = sum(p.numel() for p in build(depth).parameters())
    assert abs(n / 1e6 - OFFICIAL_BACKBONE_PARAMS[depth]) < 0.0015  # rounding of the table
    # With the 3x3 stem involution of the classifier (720 parameters fewer) and the
    # 2048 -> 1000 classifier: the paper's ImageNet column, printed with 2 decimals.
    classifier = sum(p.numel() for p in build(depth, stem_involution_kernel=3).parameters())
    assert classifier == n - 720
    paper = {26: 9.23, 38: 12.39, 50: 15.54, 101: 25.65, 152: 33.99}[depth]
    assert abs((classifier + 2048 * 1000 + 1000) / 1e6 - paper) < 0.006


def test_state_dict_has_the_official_layout():
    keys = list(build(50).state_dict())
    assert len(keys) == 449  # as the official RedNet-50 checkpoint
    official = [to_official(k) for k in keys]
    assert all(OFFICIAL_KEY.fullmatch(k) for k in official), [
        k for k in official if not OFFICIAL_KEY.fullmatch(k)][:5]
    # Projections exactly where the official model has them: first block of each stage.
    assert sorted({k.split(".downsample")[0] for k in official if ".downsample." in k}) == [
        "layer1.0", "layer2.0", "layer3.0", "layer4.0"]


def test_outputs_and_strides():
    model = build(50, out_features=["stem", "res2", "res3", "res4", "res5"]).eval()
    shapes = model.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "stem": (64, 4), "res2": (256, 4), "res3": (512, 8), "res4": (1024, 16),
        "res5": (2048, 32)}
    out = model(torch.randn(1, 3, 64, 96))
    for name, t in out.items():
        assert t.shape == (1, shapes[name].channels, 64 // shapes[name].stride,
                           96 // shapes[name].stride)
    # Odd sizes work (the official model asserts on them).
    out = model(torch.randn(1, 3, 75, 99))
    assert out["res5"].shape == (1, 2048, 3, 4)


@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_untrained_deep_rednet_stays_finite(norm):
    # Without zero-initialised residual branches, random RedNet-50 features overflow to
    # inf/NaN by res4 (involution is quadratic in its input).  (FrozenBN models are meant
    # to start from pretrained weights and are not zero-initialised.)
    torch.manual_seed(0)
    model = build(50, norm=norm).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 160))
    assert all(torch.isfinite(v).all() and v.abs().max() < 1e3 for v in out.values())


def test_freeze_at_has_detectron2_meaning():
    from detectron2.layers import FrozenBatchNorm2d

    model = build(26, freeze_at=2)
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert frozen == {"stem", "res2"} and trainable == {"res3", "res4", "res5"}
    # Frozen blocks use FrozenBatchNorm, inside their involutions too.
    assert isinstance(model.res2[0].conv2.conv1.bn, FrozenBatchNorm2d)
    assert isinstance(model.stem._modules["2"], FrozenBatchNorm2d)
    assert isinstance(model.res3[0].conv2.conv1.bn, torch.nn.BatchNorm2d)


def test_norm_by_name_and_bad_depth():
    from detectron2.layers import FrozenBatchNorm2d

    gn = build(26, norm="GN")
    assert isinstance(gn.res3[0].bn1, torch.nn.GroupNorm)
    assert isinstance(gn.res3[0].conv2.conv1.gn, torch.nn.GroupNorm)
    frozen = build(26, norm="FrozenBN")
    assert isinstance(frozen.res4[0].bn3, FrozenBatchNorm2d)
    with pytest.raises(ValueError, match="depth must be one of .* got 34"):
        build(34)


def test_builds_from_yacs_config():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone

    from involution_d2.config import add_involution_config

    cfg = get_cfg()
    add_involution_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_rednet_backbone"
    cfg.MODEL.REDNET.DEPTH = 38
    cfg.MODEL.INVOLUTION.BACKEND = "reference"
    model = build_backbone(cfg, ShapeSpec(channels=3))
    assert model.depth == 38 and model.res3[0].conv2.backend == "reference"
    assert list(model.output_shape()) == ["res2", "res3", "res4", "res5"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # FrozenBN holds no parameters and freeze_at=2 freezes the stem and res2.
    assert trainable < sum(p.numel() for p in build(38).parameters())
