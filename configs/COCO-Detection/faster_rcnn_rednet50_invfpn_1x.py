"""Faster R-CNN, RedNet-50, involution FPN, convolution heads, 1x."""
from ..common.coco_1x import dataloader, lr_multiplier, optimizer, train
from ..common.models.rcnn_rednet_fpn import model, use_involution_fpn, without_masks

without_masks(model)
use_involution_fpn(model)

# No masks to learn: do not load them (as Detectron2's own box-only configs).
dataloader.train.mapper.use_instance_mask = False
