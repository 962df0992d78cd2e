"""Config files of either Detectron2 config system, for the command-line tools."""
import os

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model

from ..config import add_involution_config

__all__ = ["setup_config", "build_model_from_config", "config_device"]


def setup_config(config_file, opts=()):
    """The config (LazyConfig for .py, yacs CfgNode otherwise) with overrides applied, on
    the CPU when there is no GPU."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file}: no such file")
    opts = list(opts)
    if config_file.endswith(".py"):
        cfg = LazyConfig.load(config_file)
        cfg = LazyConfig.apply_overrides(cfg, opts)
        if not torch.cuda.is_available():
            cfg.train.device = "cpu"
        return cfg
    cfg = get_cfg()
    add_involution_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def config_device(cfg):
    return cfg.MODEL.DEVICE if isinstance(cfg, CfgNode) else cfg.train.device


def build_model_from_config(cfg):
    """The model of a yacs or LazyConfig config, on the config's device."""
    if isinstance(cfg, CfgNode):
        return build_model(cfg)
    return instantiate(cfg.model).to(cfg.train.device)
