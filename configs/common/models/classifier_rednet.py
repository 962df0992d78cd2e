"""The ImageNet classifier: RedNet-50 with BN (trained), global pooling and a 1000-way
linear layer, on RGB images normalised with the ImageNet mean/std."""
from detectron2.config import LazyCall as L

from involution_d2.modeling import (
    CLASSIFICATION_STEM_INVOLUTION_KERNEL,
    ImageNetClassifier,
    RedNet,
)

from .rednet import PIXEL_MEAN_RGB, PIXEL_STD_RGB, involution_kwargs

model = L(ImageNetClassifier)(
    backbone=L(RedNet)(
        depth=50,
        norm="BN",
        freeze_at=0,
        num_classes=1000,
        out_features=None,  # the logits, "linear" (["linear"] would drop the stages)
        # The official ImageNet RedNet's stem involution is 3x3 (7x7 in detection/segmentation).
        stem_involution_kernel=CLASSIFICATION_STEM_INVOLUTION_KERNEL,
        involution_kwargs=involution_kwargs(),
        recompute_activations=True,  # training memory: see rednet.py beside this file
        with_cp=False,
    ),
    pixel_mean=PIXEL_MEAN_RGB,
    pixel_std=PIXEL_STD_RGB,
    label_smoothing=0.1,  # the official recipe's LabelSmoothLoss
)
