"""The eight COCO detection configs: parameter parity with the official model zoo through both config
systems, a training step, inference, and the empty cases, on CPU with tiny images."""
import os

import pytest
import torch

from helpers import CONFIG_ROOT as ROOT
from helpers import build_yacs_model, requires_detectron2, yacs_config
from helpers import tiny_detection as tiny

pytestmark = requires_detectron2


# config: trainable parameters of our model
CONFIGS = {
    "COCO-Detection/faster_rcnn_rednet50_fpn_1x": 31_546_496,
    "COCO-Detection/faster_rcnn_rednet50_invfpn_1x": 29_456_064,
    "COCO-Detection/faster_rcnn_rednet50_invfpn_invhead_1x": 28_933_456,
    "COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x": 34_189_776,
    "COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_1x": 32_099_344,
    "COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x": 29_486_304,
    "COCO-Detection/retinanet_rednet50_fpn_1x": 27_762_132,
    "COCO-Detection/retinanet_rednet50_invfpn_1x": 26_194_308,
}
# OpenMMLab keeps the BatchNorm affine parameters of res3-res5 trainable (norm_eval only
# fixes the statistics); Detectron2's FrozenBN has none. That is the whole difference.
BN_AFFINE_RES3_TO_RES5 = 51_968


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_yacs(name, tiny_model=False, **overrides):
    return build_yacs_model(yacs_config(name, tiny if tiny_model else None, overrides))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_parity_through_both_config_systems(name):
    from detectron2.config import LazyConfig, instantiate

    from involution_d2.analysis import official_row

    ours, official = CONFIGS[name], official_row(name).params_m
    assert trainable(build_yacs(name)) == ours
    lazy = LazyConfig.load(os.path.join(ROOT, name + ".py"))
    assert trainable(instantiate(lazy.model)) == ours
    assert abs(ours / 1e6 - official) / official < 0.01
    if "retinanet_rednet50_invfpn" not in name:
        # With the BN affine parameters OpenMMLab trains, the official figure exactly.
        assert round((ours + BN_AFFINE_RES3_TO_RES5) / 1e6, 1) == official


def synthetic_batch(with_masks, empty_second=False):
    from detectron2.structures import BitMasks, Boxes, Instances

    gen = torch.Generator().manual_seed(0)
    batch = []
    for i, (h, w) in enumerate(((96, 128), (128, 96))):
        inst = Instances((h, w))
        if empty_second and i == 1:
            boxes = torch.zeros(0, 4)
        else:
            boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 30.0, 90.0, 85.0]])
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.arange(len(boxes)) % 3
        if with_masks:
            masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
            for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                masks[k, y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(masks)
        image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch


def involution_modules(model, prefix_filter):
    from involution_d2.layers import Involution

    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, Involution) and n.startswith(prefix_filter)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_step_and_inference(name):
    model = build_yacs(name, tiny_model=True)
    with_masks = "mask_rcnn" in name
    from detectron2.utils.events import EventStorage

    model.train()
    with EventStorage():
        losses = model(synthetic_batch(with_masks, empty_second=True))
    assert all(torch.isfinite(v) for v in losses.values()), losses
    if with_masks:
        assert "loss_mask" in losses
    sum(losses.values()).backward()
    # Gradients reach the involutions: every trainable one of the backbone and of the
    # heads, and the FPN's (on tiny images P5 may get no sampled anchor or ROI, so "any").
    def has_grad(inv):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in inv.parameters())

    backbone = [(n, m) for n, m in involution_modules(model, "backbone.bottom_up")
                if any(p.requires_grad for p in m.parameters())]
    assert backbone and all(has_grad(m) for _, m in backbone)
    for part in ("proposal_generator", "roi_heads"):
        assert all(has_grad(m) for _, m in involution_modules(model, part))
    fpn = involution_modules(model, "backbone.fpn_output")
    assert not fpn or any(has_grad(m) for _, m in fpn)
    if "invfpn" in name:
        assert involution_modules(model, "backbone.fpn_output")
    if "invhead" in name:
        assert involution_modules(model, "proposal_generator.rpn_head.conv")
        if with_masks:
            assert len(involution_modules(model, "roi_heads.mask_head.mask_fcn")) == 4

    from detectron2.structures import Instances

    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in d.items() if k != "instances"}
                     for d in synthetic_batch(with_masks)])
    assert len(out) == 2
    assert all(len(o["instances"]) > 0 for o in out)  # finite scores: boxes come out
    assert all(torch.isfinite(o["instances"].scores).all() for o in out)
    for o, (h, w) in zip(out, ((96, 128), (128, 96))):
        inst = o["instances"]
        assert isinstance(inst, Instances) and inst.image_size == (h, w)
        assert inst.has("pred_boxes") and inst.has("scores") and inst.has("pred_classes")
        if with_masks and len(inst):
            assert inst.pred_masks.shape[1:] == (h, w)


@pytest.mark.parametrize("name", [n for n in sorted(CONFIGS) if "rcnn" in n and "invhead" in n])
def test_no_proposal_and_no_detection_survive(name):
    """Zero ROIs flow through the box head and the involution mask head."""
    with_masks = "mask_rcnn" in name
    inputs = [{k: v for k, v in d.items() if k != "instances"}
              for d in synthetic_batch(with_masks)]
    # No proposal survives the RPN's size filter.
    model = build_yacs(name, tiny_model=True, **{"MODEL.PROPOSAL_GENERATOR.MIN_SIZE": 10_000})
    with torch.no_grad():
        out = model.eval()(inputs)
    assert [len(o["instances"]) for o in out] == [0, 0]
    # Proposals but no detection above the score threshold: the mask head sees zero ROIs.
    model = build_yacs(name, tiny_model=True, **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 1.0})
    with torch.no_grad():
        out = model.eval()(inputs)
    assert [len(o["instances"]) for o in out] == [0, 0]
    if with_masks:
        assert out[0]["instances"].pred_masks.shape == (0, 96, 128)


def test_depth_switch_and_box_head_variant():
    """RedNet-101 through one key; the involution conv+FC box head through the registry."""
    model = build_yacs("COCO-Detection/faster_rcnn_rednet50_fpn_1x",
                       **{"MODEL.REDNET.DEPTH": 101})
    assert len(model.backbone.bottom_up.res4) == 23
    model = build_yacs("COCO-Detection/faster_rcnn_rednet50_fpn_1x", tiny_model=True, **{
        "MODEL.ROI_BOX_HEAD.NAME": "InvolutionConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_CONV": 2,
        "MODEL.ROI_BOX_HEAD.CONV_DIM": 256, "MODEL.ROI_BOX_HEAD.NUM_FC": 1})
    assert len(involution_modules(model, "roi_heads.box_head.conv")) == 2
    from detectron2.utils.events import EventStorage

    with EventStorage():
        losses = model.train()(synthetic_batch(False))
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_head_widths_are_reported():
    with pytest.raises(ValueError, match="CONV_DIM = 256"):
        build_yacs("COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x",
                   tiny_model=True, **{"MODEL.ROI_MASK_HEAD.CONV_DIM": 128})
    with pytest.raises(ValueError, match="use -1"):
        build_yacs("COCO-Detection/faster_rcnn_rednet50_invfpn_invhead_1x", tiny_model=True,
                   **{"MODEL.RPN.CONV_DIMS": [128]})


@pytest.mark.parametrize("lazy", [False, True])
def test_retinanet_p7_has_no_relu_like_the_official_fpn(lazy):
    """OpenMMLab's RetinaNet FPN computes P7 = conv(P6); Detectron2's block adds a ReLU."""
    from detectron2.config import LazyConfig, instantiate

    from involution_d2.modeling import LastLevelP6P7NoReLU

    name = "COCO-Detection/retinanet_rednet50_invfpn_1x"
    if lazy:
        model = instantiate(LazyConfig.load(os.path.join(ROOT, name + ".py")).model)
    else:
        model = build_yacs(name)
    block = model.backbone.top_block
    assert isinstance(block, LastLevelP6P7NoReLU)
    c5 = torch.randn(1, 2048, 4, 4)
    p6, p7 = block(c5)
    torch.testing.assert_close(p7, block.p7(block.p6(c5)))
    assert not torch.allclose(p7, block.p7(torch.relu(block.p6(c5))))
