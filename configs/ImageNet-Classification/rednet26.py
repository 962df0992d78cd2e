"""RedNet-26 on ImageNet, the official recipe (seed: 9.23 M, 75.96 / 93.19 top-1 / top-5)."""
from ..common.imagenet import dataloader, lr_multiplier, optimizer, train
from ..common.models.classifier_rednet import model

model.backbone.depth = 26
