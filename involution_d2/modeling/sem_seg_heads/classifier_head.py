"""What the OpenMMLab-style segmentation heads share: dropout, a 1x1 classifier, and a
cross-entropy loss at the input resolution (the API of Detectron2's SemSegFPNHead)."""
import torch.nn.functional as F
from torch import nn


class ClassifierHead(nn.Module):
    """Subclasses define ``layers(features) -> (N, channels, H/s, W/s)``; this class adds
    ``dropout`` and ``conv_seg`` and returns what Detectron2's semantic heads return: in
    training ``(None, {loss_name: loss})``, in inference ``(logits at stride 1, {})``."""

    def __init__(self, channels, *, num_classes, common_stride, dropout=0.1,
                 ignore_value=255, loss_weight=1.0, loss_name="loss_sem_seg"):
        super().__init__()
        self.common_stride = common_stride
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.loss_name = loss_name
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def layers(self, features):
        raise NotImplementedError

    def forward(self, features, targets=None):
        x = self.layers(features)
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.conv_seg(x)
        x = F.interpolate(x.float(), scale_factor=self.common_stride, mode="bilinear",
                          align_corners=False)
        if self.training:
            loss = F.cross_entropy(x, targets, reduction="mean", ignore_index=self.ignore_value)
            return None, {self.loss_name: loss * self.loss_weight}
        return x, {}
