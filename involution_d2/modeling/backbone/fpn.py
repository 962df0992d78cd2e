"""FPNs over RedNet: Detectron2's FPN, and the involution FPN whose 3x3 output convolutions
are involutions (the seed's "Neck: involution"); the 1x1 laterals and the extra levels
(max-pool P6, or conv P6/P7 for RetinaNet) stay as in Detectron2."""
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from ...layers import Involution
from .rednet import build_rednet_backbone, involution_kwargs_from_config

__all__ = [
    "InvolutionFPN",
    "LastLevelP6P7NoReLU",
    "build_rednet_fpn_backbone",
    "build_rednet_invfpn_backbone",
    "build_retinanet_rednet_fpn_backbone",
    "build_retinanet_rednet_invfpn_backbone",
]


class InvolutionFPN(FPN):
    """Detectron2's :class:`FPN` (same semantics, outputs and top blocks) with each output
    convolution ``fpn_output{stage}`` replaced by an involution of ``out_channels``."""

    def __init__(self, bottom_up, in_features, out_channels, norm="", top_block=None,
                 fuse_type="sum", square_pad=0, involution_kwargs=None):
        """
        Args:
            involution_kwargs (dict): arguments of the output :class:`Involution` layers
                (kernel_size 7, 16 channels per group, reduction 4 and BN by default).
            others: as :class:`detectron2.modeling.FPN`.
        """
        super().__init__(bottom_up, in_features, out_channels, norm=norm, top_block=top_block,
                         fuse_type=fuse_type, square_pad=square_pad)
        kw = dict(kernel_size=7)
        kw.update(involution_kwargs or {})
        replaced = {}
        for name, module in list(self.named_children()):
            if name.startswith("fpn_output"):
                replaced[module] = Involution(out_channels, stride=1, **kw)
                setattr(self, name, replaced[module])
        # forward() runs the convs through this list (top-down order).
        self.output_convs = [replaced[m] for m in self.output_convs]


class LastLevelP6P7NoReLU(LastLevelP6P7):
    """RetinaNet's P6 (from res5) and P7 (from P6) as the seed builds them: OpenMMLab's FPN
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
