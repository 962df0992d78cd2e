"""Training, evaluation and inference on Detectron2's engine, for both config systems."""
from .config_reader import (
    ConfigReader,
    TestSet,
    build_evaluator,
    build_model_with_weights,
    config_weights,
    dataset_names,
    evaluator_class,
    read_config,
)
from .launch import (launch, loader_workers_stop_with_process, share_cpu_cores, stop_with_launcher,
                     threads_per_process)
from .trainer import Trainer, do_test, do_train, evaluate

__all__ = [k for k in globals() if not k.startswith("_")]
