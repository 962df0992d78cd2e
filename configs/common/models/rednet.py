"""RedNet backbone pieces shared by the LazyConfig files.

Switch depth from the command line: ``model.backbone.bottom_up.depth=101`` (26/38/50/101/152).
"""
from detectron2.config import LazyCall as L

from involution_d2.modeling import DETECTION_STEM_INVOLUTION_KERNEL, RedNet

# ImageNet mean/std in RGB order: RedNet weights expect RGB input (Detectron2 defaults to BGR).
PIXEL_MEAN_RGB = [123.675, 116.28, 103.53]
PIXEL_STD_RGB = [58.395, 57.12, 57.375]

# Arguments of the involutions in necks and heads (MODEL.INVOLUTION in yacs).
NECK_HEAD_INVOLUTION = dict(kernel_size=7, group_channels=16, reduction_ratio=4,
                            backend="auto", norm="BN")


def rednet(out_features, depth=50):
    """RedNet as detection uses it: FrozenBN, stem and res2 frozen (the seed's
    frozen_stages=1)."""
    return L(RedNet)(
        depth=depth,
        norm="FrozenBN",
        freeze_at=2,
        out_features=out_features,
        # 7x7 as in the official detection and segmentation RedNets (3x3 in the classifier).
        stem_involution_kernel=DETECTION_STEM_INVOLUTION_KERNEL,
        involution_kwargs=dict(kernel_size=7, group_channels=16, reduction_ratio=4,
                               backend="auto"),
    )


def use_rgb(model):
    model.pixel_mean = PIXEL_MEAN_RGB
    model.pixel_std = PIXEL_STD_RGB
    model.input_format = "RGB"
