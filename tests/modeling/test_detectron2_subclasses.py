"""The involution neck and heads are Detectron2's FPN, FastRCNNConvFCHead,
MaskRCNNConvUpsampleHead and StandardRPNHead with their 3x3 convs replaced: they keep the
parents' checks, module names, lists, initialisation and scripting.  That their state-dict
keys and outputs are those of the official models is proven by tests/modeling/
test_official_fidelity.py (load_every_tensor: every key loaded from a converted official
tensor, every tensor used; then the stages' outputs)."""
import ast
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import REPO, requires_detectron2

pytestmark = requires_detectron2


def pyramid(strides=(4, 8, 16), channels=16):
    """A Detectron2 Backbone giving ``c<stride>`` features of ``channels`` (scriptable)."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import Backbone

    class Pyramid(Backbone):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, channels, 1)

        def forward(self, x):
            y = self.stem(x)
            return {"c4": F.avg_pool2d(y, 4), "c8": F.avg_pool2d(y, 8),
                    "c16": F.avg_pool2d(y, 16), "c32": F.avg_pool2d(y, 32)}

        def output_shape(self):
            return {f"c{s}": ShapeSpec(channels=channels, stride=s) for s in strides}

    return Pyramid()


def involution_fpn(fuse_type="sum"):
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    from involution_d2.modeling import InvolutionFPN

    torch.manual_seed(0)
    return InvolutionFPN(pyramid(strides=(8, 16, 32)), ["c8", "c16", "c32"], 32,
                         top_block=LastLevelMaxPool(), fuse_type=fuse_type).eval()


def test_involution_fpn_is_fpn_with_involution_outputs():
    from detectron2.layers import Conv2d
    from detectron2.modeling import FPN

    from involution_d2.layers import Involution

    fpn = involution_fpn()
    assert isinstance(fpn, FPN)
    # FPN.forward runs output_convs (top-down); the state dict holds fpn_output{stage}.
    for idx, stage in enumerate((5, 4, 3)):
        output, lateral = getattr(fpn, f"fpn_output{stage}"), getattr(fpn, f"fpn_lateral{stage}")
        assert isinstance(output, Involution) and output.activation is None
        assert fpn.output_convs[idx] is output and fpn.lateral_convs[idx] is lateral
        assert type(lateral) is Conv2d and lateral.kernel_size == (1, 1)
        assert not lateral.bias.any()  # FPN's c2_xavier_fill
    assert [n for n, _ in fpn.named_children()] == [
        "fpn_lateral3", "fpn_output3", "fpn_lateral4", "fpn_output4", "fpn_lateral5",
        "fpn_output5", "top_block", "bottom_up"]
    out = fpn(torch.randn(1, 3, 64, 64))
    assert {k: v.shape[-1] for k, v in out.items()} == {"p3": 8, "p4": 4, "p5": 2, "p6": 1}


@pytest.mark.parametrize("fpn_class", ["FPN", "InvolutionFPN"])
def test_involution_fpn_rejects_what_fpn_rejects(fpn_class):
    import detectron2.modeling

    import involution_d2.modeling

    cls = getattr(detectron2.modeling if fpn_class == "FPN" else involution_d2.modeling,
                  fpn_class)
    with pytest.raises(AssertionError, match="not log2 contiguous"):
        cls(pyramid(strides=(4, 16)), ["c4", "c16"], 32)
    with pytest.raises(AssertionError):
        cls(pyramid(), ["c4", "c8"], 32, fuse_type="max")
    with pytest.raises(AssertionError):
        cls(nn.Conv2d(3, 3, 1), ["c4"], 32)  # not a Backbone


def test_involution_fpn_scripts_with_fpns_constant_fuse_type():
    """FPN's torch.jit.Final on _fuse_type reaches the subclass (a subclass that declared
    annotations of its own would hide it), and the scripted FPN equals the eager one."""
    import detectron2.export  # noqa: F401  (FPN's __prepare_scriptable__)

    from detectron2.export.torchscript_patch import freeze_training_mode

    fpn = involution_fpn(fuse_type="avg")
    # Detectron2's export freezes the training flag before it scripts a model, which gives
    # the class annotations of its own.
    with freeze_training_mode(fpn):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation
        scripted = torch.jit.script(fpn)
    assert 'name="_fuse_type"' not in str(scripted.forward.graph)  # a constant, not read
    x = torch.randn(1, 3, 64, 64)
    want, got = fpn(x), scripted(x)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_box_head_is_fast_rcnn_conv_fc_head():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads import FastRCNNConvFCHead

    from involution_d2.layers import Involution
    from involution_d2.modeling import InvolutionConvFCHead

    head = InvolutionConvFCHead(ShapeSpec(channels=16, height=7, width=7), conv_dims=[16, 16],
                                fc_dims=[32], involution_kwargs={"kernel_size": 3})
    assert isinstance(head, FastRCNNConvFCHead)
    assert [n for n, _ in head.named_children()] == ["conv1", "conv2", "flatten", "fc1",
                                                     "fc_relu1"]
    assert head.conv_norm_relus == [head.conv1, head.conv2]
    for conv in head.conv_norm_relus:
        assert isinstance(conv, Involution) and isinstance(conv.activation, nn.ReLU)
        assert conv.kernel_size == 3
    assert head.fcs == [head.fc1] and not head.fc1.bias.any()  # the parent's c2_xavier_fill
    assert head.output_shape == ShapeSpec(channels=32)
    assert head(torch.randn(2, 16, 7, 7)).shape == (2, 32)


def test_mask_head_is_mask_rcnn_conv_upsample_head():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads import MaskRCNNConvUpsampleHead

    from involution_d2.layers import Involution
    from involution_d2.modeling import InvolutionMaskRCNNHead

    head = InvolutionMaskRCNNHead(ShapeSpec(channels=16), num_classes=3, conv_dims=[16, 16, 8],
                                  loss_weight=0.5)
    assert isinstance(head, MaskRCNNConvUpsampleHead) and head.loss_weight == 0.5
    assert [n for n, _ in head.named_children()] == ["mask_fcn1", "mask_fcn2", "deconv",
                                                     "deconv_relu", "predictor"]
    assert head.conv_norm_relus == [head.mask_fcn1, head.mask_fcn2]
    assert all(isinstance(c, Involution) and isinstance(c.activation, nn.ReLU)
               for c in head.conv_norm_relus)
    assert not head.deconv.bias.any() and not head.predictor.bias.any()  # the parent's init
    assert head.layers(torch.randn(2, 16, 14, 14)).shape == (2, 3, 28, 28)


@pytest.mark.parametrize("conv_dims, names", [([-1], ["conv"]),
                                              ([-1, 16], ["conv.conv0", "conv.conv1"])])
def test_rpn_head_is_standard_rpn_head(conv_dims, names):
    from detectron2.modeling.proposal_generator import StandardRPNHead

    from involution_d2.layers import Involution
    from involution_d2.modeling import InvolutionRPNHead

    head = InvolutionRPNHead(in_channels=16, num_anchors=3, conv_dims=conv_dims)
    assert isinstance(head, StandardRPNHead)
    modules = dict(head.named_modules())
    assert all(isinstance(modules[n], Involution) and isinstance(modules[n].activation, nn.ReLU)
               for n in names)
    # No Detectron2 Conv2d (the parent's 3x3 hidden conv) is left; its 1x1 convs are nn.Conv2d.
    assert not any(type(m) is not nn.Conv2d and isinstance(m, nn.Conv2d) for m in head.modules())
    assert not head.objectness_logits.bias.any() and head.anchor_deltas.weight.std() < 0.02
    logits, deltas = head([torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)])
    assert [t.shape for t in logits] == [(1, 3, 8, 8), (1, 3, 4, 4)]
    assert [t.shape for t in deltas] == [(1, 12, 8, 8), (1, 12, 4, 4)]


def test_heads_from_config_extend_detectron2s():
    """Detectron2's from_config arguments plus involution_kwargs from MODEL.INVOLUTION."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.proposal_generator import StandardRPNHead
    from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead

    from involution_d2.config import add_involution_config, involution_kwargs_from_config
    from involution_d2.layers import Involution
    from involution_d2.modeling import (InvolutionConvFCHead, InvolutionMaskRCNNHead,
                                        InvolutionRPNHead)

    cfg = get_cfg()
    add_involution_config(cfg)
    cfg.MODEL.INVOLUTION.KERNEL_SIZE = 5
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
    roi = ShapeSpec(channels=256, height=7, width=7)
    levels = [ShapeSpec(channels=256, stride=s) for s in (4, 8, 16, 32, 64)]
    for ours, theirs, shape in ((InvolutionConvFCHead, FastRCNNConvFCHead, roi),
                                (InvolutionMaskRCNNHead, MaskRCNNConvUpsampleHead, roi),
                                (InvolutionRPNHead, StandardRPNHead, levels)):
        args = ours.from_config(cfg, shape)
        assert args == {**theirs.from_config(cfg, shape),
                        "involution_kwargs": involution_kwargs_from_config(cfg)}
        head = ours(cfg, shape)
        assert {m.kernel_size for m in head.modules() if isinstance(m, Involution)} == {5}


def _imports_detectron2_get_norm(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return any(isinstance(node, ast.ImportFrom) and (node.module or "").startswith("detectron2")
               and any(alias.name == "get_norm" for alias in node.names)
               for node in ast.walk(tree))


def test_one_norm_factory():
    """Norms come from involution_d2.layers.get_norm (Detectron2's, extended to "GN" on
    channel counts that are not multiples of 32), so that a model's "GN" is one thing; only
    layers/norm.py, which wraps it, imports Detectron2's."""
    found = set()
    for folder, _, files in os.walk(os.path.join(REPO, "involution_d2")):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and _imports_detectron2_get_norm(path):
                found.add(os.path.relpath(path, REPO).replace(os.sep, "/"))
    assert found == {"involution_d2/layers/norm.py"}, (
        "import involution_d2.layers.get_norm instead of Detectron2's")
