"""UPerNet, RedNet-50, auxiliary FCN head on res4 (loss weight 0.4), 512x1024, 80k."""
from ..common.cityscapes_80k import dataloader, lr_multiplier, optimizer, train
from ..common.models.semantic_seg_rednet import upernet

model = upernet()
