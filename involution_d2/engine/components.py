"""The one adapter between the two Detectron2 config systems and the engine: a yacs CfgNode or
a LazyConfig is read here, and only here, into what training, evaluation and inference need,
honouring the options that Detectron2's own trainers honour (``DefaultTrainer`` for yacs,
``tools/lazyconfig_train_net.py`` for LazyConfigs): DDP options, checkpointer options, every
test set, log period, AMP, gradient clipping (and for yacs, PreciseBN and
``SOLVER.REFERENCE_WORLD_SIZE``). Loaders come from the config (yacs:
``DATALOADER.PIPELINE``; LazyConfig: ``dataloader``), evaluators from the datasets'
``evaluator_type``, never from dataset names."""
import copy
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch
from detectron2.config import CfgNode, instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.modeling import build_model
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from omegaconf import OmegaConf

from ..data import check_dataset, get_pipeline
from ..evaluation import ClassificationEvaluator
from ..solver import build_lr_scheduler, build_optimizer
from .checkpointer import AtomicCheckpointer

__all__ = [
    "Components",
    "ConfigReader",
    "TestSet",
    "build_components",
    "build_evaluator",
    "build_model_from_config",
    "evaluator_class",
    "check_dataset",
    "config_device",
    "config_weights",
    "dataset_names",
    "read_config",
]

# DefaultTrainer's fixed choices, for yacs configs (which have no keys for them).
_YACS_DDP = {"broadcast_buffers": False}
_YACS_LOG_PERIOD = 20


@dataclass
class TestSet:
    """One test set: its name, and factories of its loader and evaluator."""

    name: str
    loader: Callable[[], object]
    evaluator: Callable[[], object]


@dataclass
class Components:
    """What train_net.py needs, from either config system."""

    model: torch.nn.Module
    device: str
    output_dir: str
    init_weights: str
    max_iter: int
    amp: bool
    # keyword arguments of Detectron2's create_ddp_model / DistributedDataParallel
    ddp: Dict[str, object]
    # keyword arguments of Detectron2's PeriodicCheckpointer (period, max_to_keep, ...)
    checkpointer: Dict[str, object]
    eval_period: int
    log_period: int
    # Built lazily: evaluation alone needs no optimizer or training data. The optimizer
    # clips gradients as the config says (SOLVER.CLIP_GRADIENTS / its LazyCall).
    optimizer: Callable[[], torch.optim.Optimizer]
    lr_scheduler: Callable[[torch.optim.Optimizer], object]
    train_loader: Callable[[], object]
    train_datasets: List[str] = field(default_factory=list)
    tests: List[TestSet] = field(default_factory=list)
    # PreciseBN before each evaluation (yacs TEST.PRECISE_BN): iterations (0: none) and a
    # factory of the training loader it reads.
    precise_bn_iters: int = 0
    precise_bn_loader: Callable[[], object] = None


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


class ConfigReader:
    """What the engine reads from a config; :func:`read_config` picks the subclass of the
    config's system."""

    def __init__(self, cfg):
        self.cfg = cfg

    device: str
    weights: str
    output_dir: str

    def build_model(self) -> torch.nn.Module:
        """The model, on the config's device."""
        raise NotImplementedError

    def dataset_names(self, train=True, test=True) -> List[str]:
        raise NotImplementedError

    def test_input(self):
        """(augmentations, image format) of the test pipeline, for single-image inference."""
        raise NotImplementedError

    def components(self) -> Components:
        raise NotImplementedError


class _YacsReader(ConfigReader):
    """As Detectron2's DefaultTrainer reads a yacs config."""

    @property
    def device(self):
        return self.cfg.MODEL.DEVICE

    @property
    def weights(self):
        return self.cfg.MODEL.WEIGHTS

    @property
    def output_dir(self):
        return self.cfg.OUTPUT_DIR

    def build_model(self):
        return build_model(self.cfg)  # on MODEL.DEVICE

    def dataset_names(self, train=True, test=True):
        cfg = self.cfg
        return list(cfg.DATASETS.TRAIN) * train + list(cfg.DATASETS.TEST) * test

    def test_input(self):
        return get_pipeline(self.cfg).test_augmentations(self.cfg), self.cfg.INPUT.FORMAT

    def components(self):
        # SOLVER.REFERENCE_WORLD_SIZE: batch size, LR and schedule scaled to the world size.
        cfg = DefaultTrainer.auto_scale_workers(self.cfg, comm.get_world_size())
        pipeline = get_pipeline(cfg)
        model = self.build_model()
        precise_bn = cfg.clone()
        precise_bn.defrost()
        precise_bn.DATALOADER.NUM_WORKERS = 0  # as DefaultTrainer: less memory and time
        return Components(
            model=model,
            device=self.device,
            output_dir=self.output_dir,
            init_weights=self.weights,
            max_iter=cfg.SOLVER.MAX_ITER,
            amp=cfg.SOLVER.AMP.ENABLED,
            ddp=dict(_YACS_DDP),
            checkpointer={"period": cfg.SOLVER.CHECKPOINT_PERIOD},
            eval_period=cfg.TEST.EVAL_PERIOD,
            log_period=_YACS_LOG_PERIOD,
            optimizer=lambda: build_optimizer(cfg, model),  # SOLVER.CLIP_GRADIENTS
            lr_scheduler=lambda opt: build_lr_scheduler(cfg, opt),
            train_loader=lambda: pipeline.build_train_loader(cfg),
            train_datasets=list(cfg.DATASETS.TRAIN),
            # One loader and evaluator per test set, as DefaultTrainer.test.
            tests=[TestSet(name, lambda n=name: pipeline.build_test_loader(cfg, n),
                           lambda n=name: build_evaluator(
                               n, os.path.join(self.output_dir, "inference", n)))
                   for name in cfg.DATASETS.TEST],
            precise_bn_iters=cfg.TEST.PRECISE_BN.NUM_ITER * cfg.TEST.PRECISE_BN.ENABLED,
            precise_bn_loader=lambda: pipeline.build_train_loader(precise_bn),
        )


def _lazy_dataset_names(loader_cfg):
    """The dataset names of a LazyConfig loader: the ``names`` of Detectron2's
    get_detection_dataset_dicts, or the ``dataset_name`` of a dataset function."""
    dataset = loader_cfg.get("dataset", {}) or {}
    for key in ("names", "dataset_name"):
        names = dataset.get(key, None)
        if names:
            return key, [names] if isinstance(names, str) else list(names)
    return None, []


class _LazyReader(ConfigReader):
    """As Detectron2's tools/lazyconfig_train_net.py reads a LazyConfig."""

    @property
    def device(self):
        return self.cfg.train.device

    @property
    def weights(self):
        return self.cfg.train.init_checkpoint

    @property
    def output_dir(self):
        return self.cfg.train.output_dir

    def build_model(self):
        return instantiate(self.cfg.model).to(self.device)

    def dataset_names(self, train=True, test=True):
        names = []
        for split, wanted in (("train", train), ("test", test)):
            if wanted and split in self.cfg.dataloader:
                names += _lazy_dataset_names(self.cfg.dataloader[split])[1]
        return names

    def test_input(self):
        mapper = self.cfg.dataloader.test.mapper
        return instantiate(mapper.get("augmentations", [])), mapper.get("image_format", "BGR")

    def tests(self):
        """dataloader.test with dataloader.evaluator, as lazyconfig_train_net.py's do_test;
        when the test loader reads several datasets, one loader and evaluator per dataset,
        as Detectron2 reports each dataset on its own (yacs DATASETS.TEST)."""
        dataloader = self.cfg.dataloader
        if "test" not in dataloader or "evaluator" not in dataloader:
            return []
        key, names = _lazy_dataset_names(dataloader.test)
        if len(names) <= 1:
            return [TestSet(names[0] if names else "test",
                            lambda: instantiate(dataloader.test),
                            lambda: instantiate(dataloader.evaluator))]
        tests = []
        for name in names:
            loader, evaluator = copy.deepcopy(dataloader.test), copy.deepcopy(dataloader.evaluator)
            loader.dataset[key] = name
            if "dataset_name" in evaluator:
                evaluator.dataset_name = name
            if evaluator.get("output_dir", None):
                evaluator.output_dir = os.path.join(evaluator.output_dir, name)
            tests.append(TestSet(name, lambda c=loader: instantiate(c),
                                 lambda c=evaluator: instantiate(c)))
        return tests

    def components(self):
        cfg, train = self.cfg, self.cfg.train
        model = self.build_model()

        def optimizer():
            cfg.optimizer.params.model = model
            return instantiate(cfg.optimizer)  # clips if its LazyCall does

        def options(node):
            return OmegaConf.to_container(node, resolve=True) if node is not None else {}

        return Components(
            model=model,
            device=self.device,
            output_dir=self.output_dir,
            init_weights=self.weights,
            max_iter=train.max_iter,
            amp=train.amp.enabled,
            ddp=options(train.get("ddp", None)),
            checkpointer=options(train.checkpointer),
            eval_period=train.eval_period,
            log_period=train.log_period,
            optimizer=optimizer,
            lr_scheduler=lambda opt: LRMultiplier(opt, instantiate(cfg.lr_multiplier),
                                                  train.max_iter),
            train_loader=lambda: instantiate(cfg.dataloader.train),
            train_datasets=self.dataset_names(test=False),
            tests=self.tests(),
        )


def read_config(cfg) -> ConfigReader:
    """The reader of a yacs CfgNode or a LazyConfig (the one place that tells them apart)."""
    return _YacsReader(cfg) if isinstance(cfg, CfgNode) else _LazyReader(cfg)


def build_components(cfg) -> Components:
    """Components of a yacs CfgNode or a LazyConfig (OmegaConf) config."""
    return read_config(cfg).components()


def build_model_from_config(cfg):
    """The model of a yacs or LazyConfig config, on the config's device."""
    return read_config(cfg).build_model()


def build_model_with_weights(cfg, weights=None):
    """The config's model with ``weights`` loaded (None: the config's ``MODEL.WEIGHTS`` /
    ``train.init_checkpoint``; empty: none), through the checkpointer that never runs code
    from a file: what every tool that loads a checkpoint uses."""
    model = build_model_from_config(cfg)
    weights = config_weights(cfg) if weights is None else weights
    if weights:
        AtomicCheckpointer(model).load(weights)
    return model


def config_device(cfg):
    return read_config(cfg).device


def config_weights(cfg):
    """The weights a config loads (``MODEL.WEIGHTS`` / ``train.init_checkpoint``)."""
    return read_config(cfg).weights


def dataset_names(cfg, train=True, test=True) -> List[str]:
    """The datasets a config reads (for the pre-flight check)."""
    return read_config(cfg).dataset_names(train, test)
