"""RetinaNet with RedNet-50 + FPN (P3-P7, P6 from res5, P7 from P6 without a ReLU as in the
official configs): Detectron2's RetinaNet model with the RedNet backbone."""
from detectron2 import model_zoo

from involution_d2.modeling import InvolutionFPN, LastLevelP6P7NoReLU

from .rednet import NECK_HEAD_INVOLUTION, rednet, use_rgb

model = model_zoo.get_config("common/models/retinanet.py").model
model.backbone.bottom_up = rednet(out_features=["res3", "res4", "res5"])
model.backbone.top_block._target_ = LastLevelP6P7NoReLU  # the official P7 = conv(P6)
use_rgb(model)


def use_involution_fpn(model):
    model.backbone._target_ = InvolutionFPN
    model.backbone.involution_kwargs = dict(NECK_HEAD_INVOLUTION)
