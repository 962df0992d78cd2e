"""RedNet-152 on ImageNet, the official recipe (seed: 33.99 M, 79.12 / 94.38 top-1 / top-5)."""
from ..common.imagenet import dataloader, lr_multiplier, optimizer, train
from ..common.models.classifier_rednet import model

model.backbone.depth = 152
