"""RetinaNet, RedNet-50, involution FPN (P3-P7), 1x, lr 0.01, gradient clipping at max-norm 40."""
from ..common.coco_1x import clip_gradients, dataloader, lr_multiplier, optimizer, train
from ..common.models.retinanet_rednet_fpn import model, use_involution_fpn

optimizer.lr = 0.01
use_involution_fpn(model)
clip_gradients(optimizer, max_norm=40.0)

# No masks to learn: do not load them (as Detectron2's own box-only configs).
dataloader.train.mapper.use_instance_mask = False
