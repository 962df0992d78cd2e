from .fpn import (
    InvolutionFPN,
    LastLevelP6P7NoReLU,
    build_rednet_fpn_backbone,
    build_rednet_invfpn_backbone,
    build_retinanet_rednet_fpn_backbone,
    build_retinanet_rednet_invfpn_backbone,
)
from .rednet import (
    CLASSIFICATION_STEM_INVOLUTION_KERNEL,
    DETECTION_STEM_INVOLUTION_KERNEL,
    REDNET_DEPTHS,
    RedNet,
    RedNetBottleneck,
    RedNetStem,
    build_rednet_backbone,
)

__all__ = [k for k in globals() if not k.startswith("_")]
