"""Training, evaluation and inference on Detectron2's engine, for both config systems. The
safe checkpointer (``involution_d2.checkpoint``) and the config files
(``involution_d2.config``) are re-exported here, where the tools find them."""
from ..checkpoint.detection_checkpoint import AtomicCheckpointer
from .config_reader import (
    ConfigReader,
    TestSet,
    build_evaluator,
    build_model_with_weights,
    check_dataset,
    config_weights,
    dataset_names,
    evaluator_class,
    read_config,
)
from ..config.files import apply_lazy_overrides, setup_config
from .errors import (USER_ERROR_EXIT, CheckpointLoadError, ConfigError, DiskFullError, UserError,
                     exit_status)
from .launch import (launch, loader_workers_stop_with_process, share_cpu_cores, stop_with_launcher,
                     threads_per_process)
from .trainer import Trainer, do_test, do_train, evaluate

__all__ = [k for k in globals() if not k.startswith("_")]
