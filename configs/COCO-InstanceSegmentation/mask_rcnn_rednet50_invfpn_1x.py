"""Mask R-CNN, RedNet-50, involution FPN, convolution heads, 1x."""
from ..common.coco_1x import dataloader, lr_multiplier, optimizer, train
from ..common.models.rcnn_rednet_fpn import model, use_involution_fpn

use_involution_fpn(model)
