from .checkpointer import AtomicCheckpointer
from .components import Components, build_components, build_evaluator, check_dataset, dataset_names
from .config_files import build_model_from_config, config_device, setup_config

__all__ = [k for k in globals() if not k.startswith("_")]
