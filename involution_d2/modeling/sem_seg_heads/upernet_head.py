"""UPerNet head: pyramid pooling on the last feature, FPN-style fusion of all features."""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ...layers import ConvNormAct
from .classifier_head import ClassifierHead

__all__ = ["UPerNetHead"]


def _resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@SEM_SEG_HEADS_REGISTRY.register()
class UPerNetHead(ClassifierHead):
    """Pyramid pooling (scales 1, 2, 3, 6) on the coarsest feature, 1x1 laterals on the
    others, a top-down pathway, 3x3 output convs, then all levels upsampled to the finest,
    concatenated and fused by a 3x3 conv; dropout and a 1x1 classifier.  Submodule names
    follow OpenMMLab's UPerHead."""

    @configurable
    def __init__(self, input_shape, *, in_features, num_classes, channels=512,
                 pool_scales=(1, 2, 3, 6), norm="BN", dropout=0.1, ignore_value=255,
                 loss_weight=1.0):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): the backbone's output shapes.
            in_features (list[str]): fine to coarse, e.g. ["res2", "res3", "res4", "res5"].
            channels (int): width of the fusion (512 in the official configs).
        """
        shapes = [input_shape[f] for f in in_features]
        super().__init__(channels, num_classes=num_classes, common_stride=shapes[0].stride,
                         dropout=dropout, ignore_value=ignore_value, loss_weight=loss_weight)
        self.in_features = list(in_features)
        top = shapes[-1].channels
        self.psp_modules = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(top, channels, 1, norm=norm))
            for s in pool_scales
        ])
        self.bottleneck = ConvNormAct(top + len(pool_scales) * channels, channels, 3, norm=norm)
        self.lateral_convs = nn.ModuleList(
            [ConvNormAct(s.channels, channels, 1, norm=norm) for s in shapes[:-1]])
        self.fpn_convs = nn.ModuleList(
            [ConvNormAct(channels, channels, 3, norm=norm) for _ in shapes[:-1]])
        self.fpn_bottleneck = ConvNormAct(len(shapes) * channels, channels, 3, norm=norm)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": input_shape,
            "in_features": head.IN_FEATURES,
            "num_classes": head.NUM_CLASSES,
            "channels": cfg.MODEL.UPERNET.CHANNELS,
            "pool_scales": cfg.MODEL.UPERNET.POOL_SCALES,
            "norm": head.NORM,
            "dropout": head.DROPOUT,
            "ignore_value": head.IGNORE_VALUE,
            "loss_weight": head.LOSS_WEIGHT,
        }

    def pyramid_pooling(self, x):
        pooled = [_resize(m(x), x.shape[-2:]) for m in self.psp_modules]
        return self.bottleneck(torch.cat([x] + pooled, dim=1))

    def layers(self, features):
        feats = [features[f] for f in self.in_features]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.pyramid_pooling(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        return self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]],
                                             dim=1))
