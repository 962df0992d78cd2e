"""Semantic segmentation with auxiliary heads and sliding-window inference."""
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, SemanticSegmentor
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

__all__ = ["EncoderDecoderSegmentor"]


@META_ARCH_REGISTRY.register()
class EncoderDecoderSegmentor(SemanticSegmentor):
    """Detectron2's :class:`SemanticSegmentor` (pixels ignored with the head's
    ``ignore_value``, 255 for Cityscapes) plus what the official segmentors have:

    - an optional auxiliary head trained beside the main one (its loss carries its own
      weight, 0.4 for UPerNet's FCN head on res4) and dropped at inference;
    - inference on the whole image, or by a sliding window (for full 1024x2048 Cityscapes
      images with a model trained on 512x1024 crops): overlapping windows are run one by
      one and their logits averaged where they overlap.
    """

    @configurable
    def __init__(self, *, backbone, sem_seg_head, pixel_mean, pixel_std, aux_head=None,
                 size_divisibility=32, test_mode="whole", crop_size=(512, 1024),
                 crop_stride=(341, 683)):
        """
        Args:
            aux_head (nn.Module or None): a head with the main head's interface whose
                losses are added in training.
            size_divisibility (int): images (and windows) are padded to a multiple of it.
            test_mode (str): "whole" or "slide".
            crop_size, crop_stride ((int, int)): window size and step (height, width) for
                "slide".
        """
        super().__init__(backbone=backbone, sem_seg_head=sem_seg_head, pixel_mean=pixel_mean,
                         pixel_std=pixel_std)
        if test_mode not in ("whole", "slide"):
            raise ValueError(f"test_mode must be 'whole' or 'slide', got {test_mode!r}")
        self.aux_head = aux_head
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.test_mode = test_mode
        self.crop_size = tuple(crop_size)
        self.crop_stride = tuple(crop_stride)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        aux = cfg.MODEL.AUX_SEM_SEG_HEAD
        if aux.NAME:
            ret["aux_head"] = SEM_SEG_HEADS_REGISTRY.get(aux.NAME)(
                cfg, ret["backbone"].output_shape())
        inference = cfg.MODEL.SEM_SEG_INFERENCE
        ret.update(test_mode=inference.MODE, crop_size=inference.CROP_SIZE,
                   crop_stride=inference.CROP_STRIDE)
        return ret

    def _logits(self, images):
        """Main-head logits (N, K, H, W) of a padded, normalised batch."""
        return self.sem_seg_head(self.backbone(images), None)[0]

    def forward(self, batched_inputs):
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        if self.training:
            padded = ImageList.from_tensors(images, self.size_divisibility)
            targets = ImageList.from_tensors(
                [x["sem_seg"].to(self.device) for x in batched_inputs],
                self.size_divisibility, self.sem_seg_head.ignore_value).tensor
            features = self.backbone(padded.tensor)
            _, losses = self.sem_seg_head(features, targets)
            if self.aux_head is not None:
                losses.update(self.aux_head(features, targets)[1])
            return losses

        if self.test_mode == "whole":
            padded = ImageList.from_tensors(images, self.size_divisibility)
            logits = self._logits(padded.tensor)
            sizes = padded.image_sizes
        else:
            logits = [self.slide_inference(img) for img in images]
            sizes = [tuple(img.shape[-2:]) for img in images]
        return [
            {"sem_seg": sem_seg_postprocess(
                r, size, x.get("height", size[0]), x.get("width", size[1]))}
            for r, size, x in zip(logits, sizes, batched_inputs)
        ]

    def slide_inference(self, image):
        """Logits (K, H, W) of one normalised image (C, H, W) from overlapping windows."""
        _, h, w = image.shape
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        sh, sw = self.crop_stride
        rows = max(h - ch + sh - 1, 0) // sh + 1
        cols = max(w - cw + sw - 1, 0) // sw + 1
        total = count = None
        for r in range(rows):
            for c in range(cols):
                # Windows end at the border rather than run past it.
                y1 = max(min(r * sh, h - ch), 0)
                x1 = max(min(c * sw, w - cw), 0)
                crop = image[:, y1:y1 + ch, x1:x1 + cw]
                padded = ImageList.from_tensors([crop], self.size_divisibility).tensor
                out = self._logits(padded)[0, :, :ch, :cw]
                if total is None:
                    total = out.new_zeros((out.shape[0], h, w))
                    count = out.new_zeros((1, h, w))
                total[:, y1:y1 + ch, x1:x1 + cw] += out
                count[:, y1:y1 + ch, x1:x1 + cw] += 1
        return total / count

