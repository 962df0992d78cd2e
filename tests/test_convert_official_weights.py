"""The official-checkpoint converter: an ImageNet checkpoint in the official layout (built
here from the published key grammar) converts, loads into every config's RedNet and computes
what an independent plain-torch RedNet computes with the same weights; detection and
segmentation checkpoints round-trip; the conventions (anchor order, box coder, classes,
colours) hold; bad files fail clearly; the CLI writes atomically."""
import glob
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import CONFIG_ROOT, build_yacs_model, requires_detectron2, yacs_config

pytestmark = requires_detectron2

REPO = os.path.join(os.path.dirname(__file__), "..")
# Blocks per stage (reference section 3), written here independently of the package.
STAGES = {26: (1, 2, 4, 1), 50: (3, 4, 6, 3)}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ---------------------------------------------------------------- the official layout
def _bn(prefix, c):
    return {f"{prefix}.{name}": () if name == "num_batches_tracked" else (c,) for name in BN}


def _involution(prefix, c, k=7):
    groups, k2 = c // 16, k * k
    return {f"{prefix}.conv1.conv.weight": (c // 4, c, 1, 1), **_bn(f"{prefix}.conv1.bn", c // 4),
            f"{prefix}.conv2.conv.weight": (k2 * groups, c // 4, 1, 1),
            f"{prefix}.conv2.conv.bias": (k2 * groups,)}


def official_shapes(depth):
    """Key -> shape of an mmcls RedNet classification checkpoint (reference section 4)."""
    shapes = {"backbone.stem.0.conv.weight": (32, 3, 3, 3), **_bn("backbone.stem.0.bn", 32),
              **_involution("backbone.stem.1", 32, k=3), **_bn("backbone.stem.2", 32),
              "backbone.stem.4.conv.weight": (64, 32, 3, 3), **_bn("backbone.stem.4.bn", 64)}
    cin = 64
    for stage, blocks in enumerate(STAGES[depth], start=1):
        mid = 64 * 2 ** (stage - 1)
        for i in range(blocks):
            p = f"backbone.layer{stage}.{i}"
            shapes.update({f"{p}.conv1.weight": (mid, cin, 1, 1), **_bn(f"{p}.bn1", mid),
                           **_involution(f"{p}.conv2", mid), **_bn(f"{p}.bn2", mid),
                           f"{p}.conv3.weight": (4 * mid, mid, 1, 1), **_bn(f"{p}.bn3", 4 * mid)})
            if i == 0:
                shapes.update({f"{p}.downsample.0.weight": (4 * mid, cin, 1, 1),
                               **_bn(f"{p}.downsample.1", 4 * mid)})
            cin = 4 * mid
    shapes.update({"head.fc.weight": (1000, 2048), "head.fc.bias": (1000,)})
    return shapes


def random_official(depth, seed=0):
    """Random official weights that keep activations O(1) through the whole network."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_shapes(depth).items():
        name = key.rsplit(".", 1)[1]
        if name == "num_batches_tracked":
            sd[key] = torch.tensor(1000)
        elif name == "running_var":
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        elif name in ("running_mean", "bias"):
            sd[key] = torch.randn(shape, generator=gen) * 0.1
        elif len(shape) == 1:  # BN scale; the residual branches' last one small
            sd[key] = (torch.rand(shape, generator=gen) * 0.5 + 0.5) * (
                0.2 if ".bn3." in key else 1.0)
        else:
            fan_in = math.prod(shape[1:])
            sd[key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    return sd


def official_forward(sd, x, depth):
    """RedNet's forward (reference sections 2-3) with plain torch ops on official keys."""
    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"],
                            sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)

    def involution(t, p, stride):
        n, c, h, w = t.shape
        g = c // 16
        pooled = F.avg_pool2d(t, stride) if stride > 1 else t
        kernel = F.relu(bn(F.conv2d(pooled, sd[p + ".conv1.conv.weight"]), p + ".conv1.bn"))
        kernel = F.conv2d(kernel, sd[p + ".conv2.conv.weight"], sd[p + ".conv2.conv.bias"])
        ho, wo = kernel.shape[-2:]
        k2 = kernel.shape[1] // g
        k = math.isqrt(k2)
        patches = F.unfold(t, k, padding=k // 2, stride=stride).view(n, g, c // g, k2, ho, wo)
        return (kernel.view(n, g, 1, k2, ho, wo) * patches).sum(3).view(n, c, ho, wo)

    x = F.relu(bn(F.conv2d(x, sd["backbone.stem.0.conv.weight"], stride=2, padding=1),
                  "backbone.stem.0.bn"))
    x = F.relu(bn(involution(x, "backbone.stem.1", 1), "backbone.stem.2"))
    x = F.relu(bn(F.conv2d(x, sd["backbone.stem.4.conv.weight"], padding=1),
                  "backbone.stem.4.bn"))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, blocks in enumerate(STAGES[depth], start=1):
        for i in range(blocks):
            p = f"backbone.layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            out = F.relu(bn(F.conv2d(x, sd[p + ".conv1.weight"]), p + ".bn1"))
            out = F.relu(bn(involution(out, p + ".conv2", stride), p + ".bn2"))
            out = bn(F.conv2d(out, sd[p + ".conv3.weight"]), p + ".bn3")
            if i == 0:
                x = bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride),
                       p + ".downsample.1")
            x = F.relu(out + x)
    return F.linear(x.mean((2, 3)), sd["head.fc.weight"], sd["head.fc.bias"])


# ---------------------------------------------------------------- helpers
def convert_to_file(official, path, **kwargs):
    from involution_d2.checkpoint import convert, save_atomically, to_detectron2_checkpoint

    converted, family, unmatched = convert(official, **kwargs)
    assert unmatched == []
    save_atomically(to_detectron2_checkpoint(converted, family), str(path))
    return family


def load_recording(model, path):
    """Load through the project's checkpointer; return its incompatible keys."""
    from involution_d2.engine import AtomicCheckpointer

    class Recording(AtomicCheckpointer):
        def _load_model(self, checkpoint):
            self.incompatible = super()._load_model(checkpoint)
            return self.incompatible

    checkpointer = Recording(model)
    checkpointer.load(str(path))
    return checkpointer.incompatible


@pytest.fixture(scope="module")
def rednet26_file(tmp_path_factory):
    official = random_official(26)
    path = tmp_path_factory.mktemp("ckpt") / "rednet26_d2.pth"
    assert convert_to_file(official, path, expect="classification") == "classification"
    return official, path


# ---------------------------------------------------------------- classification
def test_official_key_grammar_matches_the_reference_count():
    backbone = [k for k in official_shapes(50) if k.startswith("backbone.")]
    assert len(backbone) == 449


@pytest.mark.parametrize("depth", [26, 50])
def test_classification_checkpoint_computes_the_official_logits(depth, tmp_path):
    official = random_official(depth, seed=depth)
    convert_to_file(official, tmp_path / "d2.pth")
    model = build_yacs_model(yacs_config(f"ImageNet-Classification/rednet{depth}"))
    incompatible = load_recording(model, tmp_path / "d2.pth")
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 50 + 110
    model.eval()
    with torch.no_grad():
        ours = torch.stack([o["pred_logits"] for o in model(
            [{"image": img} for img in x])])
        mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
        std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
        # RGB in, channel 0 = R both here and in the official model: no flipped first conv.
        expected = official_forward(official, (x - mean) / std, depth)
    assert expected.abs().max() > 0.1  # the network is not dead
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def yacs_names(*folders):
    return sorted(os.path.relpath(p, CONFIG_ROOT)[:-5] for folder in folders
                  for p in glob.glob(os.path.join(CONFIG_ROOT, folder, "*.yaml")))


@pytest.mark.parametrize("name", yacs_names("COCO-Detection", "COCO-InstanceSegmentation",
                                            "Cityscapes-SemanticSegmentation"))
def test_imagenet_weights_initialise_every_rednet_config(name, rednet26_file):
    official, path = rednet26_file
    model = build_yacs_model(yacs_config(name, overrides={"MODEL.REDNET.DEPTH": 26}))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    incompatible = load_recording(model, path)
    prefix = "backbone.bottom_up." if hasattr(model.backbone, "bottom_up") else "backbone."
    rednet = [k for k in model.state_dict() if k.startswith((prefix + "stem.", prefix + "res"))]
    # The 7x7 stem involution's kernel generation is explained in one line, not listed.
    assert rednet and not [k for k in incompatible.missing_keys if k in rednet]
    # Only the ImageNet classifier, which detection and segmentation models do not have.
    assert sorted(incompatible.unexpected_keys) == ["linear.bias", "linear.weight"]
    assert incompatible.incorrect_shapes == []
    state = model.state_dict()
    for key, value in official.items():
        match = re.fullmatch(r"backbone\.(stem|layer(\d))\.(.+)", key)
        if match and not key.endswith("num_batches_tracked"):
            stage = "stem" if match[1] == "stem" else f"res{int(match[2]) + 1}"
            ours = f"{prefix}{stage}.{match[3]}"
            if match[3].startswith("1.conv2.conv."):  # 3x3 in the classifier, 7x7 here
                assert torch.equal(state[ours], initial[ours]), ours
            else:
                assert torch.equal(state[ours], value), key


# ---------------------------------------------------------------- detection / segmentation
def _stage(m, first):
    return int(m) - first


def inverse_rules(family):
    """Our key -> official key, written from the OpenMMLab sources for this test."""
    bb = "backbone.bottom_up." if family != "upernet" else "backbone."
    rules = [(rf"{re.escape(bb)}stem\.(.+)", lambda m: f"backbone.stem.{m[1]}"),
             (rf"{re.escape(bb)}res(\d)\.(.+)", lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}")]
    first = 3 if family == "retinanet" else 2
    rules += [
        (r"backbone\.fpn_lateral(\d)\.(.+)",
         lambda m: f"neck.lateral_convs.{_stage(m[1], first)}.conv.{m[2]}"),
        (r"backbone\.fpn_output(\d)\.(weight|bias)",
         lambda m: f"neck.fpn_convs.{_stage(m[1], first)}.conv.{m[2]}"),
        (r"backbone\.fpn_output(\d)\.(conv[12]\..+)",
         lambda m: f"neck.fpn_convs.{_stage(m[1], first)}.{m[2]}"),
        (r"backbone\.top_block\.p6\.(.+)", lambda m: f"neck.fpn_convs.3.conv.{m[1]}"),
        (r"backbone\.top_block\.p7\.(.+)", lambda m: f"neck.fpn_convs.4.conv.{m[1]}"),
        (r"proposal_generator\.rpn_head\.conv\.(.+)", lambda m: f"rpn_head.rpn_conv.{m[1]}"),
        (r"proposal_generator\.rpn_head\.objectness_logits\.(.+)",
         lambda m: f"rpn_head.rpn_cls.{m[1]}"),
        (r"proposal_generator\.rpn_head\.anchor_deltas\.(.+)",
         lambda m: f"rpn_head.rpn_reg.{m[1]}"),
        (r"roi_heads\.box_head\.fc(\d)\.(.+)",
         lambda m: f"roi_head.bbox_head.shared_fcs.{int(m[1]) - 1}.{m[2]}"),
        (r"roi_heads\.box_predictor\.cls_score\.(.+)",
         lambda m: f"roi_head.bbox_head.fc_cls.{m[1]}"),
        (r"roi_heads\.box_predictor\.bbox_pred\.(.+)",
         lambda m: f"roi_head.bbox_head.fc_reg.{m[1]}"),
        (r"roi_heads\.mask_head\.mask_fcn(\d)\.(weight|bias)",
         lambda m: f"roi_head.mask_head.convs.{int(m[1]) - 1}.conv.{m[2]}"),
        (r"roi_heads\.mask_head\.mask_fcn(\d)\.(conv[12]\..+)",
         lambda m: f"roi_head.mask_head.convs.{int(m[1]) - 1}.0.{m[2]}"),
        (r"roi_heads\.mask_head\.deconv\.(.+)", lambda m: f"roi_head.mask_head.upsample.{m[1]}"),
        (r"roi_heads\.mask_head\.predictor\.(.+)",
         lambda m: f"roi_head.mask_head.conv_logits.{m[1]}"),
        (r"head\.cls_subnet\.(\d+)\.(.+)",
         lambda m: f"bbox_head.cls_convs.{int(m[1]) // 2}.conv.{m[2]}"),
        (r"head\.bbox_subnet\.(\d+)\.(.+)",
         lambda m: f"bbox_head.reg_convs.{int(m[1]) // 2}.conv.{m[2]}"),
        (r"head\.cls_score\.(.+)", lambda m: f"bbox_head.retina_cls.{m[1]}"),
        (r"head\.bbox_pred\.(.+)", lambda m: f"bbox_head.retina_reg.{m[1]}"),
        (r"sem_seg_head\.p(\d)\.(\d+)\.(weight|bias)",
         lambda m: f"decode_head.scale_heads.{int(m[1]) - 2}.{m[2]}.conv.{m[3]}"),
        (r"sem_seg_head\.p(\d)\.(\d+)\.norm\.(.+)",
         lambda m: f"decode_head.scale_heads.{int(m[1]) - 2}.{m[2]}.bn.{m[3]}"),
        (r"sem_seg_head\.predictor\.(.+)", lambda m: f"decode_head.conv_seg.{m[1]}"),
        (r"sem_seg_head\.(.+)", lambda m: f"decode_head.{m[1]}"),
        (r"aux_head\.(.+)", lambda m: f"auxiliary_head.{m[1]}"),
    ]
    return rules


def mmdet_anchor_order(value, scales=3, ratios=3):
    """Detectron2's anchor blocks (size-major: d = s * R + r) in mmdet's order
    (ratio-major: m = r * S + s)."""
    blocks = value.view(scales * ratios, -1, *value.shape[1:])
    order = [s * ratios + r for r in range(ratios) for s in range(scales)]
    return blocks[order].reshape(value.shape)


def to_official(state_dict, family):
    official = {}
    for key, value in state_dict.items():
        for pattern, name in inverse_rules(family):
            match = re.fullmatch(pattern, key)
            if match:
                if key.startswith(("head.cls_score", "head.bbox_pred")):
                    value = mmdet_anchor_order(value)
                official[name(match)] = value
                break
        else:
            raise AssertionError(f"no official name for {key}")
    return official


def tiny_detection(cfg):
    cfg.MODEL.REDNET.DEPTH = 26
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RETINANET.NUM_CLASSES = 3


def tiny_segmentation(cfg):
    cfg.MODEL.REDNET.DEPTH = 26
    cfg.MODEL.REDNET.NORM = cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.MODEL.INVOLUTION.NORM = cfg.MODEL.AUX_SEM_SEG_HEAD.NORM = "BN"


FAMILIES = {
    "COCO-Detection/faster_rcnn_rednet50_fpn_1x": "rcnn",
    "COCO-Detection/faster_rcnn_rednet50_invfpn_invhead_1x": "rcnn",
    "COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x": "rcnn",
    "COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x": "rcnn",
    "COCO-Detection/retinanet_rednet50_fpn_1x": "retinanet",
    "COCO-Detection/retinanet_rednet50_invfpn_1x": "retinanet",
    "Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_fpn_80k": "semantic_fpn",
    "Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_invfpn_80k": "semantic_fpn",
    "Cityscapes-SemanticSegmentation/upernet_rednet50_80k": "upernet",
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_detection_and_segmentation_checkpoints_round_trip(name, tmp_path):
    settings = tiny_segmentation if name.startswith("Cityscapes") else tiny_detection
    cfg = yacs_config(name, settings)
    source = build_yacs_model(cfg)
    with torch.no_grad():  # BN statistics the fresh model does not have
        for key, value in source.state_dict().items():
            if "running_" in key:
                value.uniform_(0.5, 1.5)
    official = to_official(source.state_dict(), FAMILIES[name])
    kind = "segmentation" if name.startswith("Cityscapes") else "detection"
    assert convert_to_file(official, tmp_path / "d2.pth", expect=kind) == FAMILIES[name]

    torch.manual_seed(1)
    from detectron2.modeling import build_model

    target = build_model(cfg)
    incompatible = load_recording(target, tmp_path / "d2.pth")
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    if name.endswith("upernet_rednet50_80k"):  # equal weights; outputs checked once
        image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
        with torch.no_grad():
            a = source.eval()([{"image": image}])[0]["sem_seg"]
            b = target.eval()([{"image": image}])[0]["sem_seg"]
        assert torch.equal(a, b)


def mmdet_base_anchor_shapes(base_size, scales, ratios):
    """(w, h) of mmdet's AnchorGenerator base anchors, scale_major=True: for each ratio
    (h / w), each scale."""
    h_ratios = torch.tensor(ratios).sqrt()
    ws = (base_size * (1 / h_ratios)[:, None] * torch.tensor(scales)[None, :]).view(-1)
    hs = (base_size * h_ratios[:, None] * torch.tensor(scales)[None, :]).view(-1)
    return torch.stack([ws, hs], 1)


def d2_anchor_shapes(model, level=0):
    cell = list(model.anchor_generator.cell_anchors)[level]
    return torch.stack([cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]], 1)


def test_retinanet_head_scores_equal_the_mmdet_order_permuted(tmp_path):
    """Official weights in mmdet's anchor order, run as mmdet runs them; the converted head
    gives each Detectron2 anchor the scores mmdet gives the anchor of the same shape."""
    name = "COCO-Detection/retinanet_rednet50_fpn_1x"
    model = build_yacs_model(yacs_config(name, tiny_detection))
    official = to_official(model.state_dict(), "retinanet")
    gen = torch.Generator().manual_seed(3)
    for key in ("bbox_head.retina_cls.weight", "bbox_head.retina_cls.bias",
                "bbox_head.retina_reg.weight", "bbox_head.retina_reg.bias"):
        official[key] = torch.randn(official[key].shape, generator=gen) * 0.05
    convert_to_file(official, tmp_path / "d2.pth")
    load_recording(model, tmp_path / "d2.pth")

    feature = torch.randn(1, 256, 6, 5, generator=gen)
    with torch.no_grad():
        logits, deltas = model.head([feature] * 5)  # P3-P7; P3 is compared
        cls_feat = reg_feat = feature
        for i in range(4):
            cls_feat = F.relu(F.conv2d(cls_feat, official[f"bbox_head.cls_convs.{i}.conv.weight"],
                                       official[f"bbox_head.cls_convs.{i}.conv.bias"], padding=1))
            reg_feat = F.relu(F.conv2d(reg_feat, official[f"bbox_head.reg_convs.{i}.conv.weight"],
                                       official[f"bbox_head.reg_convs.{i}.conv.bias"], padding=1))
        mm_cls = F.conv2d(cls_feat, official["bbox_head.retina_cls.weight"],
                          official["bbox_head.retina_cls.bias"], padding=1)
        mm_reg = F.conv2d(reg_feat, official["bbox_head.retina_reg.weight"],
                          official["bbox_head.retina_reg.bias"], padding=1)

    # The official anchors at P3: base size = stride 8, octave_base_scale 4, 3 per octave.
    mm_shapes = mmdet_base_anchor_shapes(8, [4 * 2 ** (i / 3) for i in range(3)],
                                         [0.5, 1.0, 2.0])
    d2_shapes = d2_anchor_shapes(model)
    k = 3
    for d, shape in enumerate(d2_shapes):
        m = int((mm_shapes - shape).abs().sum(1).argmin())
        torch.testing.assert_close(mm_shapes[m], shape, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(logits[0][:, d * k:(d + 1) * k], mm_cls[:, m * k:(m + 1) * k],
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(deltas[0][:, d * 4:(d + 1) * 4], mm_reg[:, m * 4:(m + 1) * 4],
                                   rtol=1e-4, atol=1e-5)
    # Size-major and ratio-major differ for RetinaNet's 3 x 3 anchors ...
    assert not torch.allclose(mm_shapes, d2_shapes, rtol=1e-4)


def test_rpn_anchor_orders_coincide_and_box_coders_match():
    """One size per level: mmdet's and Detectron2's RPN anchors come in the same order, so
    the RPN needs no permutation; the delta scales are the same numbers."""
    cfg = yacs_config("COCO-Detection/faster_rcnn_rednet50_fpn_1x", tiny_detection)
    model = build_yacs_model(cfg)
    for level, stride in enumerate((4, 8, 16, 32, 64)):
        torch.testing.assert_close(d2_anchor_shapes(model.proposal_generator, level),
                                   mmdet_base_anchor_shapes(stride, [8.0], [0.5, 1.0, 2.0]))
    for name in FAMILIES:
        cfg = yacs_config(name)
        # mmdet: R-CNN target_stds (0.1, 0.1, 0.2, 0.2) = 1 / Detectron2's weights;
        # RPN and RetinaNet stds 1.  Anchors centred on the grid points (center_offset 0).
        assert tuple(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0)
        assert tuple(cfg.MODEL.RPN.BBOX_REG_WEIGHTS) == (1.0, 1.0, 1.0, 1.0)
        assert tuple(cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS) == (1.0, 1.0, 1.0, 1.0)
        assert cfg.MODEL.ANCHOR_GENERATOR.OFFSET == 0.0
        # RGB with the ImageNet mean/std in RGB order, as mmcv's to_rgb=True.
        assert cfg.INPUT.FORMAT == "RGB"
        assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53]


def test_rcnn_classes_have_background_last_in_both():
    """mmdet 2.x fc_cls: num_classes + 1 scores, background at index num_classes; Detectron2's
    cls_score: the same. Class ids are COCO's category order in both."""
    model = build_yacs_model(yacs_config("COCO-Detection/faster_rcnn_rednet50_fpn_1x"))
    predictor = model.roi_heads.box_predictor
    assert predictor.num_classes == 80 and predictor.cls_score.out_features == 81
    assert predictor.bbox_pred.out_features == 80 * 4  # class-specific, class-major


# ---------------------------------------------------------------- failures and the CLI
def test_corrupt_files_and_other_architectures_fail_clearly(tmp_path):
    from involution_d2.checkpoint import CheckpointFormatError, convert, load_official_state_dict

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError, match="not readable as a PyTorch checkpoint"):
        load_official_state_dict(str(bad))
    torch.save({"meta": {}, "optimizer": {}}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointFormatError, match="expected an OpenMMLab checkpoint"):
        load_official_state_dict(str(tmp_path / "nostate.pth"))

    torchvision_like = {k: torch.zeros(1) for k in (
        "conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight", "fc.bias")}
    with pytest.raises(CheckpointFormatError, match="torchvision-style ResNet.*expected"):
        convert(torchvision_like)

    detection = to_official(build_yacs_model(yacs_config(
        "COCO-Detection/retinanet_rednet50_fpn_1x", tiny_detection)).state_dict(), "retinanet")
    with pytest.raises(CheckpointFormatError,
                       match="expected a classification checkpoint, found a detection one"):
        convert(detection, expect="classification")

    truncated = {k: v for k, v in random_official(26).items() if "layer3.3." not in k}
    with pytest.raises(CheckpointFormatError, match=r"\[1, 2, 3, 1\] blocks per stage"):
        convert(truncated)


def test_cli_converts_reports_unmatched_keys_and_writes_atomically(tmp_path, monkeypatch):
    from involution_d2.checkpoint import cli

    official = random_official(26)
    src, dst = tmp_path / "official.pth", tmp_path / "out" / "d2.pth"
    torch.save({"state_dict": official, "meta": {"epoch": 130}}, src)
    run = subprocess.run([sys.executable, os.path.join(REPO, "tools/convert_official_weights.py"),
                          str(src), str(dst)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "RedNet-26 classification" in run.stdout
    saved = torch.load(dst, weights_only=True)
    assert saved["matching_heuristics"] and "res5.0.conv2.conv1.conv.weight" in saved["model"]
    assert os.listdir(dst.parent) == ["d2.pth"]  # no temporary file left

    # An unknown key: reported, nothing written unless allowed.
    torch.save({"state_dict": {**official, "backbone.extra.weight": torch.zeros(2)}}, src)
    other = tmp_path / "other.pth"
    assert cli.main([str(src), str(other)]) == 1 and not other.exists()
    assert cli.main([str(src), str(other), "--allow-unmatched"]) == 0 and other.exists()
    assert cli.main([str(src), str(other), "--expect", "segmentation"]) == 2

    # A failed write leaves the previous file whole and no temporary file.
    before = dst.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cli.main([str(tmp_path / "official.pth"), str(dst), "--allow-unmatched"])
    assert dst.read_bytes() == before and os.listdir(dst.parent) == ["d2.pth"]
