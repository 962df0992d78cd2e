"""RedNet-38 on ImageNet, the official recipe (seed: 12.39 M, 77.48 / 93.57 top-1 / top-5)."""
from ..common.imagenet import dataloader, lr_multiplier, optimizer, train
from ..common.models.classifier_rednet import model

model.backbone.depth = 38
