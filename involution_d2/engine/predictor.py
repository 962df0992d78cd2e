"""Inference on single images for both config systems: Detectron2's DefaultPredictor,
loading its weights through the project's checkpointer (which never runs code)."""
import torch
from detectron2.config import CfgNode, configurable, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .checkpointer import AtomicCheckpointer
from .components import dataset_names

__all__ = ["Predictor", "build_predictor", "test_metadata"]


class Predictor:
    """Detectron2's DefaultPredictor for a yacs config or a LazyConfig: the test resize,
    the model's colour order, the weights of ``MODEL.WEIGHTS`` / ``train.init_checkpoint``
    (none: the model keeps its initialisation); takes a BGR uint8 image."""

    @configurable
    def __init__(self, *, model, weights, augmentations, input_format):
        self.model = model.eval()
        if weights:
            AtomicCheckpointer(self.model).load(weights)
        self.aug = T.AugmentationList(augmentations)
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input format {input_format!r}: expected RGB or BGR")
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        if isinstance(cfg, CfgNode):  # as DefaultPredictor
            return {
                "model": build_model(cfg),
                "weights": cfg.MODEL.WEIGHTS,
                "augmentations": [T.ResizeShortestEdge(
                    [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)],
                "input_format": cfg.INPUT.FORMAT,
            }
        mapper = cfg.dataloader.test.mapper
        return {
            "model": instantiate(cfg.model).to(cfg.train.device),
            "weights": cfg.train.init_checkpoint,
            "augmentations": instantiate(mapper.get("augmentations", [])),
            "input_format": mapper.get("image_format", "BGR"),
        }

    def __call__(self, original_image):
        with torch.no_grad():
            image = original_image[:, :, ::-1] if self.input_format == "RGB" else original_image
            height, width = image.shape[:2]
            aug_input = T.AugInput(image)
            self.aug(aug_input)
            tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
            return self.model([{"image": tensor, "height": height, "width": width}])[0]


def build_predictor(cfg):
    return Predictor(cfg)


def test_metadata(cfg):
    """Metadata (class names, colours) of the config's first test dataset."""
    names = dataset_names(cfg, train=False)
    return MetadataCatalog.get(names[0] if names else "__unused")
