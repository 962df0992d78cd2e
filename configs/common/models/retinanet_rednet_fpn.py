"""RetinaNet with RedNet-50 + FPN (P3-P7, P6 from res5): Detectron2's RetinaNet model with the
RedNet backbone."""
from detectron2 import model_zoo

from involution_d2.modeling import InvolutionFPN

from .rednet import NECK_HEAD_INVOLUTION, rednet, use_rgb

model = model_zoo.get_config("common/models/retinanet.py").model
model.backbone.bottom_up = rednet(out_features=["res3", "res4", "res5"])
use_rgb(model)


def use_involution_fpn(model):
    model.backbone._target_ = InvolutionFPN
    model.backbone.involution_kwargs = dict(NECK_HEAD_INVOLUTION)
