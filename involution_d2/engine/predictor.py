"""Inference on single images for both config systems: Detectron2's DefaultPredictor for
yacs configs and its equivalent for LazyConfig files."""
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor

from .components import dataset_names

__all__ = ["LazyPredictor", "build_predictor", "test_metadata"]


class LazyPredictor:
    """DefaultPredictor for a LazyConfig: the test mapper's resize, the model's colour
    order, the weights of ``train.init_checkpoint``; takes a BGR uint8 image."""

    def __init__(self, cfg):
        self.model = instantiate(cfg.model).eval()
        self.model.to(cfg.train.device)
        DetectionCheckpointer(self.model).load(cfg.train.init_checkpoint)
        mapper = cfg.dataloader.test.mapper
        self.aug = T.AugmentationList(instantiate(mapper.get("augmentations", [])))
        self.input_format = mapper.get("image_format", "BGR")

    def __call__(self, original_image):
        with torch.no_grad():
            image = original_image[:, :, ::-1] if self.input_format == "RGB" else original_image
            height, width = image.shape[:2]
            aug_input = T.AugInput(image)
            self.aug(aug_input)
            tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
            return self.model([{"image": tensor, "height": height, "width": width}])[0]


def build_predictor(cfg):
    return DefaultPredictor(cfg) if isinstance(cfg, CfgNode) else LazyPredictor(cfg)


def test_metadata(cfg):
    """Metadata (class names, colours) of the config's first test dataset."""
    names = dataset_names(cfg, train=False)
    return MetadataCatalog.get(names[0] if names else "__unused")
