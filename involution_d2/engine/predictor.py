"""Inference on single images: Detectron2's DefaultPredictor, built from either config system
with the weights loaded through the project's checkpointer (which never runs code)."""
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor

from ..checkpoint import AtomicCheckpointer
from .config_reader import read_config

__all__ = ["Predictor", "build_predictor", "test_metadata"]


class _TestAugmentations(T.Augmentation):
    """The config's test augmentations as the one augmentation DefaultPredictor applies."""

    def __init__(self, augmentations):
        super().__init__()
        self.augmentations = T.AugmentationList(augmentations)

    def get_transform(self, image):
        return self.augmentations(T.AugInput(image))


class Predictor(DefaultPredictor):
    """DefaultPredictor (its ``__call__``: a BGR uint8 image in, the model's outputs for it
    out), built differently: from a yacs config or a LazyConfig; with the augmentations of
    the config's test pipeline (Cityscapes and classification resize otherwise than
    detection); with ``MODEL.WEIGHTS`` / ``train.init_checkpoint`` loaded by the safe
    checkpointer (none: the model keeps its initialisation)."""

    def __init__(self, cfg):
        config = read_config(cfg)
        # DefaultPredictor.__call__ reads MODEL.DEVICE, which a LazyConfig names train.device.
        self.cfg = CfgNode({"MODEL": {"DEVICE": config.device}}) if config.is_lazy else cfg
        self.model = config.build_model().eval()
        if config.weights:
            AtomicCheckpointer(self.model).load(config.weights)
        self.metadata = test_metadata(cfg)
        augmentations, self.input_format = config.test_input()
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"input format {self.input_format!r}: expected RGB or BGR")
        self.aug = _TestAugmentations(augmentations)


def build_predictor(cfg):
    return Predictor(cfg)


def test_metadata(cfg):
    """Metadata (class names, colours) of the config's first test dataset."""
    names = read_config(cfg).dataset_names(train=False)
    return MetadataCatalog.get(names[0] if names else "__unused")
