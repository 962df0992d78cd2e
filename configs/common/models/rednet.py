"""RedNet backbone pieces shared by the LazyConfig files.

Switch depth from the command line: ``model.backbone.bottom_up.depth=101`` (26/38/50/101/152).
"""
from detectron2.config import LazyCall as L

from involution_d2.layers import (
    DEFAULT_GROUP_CHANNELS,
    DEFAULT_KERNEL_SIZE,
    DEFAULT_REDUCTION_RATIO,
)
from involution_d2.modeling import DETECTION_STEM_INVOLUTION_KERNEL, RedNet

# ImageNet mean/std in RGB order: RedNet weights expect RGB input (Detectron2 defaults to BGR).
PIXEL_MEAN_RGB = [123.675, 116.28, 103.53]
PIXEL_STD_RGB = [58.395, 57.12, 57.375]


def involution_kwargs(norm=None):
    """Arguments of the involutions (the official design), listed so that the command line
    can change them, e.g. ``model.backbone.bottom_up.involution_kwargs.backend=torch``.
    norm: the kernel generation's norm (MODEL.INVOLUTION.NORM in yacs); None: the
    backbone's."""
    kwargs = dict(kernel_size=DEFAULT_KERNEL_SIZE, group_channels=DEFAULT_GROUP_CHANNELS,
                  reduction_ratio=DEFAULT_REDUCTION_RATIO, backend="auto")
    if norm is not None:
        kwargs["norm"] = norm
    return kwargs


# The involutions of necks and heads (MODEL.INVOLUTION in yacs).
NECK_HEAD_INVOLUTION = involution_kwargs(norm="BN")


def rednet(out_features, depth=50):
    """RedNet as detection uses it: FrozenBN, stem and res2 frozen (the official
    frozen_stages=1)."""
    return L(RedNet)(
        depth=depth,
        norm="FrozenBN",
        freeze_at=2,
        out_features=out_features,
        # 7x7 as in the official detection and segmentation RedNets (3x3 in the classifier).
        stem_involution_kernel=DETECTION_STEM_INVOLUTION_KERNEL,
        involution_kwargs=involution_kwargs(),
        # Training memory: cheap norm+ReLU outputs recomputed in backward (same results);
        # with_cp=True checkpoints the residual blocks (the official option: less memory,
        # slower).
        recompute_activations=True,
        with_cp=False,
    )


def use_rgb(model):
    model.pixel_mean = PIXEL_MEAN_RGB
    model.pixel_std = PIXEL_STD_RGB
    model.input_format = "RGB"
