"""The one place that tells the two Detectron2 config systems apart: a yacs CfgNode or a
LazyConfig is read here into what the tools need (the model, its weights, device, output
folder, datasets, test input, and for LazyConfigs each test set on its own), and evaluators
are chosen by the datasets' ``evaluator_type``, never by their names."""
import copy
import os
from dataclasses import dataclass
from typing import Callable, List

import torch
from detectron2.config import CfgNode, instantiate
from detectron2.modeling import build_model

from ..checkpoint import AtomicCheckpointer
from ..data import check_dataset, get_pipeline

__all__ = [
    "ConfigReader",
    "TestSet",
    "check_dataset",
    "build_model_with_weights",
    "read_config",
]


@dataclass
class TestSet:
    """One test set: its name, and factories of its loader and evaluator."""

    name: str
    loader: Callable[[], object]
    evaluator: Callable[[], object]


class ConfigReader:
    """What the engine reads from a config; :func:`read_config` picks the subclass of the
    config's system."""

    def __init__(self, cfg):
        self.cfg = cfg

    is_lazy: bool
    device: str
    weights: str
    output_dir: str

    def build_model(self) -> torch.nn.Module:
        """The model, on the config's device."""
        raise NotImplementedError

    def set_device(self, device):
        raise NotImplementedError

    def dataset_names(self, train=True, test=True) -> List[str]:
        raise NotImplementedError

    def test_input(self):
        """(augmentations, image format) of the test pipeline, for single-image inference."""
        raise NotImplementedError


class _YacsReader(ConfigReader):
    """As Detectron2's DefaultTrainer reads a yacs config."""

    is_lazy = False

    @property
    def device(self):
        return self.cfg.MODEL.DEVICE

    def set_device(self, device):
        self.cfg.MODEL.DEVICE = device

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

    is_lazy = True

    @property
    def device(self):
        return self.cfg.train.device

    def set_device(self, device):
        self.cfg.train.device = device

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


def read_config(cfg) -> ConfigReader:
    """The reader of a yacs CfgNode or a LazyConfig (the one place that tells them apart)."""
    return _YacsReader(cfg) if isinstance(cfg, CfgNode) else _LazyReader(cfg)


def build_model_with_weights(cfg, weights=None):
    """The config's model with ``weights`` loaded (None: the config's ``MODEL.WEIGHTS`` /
    ``train.init_checkpoint``; empty: none), through the checkpointer that never runs code
    from a file: what every tool that loads a checkpoint uses."""
    model = read_config(cfg).build_model()
    weights = read_config(cfg).weights if weights is None else weights
    if weights:
        AtomicCheckpointer(model).load(weights)
    return model
