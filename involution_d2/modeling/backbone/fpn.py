"""FPNs over RedNet: Detectron2's FPN, and the involution FPN whose 3x3 output convolutions
are involutions (the official "Neck: involution"); the 1x1 laterals and the extra levels
(max-pool P6, or conv P6/P7 for RetinaNet) stay as in Detectron2."""
import copy
import math

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from torch import nn
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone
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


class InvolutionFPN(Backbone):
    """Detectron2's :class:`FPN` (same arguments, outputs, module names and top blocks) whose
    3x3 output convolutions ``fpn_output{stage}`` are involutions of ``out_channels`` (no norm
    and no activation after them, as in the official neck).  Built directly: FPN has no hook
    for its output convolutions."""

    def __init__(self, bottom_up, in_features, out_channels, norm="", top_block=None,
                 fuse_type="sum", square_pad=0, involution_kwargs=None):
        """
        Args:
            norm (str): of the 1x1 lateral convolutions, as in FPN.
            involution_kwargs (dict): arguments of the output :class:`Involution` layers
                (the official design by default; their own norm is their kernel generation's).
            others: as :class:`detectron2.modeling.FPN`.
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(f"InvolutionFPN: bottom_up must be a Detectron2 Backbone, got "
                            f"{type(bottom_up).__name__}")
        if not in_features:
            raise ValueError("InvolutionFPN: in_features is empty; name the bottom-up "
                             "features to use, e.g. ['res2', 'res3', 'res4', 'res5']")
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"InvolutionFPN: fuse_type={fuse_type!r}; use 'sum' or 'avg'")
        shapes = bottom_up.output_shape()
        strides = [shapes[f].stride for f in in_features]
        lateral_convs, output_convs = [], []
        for feature, stride in zip(in_features, strides):
            stage = int(math.log2(stride))
            lateral = Conv2d(shapes[feature].channels, out_channels, kernel_size=1,
                             bias=norm == "", norm=get_norm(norm, out_channels))
            weight_init.c2_xavier_fill(lateral)  # as FPN
            output = Involution(out_channels, stride=1, **(involution_kwargs or {}))
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Top-down order (low to high resolution), as FPN.forward runs them.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up
        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            for s in range(stage, stage + top_block.num_levels):
                self._out_feature_strides[f"p{s + 1}"] = 2 ** (s + 1)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad
        self._fuse_type = fuse_type

    @property
    def size_divisibility(self):
        return self._size_divisibility

    @property
    def padding_constraints(self):
        return {"square_size": self._square_pad}

    def __prepare_scriptable__(self):
        """For torch.jit.script, as Detectron2 prepares its FPN: the convolutions as
        ModuleLists (state-dict names change, as for FPN)."""
        scriptable = copy.deepcopy(self)
        scriptable.lateral_convs = nn.ModuleList(scriptable.lateral_convs)
        scriptable.output_convs = nn.ModuleList(scriptable.output_convs)
        for name, _ in self.named_children():
            if name.startswith("fpn_"):
                delattr(scriptable, name)
        return scriptable

    def forward(self, x):
        """As FPN's: {"p<stage>": feature} from high to low resolution, then the top block's."""
        bottom_up = self.bottom_up(x)
        prev = self.lateral_convs[0](bottom_up[self.in_features[-1]])
        results = [self.output_convs[0](prev)]
        # Written as FPN.forward is, so that it scripts: TorchScript indexes a ModuleList
        # with constants only, hence the loop over all pairs that skips the first.
        for idx, (lateral_conv, output_conv) in enumerate(
                zip(self.lateral_convs, self.output_convs)):
            if idx > 0:
                lateral = lateral_conv(bottom_up[self.in_features[-idx - 1]])
                prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
                if self._fuse_type == "avg":
                    prev = prev / 2
                results.insert(0, output_conv(prev))
        if self.top_block is not None:
            top_in = self.top_block.in_feature
            if top_in in bottom_up:
                source = bottom_up[top_in]
            else:
                source = results[self._out_features.index(top_in)]
            results.extend(self.top_block(source))
        return {f: r for f, r in zip(self._out_features, results)}


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
