from .checkpointer import AtomicCheckpointer
from .components import Components, build_components, build_evaluator, check_dataset, dataset_names
from .config_files import (
    apply_lazy_overrides,
    build_model_from_config,
    config_device,
    config_weights,
    setup_config,
)
from .errors import USER_ERROR_EXIT, CheckpointLoadError, ConfigError, DiskFullError, UserError
from .launch import launch, share_cpu_cores, stop_with_launcher, threads_per_process

__all__ = [k for k in globals() if not k.startswith("_")]
