"""Faster / Mask R-CNN with RedNet-50 + FPN: Detectron2's R-CNN FPN model with the RedNet
backbone; the *_invfpn / *_invhead helpers swap in the involution neck and heads."""
from detectron2 import model_zoo

from involution_d2.modeling import InvolutionFPN, InvolutionMaskRCNNHead, InvolutionRPNHead

from .rednet import NECK_HEAD_INVOLUTION, rednet, use_rgb

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up = rednet(out_features=["res2", "res3", "res4", "res5"])
use_rgb(model)


def use_involution_fpn(model):
    model.backbone._target_ = InvolutionFPN
    model.backbone.involution_kwargs = dict(NECK_HEAD_INVOLUTION)


def use_involution_heads(model):
    """The official "Head: involution": RPN conv and (with masks) the mask head's convs."""
    model.proposal_generator.head._target_ = InvolutionRPNHead
    model.proposal_generator.head.involution_kwargs = dict(NECK_HEAD_INVOLUTION)
    if model.roi_heads.get("mask_head") is not None:
        model.roi_heads.mask_head._target_ = InvolutionMaskRCNNHead
        model.roi_heads.mask_head.involution_kwargs = dict(NECK_HEAD_INVOLUTION)


def without_masks(model):
    model.roi_heads.mask_in_features = None
    model.roi_heads.mask_pooler = None
    model.roi_heads.mask_head = None
