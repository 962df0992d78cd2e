from .checkpointer import AtomicCheckpointer
from .components import (
    Components,
    ConfigReader,
    TestSet,
    build_components,
    build_evaluator,
    build_model_from_config,
    build_model_with_weights,
    evaluator_class,
    check_dataset,
    config_device,
    config_weights,
    dataset_names,
    read_config,
)
from .config_files import apply_lazy_overrides, setup_config
from .errors import (USER_ERROR_EXIT, CheckpointLoadError, ConfigError, DiskFullError, UserError,
                     exit_status)
from .launch import (launch, loader_workers_stop_with_process, share_cpu_cores, stop_with_launcher,
                     threads_per_process)

__all__ = [k for k in globals() if not k.startswith("_")]
