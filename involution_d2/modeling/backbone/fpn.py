"""FPNs over RedNet: Detectron2's FPN, and the involution FPN whose 3x3 output convolutions
are involutions (the official "Neck: involution"); the 1x1 laterals and the extra levels
(max-pool P6, or conv P6/P7 for RetinaNet) stay as in Detectron2."""
import math

import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from ...config import involution_kwargs_from_config
from ...layers import Involution
from .rednet import build_rednet_backbone

__all__ = [
    "InvolutionFPN",
    "LastLevelP6P7NoReLU",
    "build_rednet_fpn_backbone",
    "build_rednet_invfpn_backbone",
    "build_retinanet_rednet_fpn_backbone",
    "build_retinanet_rednet_invfpn_backbone",
]


class InvolutionFPN(FPN):
    """Detectron2's :class:`FPN` whose 3x3 output convolutions ``fpn_output{stage}`` are
    involutions of ``out_channels``, with no norm and no activation after them (the official
    neck).  Everything else is FPN's: arguments, checks, laterals, top block, forward and
    scripting."""

    # FPN's, stated again: TorchScript reads the annotations of the class itself, which
    # Detectron2's export gives one ("training") the moment it scripts a model holding it.
    _fuse_type: torch.jit.Final[str]

    def __init__(self, bottom_up, in_features, out_channels, norm="", top_block=None,
                 fuse_type="sum", square_pad=0, involution_kwargs=None):
        """
        Args:
            norm (str): of the 1x1 lateral convolutions, as in FPN.
            involution_kwargs (dict): arguments of the output :class:`Involution` layers
                (the official design by default; their own norm is their kernel generation's).
            others: as :class:`detectron2.modeling.FPN`.
        """
        super().__init__(bottom_up, in_features, out_channels, norm=norm, top_block=top_block,
                         fuse_type=fuse_type, square_pad=square_pad)
        # FPN has no hook for its output convolutions, so each is replaced where FPN keeps
        # it: the child named fpn_output{stage} (state-dict keys) and its entry in
        # output_convs, which FPN.forward runs (top-down: low to high resolution).
        strides = [bottom_up.output_shape()[f].stride for f in self.in_features]
        for idx, stride in enumerate(reversed(strides)):
            output_conv = Involution(out_channels, **(involution_kwargs or {}))
            self.add_module(f"fpn_output{int(math.log2(stride))}", output_conv)
            self.output_convs[idx] = output_conv


class LastLevelP6P7NoReLU(LastLevelP6P7):
    """RetinaNet's P6 (from res5) and P7 (from P6) as the official configs build them: OpenMMLab's FPN
    leaves ``relu_before_extra_convs`` off, so P7 = conv(P6), where Detectron2 applies a ReLU
    first.  Same parameters; converted official weights then give the official P7."""

    def forward(self, c5):
        p6 = self.p6(c5)
        return [p6, self.p7(p6)]


def _fpn_backbone(cfg, input_shape, top_block, involution):
    bottom_up = build_rednet_backbone(cfg, input_shape)
    kwargs = dict(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block(bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    if involution:
        return InvolutionFPN(**kwargs, involution_kwargs=involution_kwargs_from_config(cfg))
    return FPN(**kwargs)


def _p6p7(cfg):
    return lambda bottom_up: LastLevelP6P7NoReLU(
        bottom_up.output_shape()["res5"].channels, cfg.MODEL.FPN.OUT_CHANNELS
    )


@BACKBONE_REGISTRY.register()
def build_rednet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """RedNet + FPN with max-pool P6 (R-CNN)."""
    return _fpn_backbone(cfg, input_shape, lambda _: LastLevelMaxPool(), involution=False)


@BACKBONE_REGISTRY.register()
def build_rednet_invfpn_backbone(cfg, input_shape: ShapeSpec):
    """RedNet + involution FPN with max-pool P6 (R-CNN)."""
    return _fpn_backbone(cfg, input_shape, lambda _: LastLevelMaxPool(), involution=True)


@BACKBONE_REGISTRY.register()
def build_retinanet_rednet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """RedNet + FPN with conv P6 (from res5) and P7 (RetinaNet, no ReLU before P7)."""
    return _fpn_backbone(cfg, input_shape, _p6p7(cfg), involution=False)


@BACKBONE_REGISTRY.register()
def build_retinanet_rednet_invfpn_backbone(cfg, input_shape: ShapeSpec):
    """RedNet + involution FPN with conv P6 (from res5) and P7 (RetinaNet, no ReLU)."""
    return _fpn_backbone(cfg, input_shape, _p6p7(cfg), involution=True)
