"""What training and evaluation need, built from a yacs or a LazyConfig config, so that one
training loop (train_net.py) serves both config systems."""
import os
from dataclasses import dataclass, field
from typing import Callable, List

import torch
from detectron2.config import CfgNode, instantiate
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.modeling import build_model
from detectron2.solver import LRMultiplier

from ..data import check_cityscapes_sem_seg, cityscapes_train_augmentations
from ..solver import build_lr_scheduler, build_optimizer

__all__ = ["Components", "build_components", "build_evaluator", "check_dataset", "dataset_names"]


@dataclass
class Components:
    model: torch.nn.Module
    max_iter: int
    output_dir: str
    init_weights: str
    amp: bool
    checkpoint_period: int
    eval_period: int
    log_period: int
    # Built lazily: evaluation alone needs no optimizer or training data.
    optimizer: Callable[[], torch.optim.Optimizer]
    lr_scheduler: Callable[[torch.optim.Optimizer], object]
    train_loader: Callable[[], object]
    # (dataset name, test loader factory, evaluator factory)
    tests: List[tuple] = field(default_factory=list)


def check_dataset(name):
    """Fail early, naming the path and DETECTRON2_DATASETS, when a dataset's files are
    missing (Detectron2 would fail later, deep inside a loader)."""
    if name.startswith("cityscapes_fine_sem_seg_"):
        check_cityscapes_sem_seg(name.rsplit("_", 1)[1])
        return
    meta = MetadataCatalog.get(name)
    for key in ("json_file", "image_root"):
        path = getattr(meta, key, None)
        if path is not None and not os.path.exists(path):
            value = os.environ.get("DETECTRON2_DATASETS")
            env = (f"DETECTRON2_DATASETS={value!r}" if value is not None
                   else "DETECTRON2_DATASETS is not set, so datasets are looked up in ./datasets")
            raise FileNotFoundError(
                f"dataset {name!r}: {key} {path} does not exist ({env}). Put the data there "
                "(see https://detectron2.readthedocs.io/en/latest/tutorials/builtin_datasets.html)"
                " or point DETECTRON2_DATASETS at the folder that holds it."
            )


def build_evaluator(dataset_name, output_dir=None):
    """The evaluator for a dataset's ``evaluator_type``."""
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if kind == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_dir)
    # Detectron2 tags Cityscapes "cityscapes_sem_seg" (cityscapesscripts on labelIds); the
    # seed's mIoU is SemSegEvaluator's on the train ids.
    if kind in ("sem_seg", "cityscapes_sem_seg"):
        return SemSegEvaluator(dataset_name, output_dir=output_dir)
    if kind == "classification":
        from ..evaluation import ClassificationEvaluator

        return ClassificationEvaluator(dataset_name)
    raise ValueError(f"no evaluator for dataset {dataset_name!r} (evaluator_type={kind!r}); "
                     "expected coco, sem_seg, cityscapes_sem_seg or classification")


def _yacs_train_loader(cfg):
    name = cfg.DATASETS.TRAIN[0]
    if name.startswith("cityscapes_fine_sem_seg_"):
        # The seed's pipeline: rescale 0.5-2.0, category-constrained crop, flip, photometric.
        mapper = DatasetMapper(cfg, True,
                               augmentations=cityscapes_train_augmentations(cfg.INPUT.FORMAT))
    elif MetadataCatalog.get(name).get("evaluator_type", None) == "classification":
        from ..data.imagenet import build_classification_train_loader

        return build_classification_train_loader(cfg)
    else:
        mapper = DatasetMapper(cfg, True)
    return build_detection_train_loader(cfg, mapper=mapper)


def _yacs_test_loader(cfg, name):
    if MetadataCatalog.get(name).get("evaluator_type", None) == "classification":
        from ..data.imagenet import build_classification_test_loader

        return build_classification_test_loader(cfg, name)
    return build_detection_test_loader(cfg, name)


def _from_yacs(cfg: CfgNode, output_dir):
    model = build_model(cfg)
    return Components(
        model=model,
        max_iter=cfg.SOLVER.MAX_ITER,
        output_dir=output_dir,
        init_weights=cfg.MODEL.WEIGHTS,
        amp=cfg.SOLVER.AMP.ENABLED,
        checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
        eval_period=cfg.TEST.EVAL_PERIOD,
        log_period=20,
        optimizer=lambda: build_optimizer(cfg, model),  # clips as SOLVER.CLIP_GRADIENTS says
        lr_scheduler=lambda opt: build_lr_scheduler(cfg, opt),
        train_loader=lambda: _yacs_train_loader(cfg),
        tests=[(name, lambda n=name: _yacs_test_loader(cfg, n),
                lambda n=name: build_evaluator(n, os.path.join(output_dir, "inference", n)))
               for name in cfg.DATASETS.TEST],
    )


def _lazy_dataset_names(loader_cfg):
    dataset = loader_cfg.get("dataset", {}) or {}
    names = dataset.get("names", None) or dataset.get("dataset_name", None) or []
    return [names] if isinstance(names, str) else list(names)


def _from_lazy(cfg, output_dir):
    model = instantiate(cfg.model)

    def optimizer():
        cfg.optimizer.params.model = model
        return instantiate(cfg.optimizer)

    train = cfg.train
    tests = []
    if "test" in cfg.dataloader:
        names = _lazy_dataset_names(cfg.dataloader.test)
        tests.append((names[0] if names else "test", lambda: instantiate(cfg.dataloader.test),
                      lambda: instantiate(cfg.dataloader.evaluator)))
    return Components(
        model=model,
        max_iter=train.max_iter,
        output_dir=output_dir,
        init_weights=train.init_checkpoint,
        amp=train.amp.enabled,
        checkpoint_period=train.checkpointer.period,
        eval_period=train.eval_period,
        log_period=train.log_period,
        optimizer=optimizer,
        lr_scheduler=lambda opt: LRMultiplier(opt, instantiate(cfg.lr_multiplier),
                                              train.max_iter),
        train_loader=lambda: instantiate(cfg.dataloader.train),
        tests=tests,
    )


def build_components(cfg, output_dir):
    """Components of a yacs CfgNode or a LazyConfig (OmegaConf) config."""
    return _from_yacs(cfg, output_dir) if isinstance(cfg, CfgNode) else _from_lazy(cfg, output_dir)


def dataset_names(cfg, train=True, test=True) -> List[str]:
    """The datasets a config reads (for the pre-flight check)."""
    names = []
    if isinstance(cfg, CfgNode):
        names += list(cfg.DATASETS.TRAIN) if train else []
        names += list(cfg.DATASETS.TEST) if test else []
    else:
        for split, wanted in (("train", train), ("test", test)):
            if wanted and split in cfg.dataloader:
                names += _lazy_dataset_names(cfg.dataloader[split])
    return names

