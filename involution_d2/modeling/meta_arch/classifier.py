"""ImageNet classification with RedNet: the official classifier, to check converted weights
(top-1 / top-5) and to pretrain."""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList

from ..backbone.rednet import RedNet

__all__ = ["ImageNetClassifier"]


@META_ARCH_REGISTRY.register()
class ImageNetClassifier(nn.Module):
    """A RedNet with ``num_classes`` (Detectron2 ResNet's global average pooling and
    ``linear``), on images normalised with the ImageNet mean/std (RGB, as the official
    weights expect).

    Inputs: Detectron2's list of dicts with "image" (C, H, W), and "label" (int) in
    training.  Training returns ``{"loss_cls": ...}`` (cross-entropy, with label smoothing
    0.1 in the official recipe); inference returns ``[{"pred_logits": (num_classes,)}]``.
    """

    @configurable
    def __init__(self, *, backbone, pixel_mean, pixel_std, label_smoothing=0.0):
        """
        Args:
            backbone (RedNet): built with ``num_classes`` and ``out_features=None``, so that
                it returns its logits as "linear".
            pixel_mean, pixel_std (list[float]): per channel, in the input's channel order.
            label_smoothing (float): of the training loss.
        """
        super().__init__()
        if getattr(backbone, "num_classes", None) is None or "linear" not in getattr(
                backbone, "_out_features", ()):
            raise ValueError("ImageNetClassifier: the backbone must return its logits: build "
                             "it with num_classes and out_features=None")
        self.backbone = backbone
        self.label_smoothing = label_smoothing
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        args = RedNet.from_config(cfg)
        # out_features=None means "linear" here: Detectron2's ResNet drops every stage when
        # asked for ["linear"] (it keeps the stages up to the last "res" feature named).
        args.update(num_classes=cfg.MODEL.CLASSIFIER.NUM_CLASSES, out_features=None)
        return {
            "backbone": RedNet(**args),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "label_smoothing": cfg.MODEL.CLASSIFIER.LABEL_SMOOTHING,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def forward(self, batched_inputs):
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        # Same-size crops in practice; padding only guards against a stray odd image.
        logits = self.backbone(ImageList.from_tensors(images).tensor)["linear"]
        if self.training:
            labels = torch.as_tensor([x["label"] for x in batched_inputs], device=self.device)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            return {"loss_cls": loss}
        return [{"pred_logits": row} for row in logits]
