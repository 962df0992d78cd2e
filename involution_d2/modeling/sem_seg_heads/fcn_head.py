"""FCN head, used as UPerNet's auxiliary head on res4 (loss weight 0.4 in the official configs)."""
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ...layers import ConvNormAct
from .classifier_head import ClassifierHead

__all__ = ["FCNHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class FCNHead(ClassifierHead):
    """``num_convs`` 3x3 conv + norm + ReLU on one feature, dropout, 1x1 classifier."""

    @configurable
    def __init__(self, input_shape, *, in_feature, num_classes, conv_dims=256, num_convs=1,
                 norm="BN", dropout=0.1, ignore_value=255, loss_weight=1.0,
                 loss_name="loss_sem_seg"):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): the backbone's output shapes.
            in_feature (str): the feature it reads, e.g. "res4".
            loss_name (str): key of its loss ("loss_sem_seg_aux" as an auxiliary head).
        """
        shape = input_shape[in_feature]
        super().__init__(conv_dims, num_classes=num_classes, common_stride=shape.stride,
                         dropout=dropout, ignore_value=ignore_value, loss_weight=loss_weight,
                         loss_name=loss_name)
        self.in_feature = in_feature
        self.convs = nn.Sequential(*[
            ConvNormAct(shape.channels if k == 0 else conv_dims, conv_dims, 3, norm=norm)
            for k in range(num_convs)
        ])

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None):
        """head_cfg: the config node to read (default MODEL.AUX_SEM_SEG_HEAD)."""
        head = head_cfg if head_cfg is not None else cfg.MODEL.AUX_SEM_SEG_HEAD
        return {
            "input_shape": input_shape,
            "in_feature": head.IN_FEATURE,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "conv_dims": head.CONVS_DIM,
            "num_convs": head.NUM_CONVS,
            "norm": head.NORM,
            "dropout": head.DROPOUT,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": head.LOSS_WEIGHT,
            "loss_name": "loss_sem_seg_aux",
        }

    def layers(self, features):
        return self.convs(features[self.in_feature])
