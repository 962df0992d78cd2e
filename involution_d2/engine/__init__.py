"""Training, evaluation and inference on Detectron2's engine, for both config systems."""
from .config_reader import ConfigReader, TestSet, build_model_with_weights, read_config
from .launch import launch
from .trainer import Trainer, do_test, do_train, evaluate

__all__ = [k for k in globals() if not k.startswith("_")]
