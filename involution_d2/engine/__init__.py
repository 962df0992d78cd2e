from .checkpointer import AtomicCheckpointer
from .components import Components, build_components, build_evaluator, check_dataset, dataset_names

__all__ = [k for k in globals() if not k.startswith("_")]
