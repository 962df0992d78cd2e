"""Training augmentations of OpenMMLab's Cityscapes recipe, as Detectron2 augmentations."""
import cv2
import numpy as np
from detectron2.data import transforms as T

# OpenCV's 8-bit hue unit (mmseg's hue_delta): half a degree, where float images use degrees.
_DEGREES_PER_HUE_UNIT = 2.0


class PhotoMetricTransform(T.Transform):
    """Brightness shift, contrast factor, saturation factor and hue shift (OpenCV units) of a
    uint8 RGB or BGR image, in mmseg's order; labels, boxes and coordinates are untouched.

    Computed in float and rounded once at the end, where mmseg truncates to uint8 after each
    step; the results differ by about one grey level, and an identity adjustment is lossless.
    """

    def __init__(self, brightness=0.0, contrast=1.0, saturation=1.0, hue=0,
                 contrast_last=False, image_format="RGB"):
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}")
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 image, got {img.dtype} {img.shape}")
        out = img.astype(np.float32)
        if self.brightness:
            out = np.clip(out + self.brightness, 0, 255)
        if not self.contrast_last:
            out = self._contrast(out)
        if self.saturation != 1 or self.hue:
            # One HSV round trip does mmseg's two (saturation, then hue): in float, the trip
            # back to RGB between them changes nothing.
            to_hsv, from_hsv = ((cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
                                if self.image_format == "RGB"
                                else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR))
            # On float images OpenCV gives H in degrees and S in [0, 1].
            hsv = cv2.cvtColor(out, to_hsv)
            hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 1)
            hsv[..., 0] = (hsv[..., 0] + self.hue * _DEGREES_PER_HUE_UNIT) % 360
            out = np.clip(cv2.cvtColor(hsv, from_hsv), 0, 255)
        if self.contrast_last:
            out = self._contrast(out)
        return np.rint(out).astype(np.uint8)

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self):
        return T.NoOpTransform()

    def _contrast(self, img):
        # mmseg's contrast scales the values themselves, not their distance to the mean.
        return np.clip(img * self.contrast, 0, 255) if self.contrast != 1 else img


class PhotoMetricDistortion(T.Augmentation):
    """mmseg's ``PhotoMetricDistortion``: each of a brightness shift in
    [-brightness_delta, brightness_delta], a contrast factor in ``contrast_range``, a saturation
    factor in ``saturation_range`` and a hue shift in [-hue_delta, hue_delta) (OpenCV's 0..180
    units), with probability ``prob``; contrast comes right after brightness or last, at
    random. ``image_format`` says which channel is red. Acts on the image only.
    """

    def __init__(self, brightness_delta=32, contrast_range=(0.5, 1.5),
                 saturation_range=(0.5, 1.5), hue_delta=18, image_format="RGB", prob=0.5):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}")
        self._init(locals())

    def get_transform(self, image):
        brightness, contrast, saturation, hue = 0.0, 1.0, 1.0, 0
        if self._rand_range() < self.prob:
            brightness = self._rand_range(-self.brightness_delta, self.brightness_delta)
        contrast_last = self._rand_range() < 0.5
        if self._rand_range() < self.prob:
            contrast = self._rand_range(*self.contrast_range)
        if self._rand_range() < self.prob:
            saturation = self._rand_range(*self.saturation_range)
        if self._rand_range() < self.prob and self.hue_delta > 0:
            # An integer, and the upper end excluded, as mmseg's np.random.randint draws it.
            hue = int(np.random.randint(-self.hue_delta, self.hue_delta))
        return PhotoMetricTransform(float(brightness), float(contrast), float(saturation), hue,
                                    bool(contrast_last), self.image_format)


def cityscapes_train_augmentations(image_format="RGB", crop_size=(512, 1024),
                                   scale_range=(0.5, 2.0), base_size=(1024, 2048), *,
                                   crop_type="absolute", single_category_max_area=0.75,
                                   ignored_category=255):
    """mmseg's Cityscapes training pipeline: rescale so the image fits ``base_size`` (H, W)
    times a factor in ``scale_range``, keeping its aspect ratio; crop ``crop_size`` (H, W;
    None: no crop), trying up to 10 windows for one where no class covers
    ``single_category_max_area`` or more of the pixels not labelled ``ignored_category``
    (mmseg's cat_max_ratio); flip horizontally with probability 0.5; distort colours.

    mmseg then pads the crop to ``crop_size`` (image 0, label 255). Detectron2's crop is
    min(crop_size, image size) and never pads; with these defaults a 1024x2048 Cityscapes
    image is rescaled to at least 512x1024, so every crop is full-size anyway. A smaller
    image (or a scale below 0.5) gives a smaller crop, which Detectron2's SemanticSegmentor
    pads when it batches: to the largest image, rounded up to the size divisibility, with 0
    after normalization and the ignore label.
    """
    crop = ([T.RandomCrop_CategoryAreaConstraint(
        crop_type, tuple(crop_size), single_category_max_area=single_category_max_area,
        ignored_category=ignored_category)] if crop_size is not None else [])
    return [
        T.ResizeScale(scale_range[0], scale_range[1], base_size[0], base_size[1]),
        *crop,
        T.RandomFlip(),
        PhotoMetricDistortion(image_format=image_format),
    ]
