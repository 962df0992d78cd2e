"""RetinaNet, RedNet-50-FPN (P3-P7), convolution neck, 1x, lr 0.01."""
from ..common.coco_1x import dataloader, lr_multiplier, optimizer, train
from ..common.models.retinanet_rednet_fpn import model

optimizer.lr = 0.01

# No masks to learn: do not load them (as Detectron2's own box-only configs).
dataloader.train.mapper.use_instance_mask = False
