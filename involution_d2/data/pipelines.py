"""Input pipelines of yacs configs, chosen by name (``DATALOADER.PIPELINE``) as Detectron2
chooses models (``MODEL.META_ARCHITECTURE``): the config says how its datasets become model
inputs, so that the engine never looks at dataset names. LazyConfigs spell the same
pipelines out in ``dataloader.train`` / ``dataloader.test``."""
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data import detection_utils as utils
from detectron2.utils.registry import Registry

from .imagenet import (
    ClassificationDatasetMapper,
    build_classification_test_loader,
    build_classification_train_loader,
    classification_augmentations,
)
from .transforms import cityscapes_train_augmentations

__all__ = [
    "DATA_PIPELINE_REGISTRY",
    "CityscapesSemSegPipeline",
    "ClassificationPipeline",
    "Detectron2Pipeline",
    "get_pipeline",
]

DATA_PIPELINE_REGISTRY = Registry("DATA_PIPELINE")
DATA_PIPELINE_REGISTRY.__doc__ = """
Input pipelines of yacs configs, named by ``cfg.DATALOADER.PIPELINE``: classes with the
class methods ``train_augmentations(cfg)``, ``test_augmentations(cfg)``,
``build_mapper(cfg, is_train)``, ``build_train_loader(cfg)`` and
``build_test_loader(cfg, dataset_name)``.
"""


def get_pipeline(cfg):
    """The pipeline class that ``cfg.DATALOADER.PIPELINE`` names."""
    return DATA_PIPELINE_REGISTRY.get(cfg.DATALOADER.PIPELINE)


@DATA_PIPELINE_REGISTRY.register()
class Detectron2Pipeline:
    """Detectron2's own (what its DefaultTrainer does): DatasetMapper with the INPUT resize,
    flip and crop keys; test batches of ``TEST.IMS_PER_BATCH`` images."""

    @classmethod
    def train_augmentations(cls, cfg):
        return DatasetMapper.from_config(cfg, is_train=True)["augmentations"]

    @classmethod
    def test_augmentations(cls, cfg):
        return utils.build_augmentation(cfg, is_train=False)

    @classmethod
    def build_mapper(cls, cfg, is_train):
        augmentations = (cls.train_augmentations if is_train else cls.test_augmentations)(cfg)
        return DatasetMapper(cfg, is_train=is_train, augmentations=augmentations)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=cls.build_mapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=cls.build_mapper(cfg, False),
                                           batch_size=cfg.TEST.IMS_PER_BATCH)


@DATA_PIPELINE_REGISTRY.register()
class CityscapesSemSegPipeline(Detectron2Pipeline):
    """The official (mmseg) Cityscapes training pipeline: rescale by a factor in
    ``INPUT.RESIZE_SCALE.RANGE`` of ``INPUT.RESIZE_SCALE.BASE_SIZE``, crop ``INPUT.CROP.SIZE``
    (when ``INPUT.CROP.ENABLED``) with at most ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`` of one
    class, flip, photometric distortion. Test: Detectron2's resize (``INPUT.MIN_SIZE_TEST``,
    ``INPUT.MAX_SIZE_TEST``), which is mmseg's keep-ratio resize to 2048x1024."""

    @classmethod
    def train_augmentations(cls, cfg):
        crop = cfg.INPUT.CROP
        return cityscapes_train_augmentations(
            cfg.INPUT.FORMAT,
            crop_size=tuple(crop.SIZE) if crop.ENABLED else None,
            scale_range=tuple(cfg.INPUT.RESIZE_SCALE.RANGE),
            base_size=tuple(cfg.INPUT.RESIZE_SCALE.BASE_SIZE),
            crop_type=crop.TYPE,
            single_category_max_area=crop.SINGLE_CATEGORY_MAX_AREA,
            ignored_category=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        )


@DATA_PIPELINE_REGISTRY.register()
class ClassificationPipeline:
    """The official RedNet ImageNet pipeline (ClassificationDatasetMapper): random-resized
    ``INPUT.CLASSIFICATION_CROP`` crops and flips; test, the shorter side to
    ``INPUT.CLASSIFICATION_RESIZE_TEST``, then a central crop."""

    @classmethod
    def train_augmentations(cls, cfg):
        return classification_augmentations(True, cfg.INPUT.CLASSIFICATION_CROP,
                                            cfg.INPUT.CLASSIFICATION_RESIZE_TEST)

    @classmethod
    def test_augmentations(cls, cfg):
        return classification_augmentations(False, cfg.INPUT.CLASSIFICATION_CROP,
                                            cfg.INPUT.CLASSIFICATION_RESIZE_TEST)

    @classmethod
    def build_mapper(cls, cfg, is_train):
        return ClassificationDatasetMapper(cfg, is_train=is_train)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_classification_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_classification_test_loader(cfg, dataset_name)
