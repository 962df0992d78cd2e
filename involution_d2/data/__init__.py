"""Cityscapes semantic segmentation data for Detectron2: the dataset, with a clear error when
it is missing, and mmseg's training augmentations."""
from .cityscapes import check_cityscapes_sem_seg, cityscapes_root, cityscapes_sem_seg_dicts
from .transforms import PhotoMetricDistortion, PhotoMetricTransform, cityscapes_train_augmentations

__all__ = [
    "PhotoMetricDistortion",
    "PhotoMetricTransform",
    "check_cityscapes_sem_seg",
    "cityscapes_root",
    "cityscapes_sem_seg_dicts",
    "cityscapes_train_augmentations",
]
