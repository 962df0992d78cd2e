"""Datasets for Detectron2: Cityscapes semantic segmentation (with a clear error when it is
missing, and mmseg's training augmentations) and the built-in shapes datasets, registered on
import (generated on first use)."""
from .checks import check_dataset, register_dataset_check
from .cityscapes import (
    check_cityscapes_sem_seg,
    cityscapes_root,
    cityscapes_sem_seg_dicts,
    register_cityscapes_checks,
)
from .transforms import PhotoMetricDistortion, PhotoMetricTransform, cityscapes_train_augmentations

__all__ = [
    "PhotoMetricDistortion",
    "PhotoMetricTransform",
    "check_cityscapes_sem_seg",
    "check_dataset",
    "register_dataset_check",
    "register_cityscapes_checks",
    "cityscapes_root",
    "cityscapes_sem_seg_dicts",
    "cityscapes_train_augmentations",
]

from .shapes import SHAPE_CLASSES, generate_shapes, register_shapes, shapes_root  # noqa: E402

register_shapes()
register_cityscapes_checks()
__all__ += ["SHAPE_CLASSES", "generate_shapes", "register_shapes", "shapes_root"]

from .imagenet import (  # noqa: E402
    CenterCrop,
    ClassificationDatasetMapper,
    RandomResizedCrop,
    ResizeShorterSide,
    build_classification_test_loader,
    build_classification_train_loader,
    classification_augmentations,
    imagenet_dicts,
    imagenet_root,
    register_imagenet,
)

register_imagenet()
__all__ += ["CenterCrop", "ClassificationDatasetMapper", "RandomResizedCrop", "ResizeShorterSide",
            "build_classification_test_loader", "build_classification_train_loader",
            "classification_augmentations", "imagenet_dicts", "imagenet_root", "register_imagenet"]

from .pipelines import (  # noqa: E402
    DATA_PIPELINE_REGISTRY,
    CityscapesSemSegPipeline,
    ClassificationPipeline,
    Detectron2Pipeline,
    get_pipeline,
)

__all__ += ["DATA_PIPELINE_REGISTRY", "CityscapesSemSegPipeline", "ClassificationPipeline",
            "Detectron2Pipeline", "get_pipeline"]
