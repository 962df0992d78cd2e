"""RedNet-101 on ImageNet, the official recipe (seed: 25.65 M, 78.92 / 94.35 top-1 / top-5)."""
from ..common.imagenet import dataloader, lr_multiplier, optimizer, train
from ..common.models.classifier_rednet import model

model.backbone.depth = 101
