from .rednet import REDNET_DEPTHS, RedNet, RedNetBottleneck, RedNetStem, build_rednet_backbone

__all__ = [k for k in globals() if not k.startswith("_")]
