"""The forward pass OpenMMLab's ``get_flops.py`` tools measure (their ``forward_dummy``).

The official FLOPs were counted on one image tensor fed straight to the network, not on a
real inference: two-stage detectors run the box head on 1000 proposals and the mask head
on the first 100 of them whatever the image holds, single-stage detectors stop at the head's
raw outputs, segmentors run the decode head without the auxiliary head, classifiers return
logits. :class:`OpenMMLabDummyForward` does the same with a Detectron2 model, so that the
count depends on the input size alone.
"""
import torch
from torch import nn

__all__ = ["OpenMMLabDummyForward", "OPENMMLAB_INPUT_SIZES", "model_task"]

# (height, width) of the image each OpenMMLab get_flops tool feeds by default:
# mmcls 224x224, mmdet --shape 1280 800, mmseg --shape 2048 1024 (both read as (H, W)).
OPENMMLAB_INPUT_SIZES = {
    "classification": (224, 224),
    "detection": (1280, 800),
    "segmentation": (2048, 1024),
}

# forward_dummy of mmdet's two-stage detectors.
NUM_DUMMY_PROPOSALS = 1000
NUM_DUMMY_MASK_ROIS = 100


def _flatten(outputs):
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    return tuple(t for o in outputs for t in _flatten(o))


def _dummy_boxes(num, height, width, seed=0):
    """Fixed pseudo-random boxes inside the image (RoIAlign's cost, which the counter
    ignores anyway, is all that depends on them)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * torch.tensor([width * 0.75, height * 0.75])
    wh = (torch.rand(num, 2, generator=g) * 0.25 + 0.01) * torch.tensor([width, height])
    return torch.cat([xy, xy + wh], dim=1)


def _model_kind(model):
    from detectron2.modeling import GeneralizedRCNN, RetinaNet, SemanticSegmentor

    from ..modeling.meta_arch import ImageNetClassifier

    for cls, kind in ((GeneralizedRCNN, "rcnn"), (RetinaNet, "retinanet"),
                      (SemanticSegmentor, "segmentation"),
                      (ImageNetClassifier, "classification")):
        if isinstance(model, cls):
            return kind
    raise TypeError(f"no FLOP analysis for a {type(model).__name__}; supported: "
                    "GeneralizedRCNN, RetinaNet, SemanticSegmentor, ImageNetClassifier")


def model_task(model):
    """"classification", "detection" or "segmentation": the key of
    :data:`OPENMMLAB_INPUT_SIZES` for a Detectron2 model."""
    kind = _model_kind(model)
    return "detection" if kind in ("rcnn", "retinanet") else kind


class OpenMMLabDummyForward(nn.Module):
    """Wraps a Detectron2 model; ``forward(image)`` takes a (N, 3, H, W) tensor and runs the
    network the way OpenMMLab's FLOP tools do, returning a tuple of tensors.

    Supported meta-architectures: ``GeneralizedRCNN`` (standard ROI heads), ``RetinaNet``,
    ``SemanticSegmentor`` (and subclasses such as ``EncoderDecoderSegmentor``) and
    ``ImageNetClassifier``.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.kind = _model_kind(model)

    def forward(self, image):
        m = self.model
        if self.kind == "classification":
            return _flatten(m.backbone(image)["linear"])
        features = m.backbone(image)
        if self.kind == "segmentation":
            # The decode head only: the auxiliary head is a training-time addition.
            return _flatten(m.sem_seg_head(features)[0])
        if self.kind == "retinanet":
            return _flatten(m.head([features[f] for f in m.head_in_features]))
        return self._rcnn(m, features, image.shape[-2:])

    @staticmethod
    def _rcnn(m, features, image_size):
        from detectron2.structures import Boxes

        outs = []
        rpn = m.proposal_generator
        outs.append(rpn.rpn_head([features[f] for f in rpn.in_features]))
        heads = m.roi_heads
        n = next(iter(features.values())).shape[0]
        boxes = _dummy_boxes(NUM_DUMMY_PROPOSALS, *image_size).to(m.device)
        # One image as in OpenMMLab's tools; every image of a batch gets the same boxes.
        x = heads.box_pooler([features[f] for f in heads.box_in_features], [Boxes(boxes)] * n)
        outs.append(heads.box_predictor(heads.box_head(x)))
        if getattr(heads, "mask_on", False):
            mask_boxes = [Boxes(boxes[:NUM_DUMMY_MASK_ROIS])] * n
            x = heads.mask_pooler([features[f] for f in heads.mask_in_features], mask_boxes)
            outs.append(heads.mask_head.layers(x))
        return _flatten(outs)
