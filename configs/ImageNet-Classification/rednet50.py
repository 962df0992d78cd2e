"""RedNet-50 on ImageNet, the official recipe (seed: 15.54 M, 78.35 / 94.13 top-1 / top-5)."""
from ..common.imagenet import dataloader, lr_multiplier, optimizer, train
from ..common.models.classifier_rednet import model

model.backbone.depth = 50
