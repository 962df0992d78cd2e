"""Inference on single images for both config systems: Detectron2's DefaultPredictor,
loading its weights through the project's checkpointer (which never runs code)."""
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from ..checkpoint.detection_checkpoint import AtomicCheckpointer
from .config_reader import read_config

__all__ = ["Predictor", "build_predictor", "test_metadata"]


class Predictor:
    """Detectron2's DefaultPredictor for a yacs config or a LazyConfig: the augmentations of
    the config's test loader, the model's colour order, the weights of ``MODEL.WEIGHTS`` /
    ``train.init_checkpoint`` (none: the model keeps its initialisation); takes a BGR uint8
    image."""

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
        config = read_config(cfg)
        augmentations, input_format = config.test_input()
        return {
            "model": config.build_model(),
            "weights": config.weights,
            "augmentations": augmentations,
            "input_format": input_format,
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
    names = read_config(cfg).dataset_names(train=False)
    return MetadataCatalog.get(names[0] if names else "__unused")
