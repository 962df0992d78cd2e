"""Semantic FPN, RedNet-50, involution neck, 512x1024, 80k."""
from ..common.cityscapes_80k import dataloader, lr_multiplier, optimizer, train
from ..common.models.semantic_seg_rednet import semantic_fpn

model = semantic_fpn(involution_neck=True)
