"""Evaluators: Detectron2's, chosen by each dataset's ``evaluator_type``, and those of the
models that Detectron2 has none for (ImageNet classification)."""
from .classification import ClassificationEvaluator
from .evaluators import EVALUATORS, build_evaluator, evaluator_class

__all__ = ["ClassificationEvaluator", "EVALUATORS", "build_evaluator", "evaluator_class"]
