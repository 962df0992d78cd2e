from .classifier import ImageNetClassifier
from .semantic_seg import EncoderDecoderSegmentor

__all__ = ["EncoderDecoderSegmentor", "ImageNetClassifier"]
