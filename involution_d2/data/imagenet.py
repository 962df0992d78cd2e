"""ImageNet-style classification data for Detectron2: the datasets "imagenet_train" and
"imagenet_val" (``$DETECTRON2_DATASETS/imagenet/{train,val}/<class folder>/<image>``, read
when loaded), the official RedNet pipelines and a dataset mapper.

Class indices are the sorted class-folder names, as mmcls and torchvision's ImageFolder
number them, so that the official classifier's outputs line up.
"""
import math
import os

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image
from torchvision.datasets.folder import find_classes, make_dataset

from .checks import register_dataset_check

__all__ = [
    "CenterCrop",
    "ClassificationDatasetMapper",
    "IMAGENET_SPLITS",
    "RandomResizedCrop",
    "ResizeShorterSide",
    "build_classification_test_loader",
    "build_classification_train_loader",
    "classification_augmentations",
    "imagenet_dicts",
    "imagenet_root",
    "register_imagenet",
]

IMAGENET_SPLITS = {"imagenet_train": "train", "imagenet_val": "val"}
_EXTENSIONS = (".jpeg", ".jpg", ".png")


def imagenet_root():
    """``$DETECTRON2_DATASETS/imagenet`` (the variable defaulting to "datasets", as in
    Detectron2's builtin datasets), read at each call."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
                        "imagenet")


def _not_found(problem, path):
    value = os.environ.get("DETECTRON2_DATASETS")
    env = (f"DETECTRON2_DATASETS={value!r}" if value is not None
           else "DETECTRON2_DATASETS is not set, so it defaults to 'datasets'")
    root = os.path.abspath(imagenet_root())
    return FileNotFoundError(
        f"ImageNet: {problem}: {path}\n"
        f"ImageNet is looked up in $DETECTRON2_DATASETS/imagenet = {root} ({env}).\n"
        f"Expected layout (one folder per class; class index = sorted folder names):\n"
        f"  {root}/train/n01440764/*.JPEG (or .jpg, .png)\n"
        f"  {root}/val/n01440764/*.JPEG\n"
        f"To fix: set DETECTRON2_DATASETS to the folder holding imagenet/, and sort the "
        f"validation images into class folders like the training ones.")


def imagenet_dicts(split, root=None):
    """Dataset dicts ``{"file_name", "image_id", "label"}`` of ``split`` ("train" or "val")
    of an ImageNet-style folder (default: :func:`imagenet_root`)."""
    folder = os.path.join(root if root is not None else imagenet_root(), split)
    if not os.path.isdir(folder):
        raise _not_found("no such folder", folder)
    try:
        _, class_to_idx = find_classes(folder)  # sorted folder names, as torchvision's
    except FileNotFoundError:
        raise _not_found("no class folders in", folder) from None
    samples = make_dataset(folder, class_to_idx, extensions=_EXTENSIONS, allow_empty=True)
    dicts = [{"file_name": path, "image_id": i, "label": label}
             for i, (path, label) in enumerate(samples)]
    if not dicts:
        raise _not_found(f"no {'/'.join(_EXTENSIONS)} images in the class folders of", folder)
    return dicts


def _check_split(split):
    folder = os.path.join(imagenet_root(), split)
    if not os.path.isdir(folder):
        raise _not_found("no such folder", folder)


def register_imagenet():
    """Register "imagenet_train" / "imagenet_val" (done on import of involution_d2.data)."""
    for name, split in IMAGENET_SPLITS.items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda split=split: imagenet_dicts(split))
        # The engine picks ClassificationEvaluator by this.
        MetadataCatalog.get(name).set(evaluator_type="classification")
        register_dataset_check(name, lambda split=split: _check_split(split))


class ResizeShorterSide(T.Augmentation):
    """Resize the shorter side to ``size``, the longer one to ``int(size * long / short)``
    (truncated, as mmcls' Resize with size (256, -1) computes it)."""

    def __init__(self, size, interp=Image.BILINEAR):
        super().__init__()
        self.size, self.interp = size, interp

    def get_transform(self, image):
        h, w = image.shape[:2]
        if w < h:
            new_h, new_w = int(self.size * h / w), self.size
        else:
            new_h, new_w = self.size, int(self.size * w / h)
        return T.ResizeTransform(h, w, new_h, new_w, self.interp)


class CenterCrop(T.Augmentation):
    """Crop ``size`` x ``size`` from the center, the offset rounded as mmcls rounds it."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def get_transform(self, image):
        h, w = image.shape[:2]
        ch, cw = min(self.size, h), min(self.size, w)
        return T.CropTransform(int(round((w - cw) / 2)), int(round((h - ch) / 2)), cw, ch)


class RandomResizedCrop(T.Augmentation):
    """A window of random area (``scale`` of the image) and aspect ratio (``ratio``,
    log-uniform), resized to ``size`` x ``size``; after 10 misses, the largest central
    window within ``ratio`` (the usual ImageNet training crop)."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interp=Image.BILINEAR):
        super().__init__()
        self.size, self.scale, self.ratio, self.interp = size, scale, ratio, interp

    def _window(self, h, w):
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * np.random.uniform(*self.scale)
            aspect = math.exp(np.random.uniform(*log_ratio))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return np.random.randint(0, w - cw + 1), np.random.randint(0, h - ch + 1), cw, ch
        aspect = w / h
        if aspect < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif aspect > self.ratio[1]:
            cw, ch = int(round(h * self.ratio[1])), h
        else:
            cw, ch = w, h
        return (w - cw) // 2, (h - ch) // 2, cw, ch

    def get_transform(self, image):
        x0, y0, cw, ch = self._window(*image.shape[:2])
        return T.TransformList([
            T.CropTransform(x0, y0, cw, ch),
            T.ResizeTransform(ch, cw, self.size, self.size, self.interp),
        ])


def classification_augmentations(is_train, crop=224, resize=256):
    """The official RedNet pipelines: training, a random-resized crop and a horizontal flip;
    test, the shorter side to ``resize`` then a central ``crop``."""
    if is_train:
        return [RandomResizedCrop(crop), T.RandomFlip(horizontal=True)]
    return [ResizeShorterSide(resize), CenterCrop(crop)]


class ClassificationDatasetMapper:
    """Dataset dict (``file_name``, ``label``) -> model input: ``image`` (C, H, W) uint8 in
    ``image_format`` after the augmentations, and ``label``."""

    @configurable
    def __init__(self, is_train, *, augmentations, image_format="RGB"):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "augmentations": classification_augmentations(
                is_train, cfg.INPUT.CLASSIFICATION_CROP, cfg.INPUT.CLASSIFICATION_RESIZE_TEST),
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict):
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return {"image": tensor, "label": dataset_dict["label"],
                "file_name": dataset_dict["file_name"], "image_id": dataset_dict["image_id"]}


def _dataset_dicts(cfg, names):
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        raise ValueError(
            "DATALOADER.FILTER_EMPTY_ANNOTATIONS is True, but classification datasets have no "
            "annotations to filter images by: set it to False (Base-RedNet-ImageNet.yaml does)")
    return get_detection_dataset_dicts(names, filter_empty=False)


def build_classification_train_loader(cfg):
    """Detectron2's training loader over ``cfg.DATASETS.TRAIN`` with the classification
    mapper, ``SOLVER.IMS_PER_BATCH`` images a batch, ``DATALOADER.NUM_WORKERS`` and
    ``DATALOADER.ASPECT_RATIO_GROUPING`` (which changes nothing: crops are square);
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` must be False (there are no annotations)."""
    return build_detection_train_loader(
        dataset=_dataset_dicts(cfg, cfg.DATASETS.TRAIN),
        mapper=ClassificationDatasetMapper(cfg, is_train=True),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_classification_test_loader(cfg, dataset_name):
    """Detectron2's inference loader over ``dataset_name`` with the classification mapper,
    ``TEST.IMS_PER_BATCH`` images a batch."""
    return build_detection_test_loader(
        dataset=_dataset_dicts(cfg, [dataset_name]),
        mapper=ClassificationDatasetMapper(cfg, is_train=False),
        batch_size=cfg.TEST.IMS_PER_BATCH,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
