"""Official RedNet checkpoints (OpenMMLab: mmcls, mmdet 2.x, mmseg 0.x) -> this project's
Detectron2 models.

Pure functions: a state dict goes in, a converted state dict and the keys no rule maps come
out.  There is one rule table per model family; each rule is a regular expression on an
official key and the key it becomes here.

Conventions checked against the OpenMMLab sources (see tests/checkpoint/test_convert_official_weights.py):

- Backbone: our RedNet keeps the official submodule names, so ``backbone.stem.`` ->
  ``stem.`` and ``backbone.layer{k}.`` -> ``res{k+1}.``.  Input is RGB with the ImageNet
  mean/std in RGB order in both (mmcv ``to_rgb=True``): the first conv is not flipped.
- mmcv ``ConvModule`` (``.conv.weight``, ``.bn.*``) becomes Detectron2's ``Conv2d``
  (``.weight``, ``.norm.*``) where our module is Detectron2's (FPN, R-CNN and RetinaNet
  heads, the semantic FPN head); involutions, UPerNet and FCN heads keep OpenMMLab's names.
- RetinaNet anchors: mmdet's AnchorGenerator (scale_major=True) orders a location's anchors
  ratio-major (for each ratio, each scale), Detectron2's DefaultAnchorGenerator size-major
  (for each size, each aspect ratio), so the anchor blocks of ``retina_cls`` / ``retina_reg``
  are permuted.  The RPN has one size per level, where both orders coincide.
- Box deltas: mmdet's R-CNN ``target_stds`` (0.1, 0.1, 0.2, 0.2) are Detectron2's
  ``BBOX_REG_WEIGHTS`` (10, 10, 5, 5); RPN and RetinaNet use 1 in both.  Classes are in COCO
  id order in both, and the R-CNN background is the last of K + 1 scores in both.
"""
import re

import torch

from ..modeling.backbone.rednet import REDNET_DEPTHS

__all__ = [
    "AUTHOR",
    "KINDS",
    "CheckpointFormatError",
    "STEM_KERNEL_GENERATION",
    "convert",
    "detect_family",
    "load_official_state_dict",
    "mmdet_to_detectron2_anchor_order",
    "rednet_depth",
    "stem_involution_kernel",
    "stem_kernel_generation_note",
    "to_detectron2_checkpoint",
]

AUTHOR = "involution-d2 converter"

# Families by the kind of checkpoint they come from.
KINDS = {
    "classification": ("classification",),
    "detection": ("rcnn", "retinanet"),
    "segmentation": ("semantic_fpn", "upernet"),
}

# The official RetinaNet anchors: octave_base_scale=4, scales_per_octave=3, 3 ratios.
RETINANET_SCALES, RETINANET_RATIOS = 3, 3


class CheckpointFormatError(ValueError):
    """The file is not an official RedNet checkpoint of the expected kind."""


# Submodule keys of an involution (official names, ours too) and of a bias-free conv + BN.
_INV = r"(?:conv1\.(?:conv\.weight|bn\.\w+)|conv2\.conv\.(?:weight|bias))"
_BLOCK = r"(?:conv[123]\.weight|bn[123]\.\w+|conv2\.%s|downsample\.(?:0\.weight|1\.\w+))" % _INV
_STEM = r"(?:[04]\.(?:conv\.weight|bn\.\w+)|1\.%s|2\.\w+)" % _INV
_CONV_NORM = r"(?:conv\.weight|bn\.\w+)"
_PARAM = r"(?:weight|bias)"
_WB = rf"({_PARAM})"


def _d2_conv(suffix):
    """mmcv ConvModule suffix -> Detectron2 Conv2d suffix (``conv.weight`` -> ``weight``,
    ``bn.x`` -> ``norm.x``)."""
    head, _, rest = suffix.partition(".")
    return rest if head == "conv" else "norm." + rest


def _backbone_rules(prefix):
    return [
        (rf"backbone\.stem\.({_STEM})", lambda m: f"{prefix}stem.{m[1]}"),
        (rf"backbone\.layer([1-4])\.(\d+\.{_BLOCK})",
         lambda m: f"{prefix}res{int(m[1]) + 1}.{m[2]}"),
    ]


def _fpn_rules(first_level, num_levels, extra=None):
    """mmdet/mmseg FPN (conv or involution outputs) -> Detectron2's FPN / InvolutionFPN.
    Laterals and outputs are numbered from 0 there and by stage (``first_level``..) here;
    ``extra``: {fpn_convs index: Detectron2 top-block conv} for RetinaNet's P6/P7."""
    rules = [
        (rf"neck\.lateral_convs\.(\d)\.conv\.{_WB}",
         lambda m: f"backbone.fpn_lateral{int(m[1]) + first_level}.{m[2]}"),
        (rf"neck\.fpn_convs\.([0-{num_levels - 1}])\.conv\.{_WB}",
         lambda m: f"backbone.fpn_output{int(m[1]) + first_level}.{m[2]}"),
        (rf"neck\.fpn_convs\.([0-{num_levels - 1}])\.({_INV})",
         lambda m: f"backbone.fpn_output{int(m[1]) + first_level}.{m[2]}"),
    ]
    for index, name in (extra or {}).items():
        rules.append((rf"neck\.fpn_convs\.{index}\.conv\.{_WB}",
                      lambda m, name=name: f"backbone.top_block.{name}.{m[1]}"))
    return rules


def _rcnn_rules():
    rpn, roi = "proposal_generator.rpn_head", "roi_heads"
    return _backbone_rules("backbone.bottom_up.") + _fpn_rules(2, 4) + [
        # mmdet's RPNHead conv is a plain nn.Conv2d; the involution RPN head's is an
        # involution (followed by a ReLU in both, as in Detectron2's).
        (rf"rpn_head\.rpn_conv\.({_PARAM}|{_INV})", lambda m: f"{rpn}.conv.{m[1]}"),
        (rf"rpn_head\.rpn_cls\.{_WB}", lambda m: f"{rpn}.objectness_logits.{m[1]}"),
        (rf"rpn_head\.rpn_reg\.{_WB}", lambda m: f"{rpn}.anchor_deltas.{m[1]}"),
        (rf"roi_head\.bbox_head\.shared_fcs\.([01])\.{_WB}",
         lambda m: f"{roi}.box_head.fc{int(m[1]) + 1}.{m[2]}"),
        (rf"roi_head\.bbox_head\.fc_cls\.{_WB}", lambda m: f"{roi}.box_predictor.cls_score.{m[1]}"),
        (rf"roi_head\.bbox_head\.fc_reg\.{_WB}", lambda m: f"{roi}.box_predictor.bbox_pred.{m[1]}"),
        (rf"roi_head\.mask_head\.convs\.(\d)\.conv\.{_WB}",
         lambda m: f"{roi}.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}"),
        # The involution mask head wraps each involution in Sequential(involution, ReLU).
        (rf"roi_head\.mask_head\.convs\.(\d)\.0\.({_INV})",
         lambda m: f"{roi}.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}"),
        (rf"roi_head\.mask_head\.upsample\.{_WB}", lambda m: f"{roi}.mask_head.deconv.{m[1]}"),
        (rf"roi_head\.mask_head\.conv_logits\.{_WB}",
         lambda m: f"{roi}.mask_head.predictor.{m[1]}"),
    ]


def _retinanet_rules():
    # The official neck: start_level=1 (res3-res5 -> fpn_convs 0-2), then two extra convs,
    # P6 on res5 ("on_input") and P7 on P6: Detectron2's LastLevelP6P7.
    fpn = _fpn_rules(3, 3, extra={3: "p6", 4: "p7"})
    return _backbone_rules("backbone.bottom_up.") + fpn + [
        # Detectron2's subnets are Sequential(conv, ReLU, conv, ReLU, ...).
        (rf"bbox_head\.cls_convs\.(\d)\.conv\.{_WB}",
         lambda m: f"head.cls_subnet.{2 * int(m[1])}.{m[2]}"),
        (rf"bbox_head\.reg_convs\.(\d)\.conv\.{_WB}",
         lambda m: f"head.bbox_subnet.{2 * int(m[1])}.{m[2]}"),
        (rf"bbox_head\.retina_cls\.{_WB}", lambda m: f"head.cls_score.{m[1]}", _anchor_order),
        (rf"bbox_head\.retina_reg\.{_WB}", lambda m: f"head.bbox_pred.{m[1]}", _anchor_order),
    ]


def _semantic_fpn_rules():
    return _backbone_rules("backbone.bottom_up.") + _fpn_rules(2, 4) + [
        # mmseg's scale heads and Detectron2's SemSegFPNHead interleave the same
        # conv/upsample modules, so the index inside a level is kept.
        (rf"decode_head\.scale_heads\.(\d)\.(\d+)\.({_CONV_NORM})",
         lambda m: f"sem_seg_head.p{int(m[1]) + 2}.{m[2]}.{_d2_conv(m[3])}"),
        (rf"decode_head\.conv_seg\.{_WB}", lambda m: f"sem_seg_head.predictor.{m[1]}"),
    ]


def _upernet_rules():
    uper = r"(?:psp_modules\.\d\.1|bottleneck|lateral_convs\.\d|fpn_convs\.\d|fpn_bottleneck)"
    return _backbone_rules("backbone.") + [
        (rf"decode_head\.({uper}\.{_CONV_NORM}|conv_seg\.{_PARAM})",
         lambda m: f"sem_seg_head.{m[1]}"),
        (rf"auxiliary_head\.(convs\.\d\.{_CONV_NORM}|conv_seg\.{_PARAM})",
         lambda m: f"aux_head.{m[1]}"),
    ]


# Keys here are unprefixed: Detectron2's matching heuristics put them under the RedNet of
# any model (backbone.bottom_up., backbone.) and the classifier's linear layer.
_RULES = {
    "classification": lambda: _backbone_rules("") + [
        (rf"head\.fc\.{_WB}", lambda m: f"linear.{m[1]}"),
    ],
    "rcnn": _rcnn_rules,
    "retinanet": _retinanet_rules,
    "semantic_fpn": _semantic_fpn_rules,
    "upernet": _upernet_rules,
}


# The stem involution's kernel generation (its last 1x1 conv, K*K*G outputs), by converted
# key suffix.  Its shape depends on the stem's K, which differs between the official ImageNet
# classifier (3) and the official detectors and segmentors (7).
STEM_KERNEL_GENERATION = ("stem.1.conv2.conv.weight", "stem.1.conv2.conv.bias")
_STEM_GROUPS = 2  # 32 stem channels, 16 per group


def stem_involution_kernel(tensor):
    """K of the stem involution whose kernel-generation weight or bias is ``tensor``."""
    return round((tensor.shape[0] // _STEM_GROUPS) ** 0.5)


def stem_kernel_generation_note(checkpoint_kernel, model_kernel, keys):
    """The one line that says why the stem involution's kernel generation is not loaded."""
    return (
        f"{', '.join(keys)} not loaded: the checkpoint's stem involution is "
        f"{checkpoint_kernel}x{checkpoint_kernel} (as in the official ImageNet classifier), this "
        f"model's is {model_kernel}x{model_kernel} (as in the official detectors and segmentors; "
        "MODEL.REDNET.STEM_INVOLUTION_KERNEL / stem_involution_kernel), so its kernel "
        "generation keeps its initialisation, as when OpenMMLab starts them from the same "
        "ImageNet weights; every other ImageNet tensor is loaded")


def mmdet_to_detectron2_anchor_order(tensor, num_scales, num_ratios):
    """Reorder the anchor blocks of a head output (dim 0: A blocks of equal size, A =
    num_scales * num_ratios) from mmdet's ratio-major to Detectron2's size-major order."""
    num_anchors = num_scales * num_ratios
    if tensor.shape[0] % num_anchors:
        raise CheckpointFormatError(
            f"a RetinaNet head output of {tensor.shape[0]} channels is not a multiple of "
            f"{num_anchors} anchors ({num_scales} scales x {num_ratios} ratios)")
    rest = tensor.shape[1:]
    blocks = tensor.reshape(num_ratios, num_scales, -1, *rest)  # [ratio, scale] in mmdet
    return blocks.transpose(0, 1).reshape(tensor.shape).contiguous()


def _anchor_order(value):
    return mmdet_to_detectron2_anchor_order(value, RETINANET_SCALES, RETINANET_RATIOS)


def load_official_state_dict(path):
    """The state dict of an OpenMMLab checkpoint file (``{"state_dict": ..., "meta": ...}``
    or a bare state dict), loaded safely (tensors only, no code)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointFormatError(
            f"{path}: not readable as a PyTorch checkpoint ({type(exc).__name__}: {exc}); "
            "expected an OpenMMLab .pth file holding {'state_dict': ..., 'meta': ...}"
        ) from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointFormatError(
            f"{path}: found {found}, expected an OpenMMLab checkpoint: a dict with "
            "'state_dict' (name -> tensor), or such a state dict itself")
    return data


def _describe(keys):
    sample = ", ".join(sorted(keys)[:6])
    if any(k.startswith(("backbone.bottom_up.", "stem.", "res2.")) for k in keys):
        guess = "a Detectron2 checkpoint (already converted?)"
    elif "conv1.weight" in keys and "fc.weight" in keys:
        guess = "a torchvision-style ResNet"
    elif "backbone.conv1.weight" in keys:
        guess = "an OpenMMLab ResNet, not a RedNet"
    else:
        guess = "an unknown layout"
    return f"{guess} ({len(keys)} keys: {sample}, ...)"


def detect_family(state_dict):
    """The model family of an official RedNet state dict: "classification", "rcnn",
    "retinanet", "semantic_fpn" or "upernet"."""
    keys = set(state_dict)
    # The stem's involution exists in RedNet only.
    if "backbone.stem.1.conv1.conv.weight" not in keys:
        raise CheckpointFormatError(
            f"not an official RedNet checkpoint: found {_describe(keys)}; expected OpenMMLab "
            "keys such as backbone.stem.1.conv1.conv.weight and backbone.layer1.0.conv1.weight")
    if "bbox_head.retina_cls.weight" in keys:
        return "retinanet"
    if "rpn_head.rpn_cls.weight" in keys:
        return "rcnn"
    if "decode_head.conv_seg.weight" in keys:
        return "upernet" if "decode_head.psp_modules.0.1.conv.weight" in keys else "semantic_fpn"
    heads = sorted({k.split(".")[0] for k in keys} - {"backbone", "head"})
    if heads:
        raise CheckpointFormatError(
            f"a RedNet checkpoint with heads {heads} that no converter knows; expected "
            "classification (head.fc), Faster/Mask R-CNN (neck, rpn_head, roi_head), RetinaNet "
            "(neck, bbox_head) or segmentation (decode_head, auxiliary_head)")
    return "classification"


def rednet_depth(state_dict):
    """The RedNet depth whose blocks per stage the backbone keys have."""
    blocks = [len({k.split(".")[2] for k in state_dict if k.startswith(f"backbone.layer{s}.")})
              for s in (1, 2, 3, 4)]
    for depth, layout in REDNET_DEPTHS.items():
        if tuple(blocks) == layout:
            return depth
    raise CheckpointFormatError(
        f"the backbone has {blocks} blocks per stage, which is no RedNet "
        f"({ {d: list(v) for d, v in REDNET_DEPTHS.items()} })")


def convert(state_dict, expect=None):
    """Convert an official RedNet state dict.

    Args:
        state_dict (dict[str, Tensor]): OpenMMLab keys (``backbone.``, ``neck.``, ...).
        expect (str or None): "classification", "detection" or "segmentation": fail unless
            the checkpoint is of that kind.

    Returns:
        (dict[str, Tensor], str, list[str]): the converted state dict, the family
        (see :func:`detect_family`) and the official keys that no rule maps, which are left
        out.  BatchNorm's ``num_batches_tracked`` counters are dropped and not reported:
        FrozenBN has none, and a BatchNorm loading a dict without them keeps its own.
    """
    family = detect_family(state_dict)
    if expect is not None:
        if expect not in KINDS:
            raise ValueError(f"expect={expect!r}: choose one of {sorted(KINDS)}")
        if family not in KINDS[expect]:
            found = next(kind for kind, fams in KINDS.items() if family in fams)
            raise CheckpointFormatError(
                f"expected a {expect} checkpoint, found a {found} one ({family}: keys "
                f"{', '.join(sorted({k.split('.')[0] for k in state_dict}))})")
    rednet_depth(state_dict)  # fails on a backbone of no RedNet depth
    rules = [(re.compile(r[0]),) + tuple(r[1:]) for r in _RULES[family]()]
    converted, unmatched = {}, []
    for key, value in state_dict.items():
        if key.endswith(".num_batches_tracked"):
            continue
        for rule in rules:
            match = rule[0].fullmatch(key)
            if match:
                converted[rule[1](match)] = rule[2](value) if len(rule) > 2 else value
                break
        else:
            unmatched.append(key)
    return converted, family, unmatched


def to_detectron2_checkpoint(converted, family):
    """The object to save for DetectionCheckpointer (``MODEL.WEIGHTS`` /
    ``train.init_checkpoint``).  Classification weights are unprefixed and loaded by
    Detectron2's suffix matching into any model's RedNet; the others carry full keys."""
    return {"model": converted, "__author__": AUTHOR,
            "matching_heuristics": family == "classification"}
