"""Faster R-CNN, RedNet-50, involution FPN and RPN head (box head: 2 FC), 1x, gradient
clipping at max-norm 5."""
from ..common.coco_1x import clip_gradients, dataloader, lr_multiplier, optimizer, train
from ..common.models.rcnn_rednet_fpn import (
    model,
    use_involution_fpn,
    use_involution_heads,
    without_masks,
)

without_masks(model)
use_involution_fpn(model)
use_involution_heads(model)
clip_gradients(optimizer, max_norm=5.0)

# No masks to learn: do not load them (as Detectron2's own box-only configs).
dataloader.train.mapper.use_instance_mask = False
