"""Detectron2 evaluators of the models that Detectron2 has none for."""
from .classification import ClassificationEvaluator

__all__ = ["ClassificationEvaluator"]
