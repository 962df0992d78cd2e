"""Training augmentations of OpenMMLab's Cityscapes recipe, as Detectron2 augmentations."""
import numpy as np
from detectron2.data import transforms as T

# OpenCV's 8-bit hue unit: half a degree, so a full turn is 180 and a sector of the hexcone 30.
_HUE_TURN = 180.0
_HUE_SECTOR = _HUE_TURN / 6


def _rgb_to_hsv(rgb):
    """float RGB in [0, 255] -> H in [0, 180) (OpenCV's 8-bit units), S and V in [0, 255]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    spread = v - rgb.min(axis=-1)
    s = np.where(v > 0, 255 * spread / np.where(v > 0, v, 1), 0)
    safe = np.where(spread > 0, spread, 1)
    sector = np.where(v == r, (g - b) / safe,
                      np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = np.where(spread > 0, (sector * _HUE_SECTOR) % _HUE_TURN, 0)
    return np.stack([h, s, v], axis=-1).astype(np.float32)


def _hsv_to_rgb(hsv):
    """The inverse of ``_rgb_to_hsv``."""
    h, s, v = hsv[..., 0], hsv[..., 1] / 255, hsv[..., 2]
    sector = h / _HUE_SECTOR
    i = np.floor(sector).astype(np.int64) % 6
    f = sector - np.floor(sector)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1).astype(np.float32)


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
            rgb = out if self.image_format == "RGB" else out[..., ::-1]
            hsv = _rgb_to_hsv(rgb)
            hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 255)
            hsv[..., 0] = (hsv[..., 0] + self.hue) % _HUE_TURN
            rgb = np.clip(_hsv_to_rgb(hsv), 0, 255)
            out = rgb if self.image_format == "RGB" else rgb[..., ::-1]
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
                                   scale_range=(0.5, 2.0), base_size=(1024, 2048)):
    """mmseg's Cityscapes training pipeline: rescale so the image fits ``base_size`` (H, W)
    times a factor in ``scale_range``, keeping its aspect ratio; crop ``crop_size`` (H, W),
    trying up to 10 windows for one where no class covers 75% or more of the non-ignored
    pixels (mmseg's cat_max_ratio); flip horizontally with probability 0.5; distort colours.

    mmseg then pads the crop to ``crop_size`` (image 0, label 255). Detectron2's crop is
    min(crop_size, image size) and never pads; with these defaults a 1024x2048 Cityscapes
    image is rescaled to at least 512x1024, so every crop is full-size anyway. A smaller
    image (or a scale below 0.5) gives a smaller crop, which Detectron2's SemanticSegmentor
    pads when it batches: to the largest image, rounded up to the size divisibility, with 0
    after normalization and the ignore label.
    """
    return [
        T.ResizeScale(scale_range[0], scale_range[1], base_size[0], base_size[1]),
        T.RandomCrop_CategoryAreaConstraint("absolute", crop_size, single_category_max_area=0.75,
                                            ignored_category=255),
        T.RandomFlip(),
        PhotoMetricDistortion(image_format=image_format),
    ]
