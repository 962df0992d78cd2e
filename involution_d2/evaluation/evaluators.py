"""The evaluator of a dataset, chosen by its ``evaluator_type`` (as Detectron2's
tools/train_net.py chooses it), never by its name."""
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator

from .classification import ClassificationEvaluator

__all__ = ["EVALUATORS", "build_evaluator", "evaluator_class"]

# evaluator_type (dataset metadata) -> evaluator. Detectron2 tags Cityscapes
# "cityscapes_sem_seg" (cityscapesscripts on labelIds); the official mIoU is SemSegEvaluator's
# on the train ids.
EVALUATORS = {
    "coco": COCOEvaluator,
    "sem_seg": SemSegEvaluator,
    "cityscapes_sem_seg": SemSegEvaluator,
    "classification": ClassificationEvaluator,
}


def evaluator_class(dataset_name):
    """The evaluator class for a dataset's ``evaluator_type`` (as Detectron2's
    tools/train_net.py chooses it)."""
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if kind not in EVALUATORS:
        raise ValueError(f"no evaluator for dataset {dataset_name!r} (evaluator_type={kind!r});"
                         f" expected one of {', '.join(EVALUATORS)}")
    return EVALUATORS[kind]


def build_evaluator(dataset_name, output_dir=None):
    """The evaluator of :func:`evaluator_class`, writing to ``output_dir``."""
    cls = evaluator_class(dataset_name)
    if cls is ClassificationEvaluator:
        return cls(dataset_name)  # keeps nothing on disk
    return cls(dataset_name, output_dir=output_dir)
