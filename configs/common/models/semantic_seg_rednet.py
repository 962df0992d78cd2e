"""Cityscapes segmentors with RedNet-50 (SyncBN, trained): semantic FPN over a conv or an
involution FPN, and UPerNet with an auxiliary FCN head on res4."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from involution_d2.modeling import (
    DETECTION_STEM_INVOLUTION_KERNEL,
    EncoderDecoderSegmentor,
    FCNHead,
    InvolutionFPN,
    RedNet,
    SemanticFPNHead,
    UPerNetHead,
)

from .rednet import PIXEL_MEAN_RGB, PIXEL_STD_RGB, involution_kwargs

NUM_CLASSES = 19
INVOLUTION = involution_kwargs(norm="SyncBN")
RES_SHAPES = {"res2": ShapeSpec(channels=256, stride=4), "res3": ShapeSpec(channels=512, stride=8),
              "res4": ShapeSpec(channels=1024, stride=16),
              "res5": ShapeSpec(channels=2048, stride=32)}


def rednet(depth=50):
    return L(RedNet)(depth=depth, norm="SyncBN", freeze_at=0,
                     out_features=["res2", "res3", "res4", "res5"],
                     # 7x7 as in the official segmentation RedNet (3x3 in the classifier)
                     stem_involution_kernel=DETECTION_STEM_INVOLUTION_KERNEL,
                     involution_kwargs=dict(INVOLUTION))


def segmentor(backbone, sem_seg_head, aux_head=None):
    return L(EncoderDecoderSegmentor)(
        backbone=backbone,
        sem_seg_head=sem_seg_head,
        aux_head=aux_head,
        pixel_mean=PIXEL_MEAN_RGB,
        pixel_std=PIXEL_STD_RGB,
        test_mode="whole",  # "slide": windows of crop_size every crop_stride pixels
        crop_size=(512, 1024),
        crop_stride=(341, 683),
    )


def semantic_fpn(involution_neck=False):
    backbone = L(InvolutionFPN if involution_neck else FPN)(
        bottom_up=rednet(),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        top_block=L(LastLevelMaxPool)(),  # P6 is not read by the head (as in the yacs twin)
    )
    if involution_neck:
        backbone.involution_kwargs = dict(INVOLUTION)
    head = L(SemanticFPNHead)(
        input_shape={f"p{k}": ShapeSpec(channels=256, stride=2**k) for k in (2, 3, 4, 5)},
        num_classes=NUM_CLASSES, conv_dims=128, common_stride=4, norm="SyncBN",
        ignore_value=255, loss_weight=1.0, dropout=0.1,
    )
    return segmentor(backbone, head)


def upernet():
    head = L(UPerNetHead)(
        input_shape=RES_SHAPES, in_features=["res2", "res3", "res4", "res5"],
        num_classes=NUM_CLASSES, channels=512, pool_scales=(1, 2, 3, 6), norm="SyncBN",
        dropout=0.1, ignore_value=255, loss_weight=1.0,
    )
    aux = L(FCNHead)(
        input_shape=RES_SHAPES, in_feature="res4", num_classes=NUM_CLASSES, conv_dims=256,
        num_convs=1, norm="SyncBN", dropout=0.1, ignore_value=255, loss_weight=0.4,
        loss_name="loss_sem_seg_aux",
    )
    return segmentor(rednet(), head, aux)
