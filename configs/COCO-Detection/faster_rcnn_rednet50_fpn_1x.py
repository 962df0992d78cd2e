"""Faster R-CNN, RedNet-50-FPN, convolution neck and heads, 1x."""
from ..common.coco_1x import dataloader, lr_multiplier, optimizer, train
from ..common.models.rcnn_rednet_fpn import model, without_masks

without_masks(model)
