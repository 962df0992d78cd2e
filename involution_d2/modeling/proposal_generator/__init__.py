from .rpn_head import InvolutionRPNHead

__all__ = ["InvolutionRPNHead"]
