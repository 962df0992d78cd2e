"""Training and evaluation on Detectron2's engine.

- yacs configs: :class:`Trainer`, Detectron2's ``DefaultTrainer`` with what differs here;
- LazyConfigs: :func:`do_train` and :func:`do_test`, the loop of Detectron2's
  ``tools/lazyconfig_train_net.py``, with the same differences.

The differences: the checkpointer never runs code from a file and writes atomically; the
evaluator comes from each dataset's ``evaluator_type`` and the yacs input pipeline from
``DATALOADER.PIPELINE``; DDP runs CPU processes too (Detectron2 passes GPU device ids);
DataLoader workers stop with their process; before the first iteration, a RedNet that
cannot train is refused, a finished run says so, and metrics of iterations about to be
trained again are dropped; an evaluation whose backbone features are not finite says so.
"""
import contextlib
import functools
import logging
import os

from detectron2.config import instantiate
from detectron2.engine import (AMPTrainer, DefaultTrainer, SimpleTrainer, default_writers,
                               defaults, hooks)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import OmegaConf

from ..checkpoint import AtomicCheckpointer
from ..data import get_pipeline
from ..evaluation import build_evaluator
from ..modeling.numerics import check_trainable_start, non_finite_features
from ..solver import build_lr_scheduler, build_optimizer
from ..utils.events import drop_metrics_from
from ..utils.processes import loader_workers_stop_with_process
from .config_reader import read_config

__all__ = ["Trainer", "do_test", "do_train", "evaluate"]

logger = logging.getLogger("involution_d2")


@contextlib.contextmanager
def _cpu_ddp(device):
    """While DefaultTrainer.__init__ runs: its DDP wrapper, ``create_ddp_model``, without the
    GPU device ids that DDP refuses for a CPU model (DefaultTrainer has no hook for them)."""
    if str(device).startswith("cuda"):
        yield
        return
    defaults.create_ddp_model = functools.partial(create_ddp_model, device_ids=None)
    try:
        yield
    finally:
        defaults.create_ddp_model = create_ddp_model


def _check_amp(enabled, device):
    if enabled and not str(device).startswith("cuda"):
        raise ValueError("mixed precision (SOLVER.AMP.ENABLED / train.amp.enabled) needs a "
                         "GPU; turn it off to train on the CPU")


def _ready_to_train(model, checkpointer, start_iter, max_iter):
    """What runs between loading the weights and the first iteration; False where the run
    had already finished."""
    if start_iter >= max_iter:
        logger.info(f"Training already finished: the last checkpoint has {start_iter} of "
                    f"{max_iter} iterations. Raise the iteration count (SOLVER.MAX_ITER / "
                    "train.max_iter) to train further, or use --eval-only to evaluate")
        return False
    check_trainable_start(model)  # before the first iteration, not at its Inf/NaN
    if comm.is_main_process():
        checkpointer.remove_stale_temporaries()
        dropped = drop_metrics_from(os.path.join(checkpointer.save_dir, "metrics.json"),
                                    start_iter)
        if dropped:
            logger.info(f"metrics.json: dropped {dropped} records of iterations >= "
                        f"{start_iter} from an earlier run (they are trained again now)")
    return True


def load_for_evaluation(cfg, model, resume):
    """The weights to evaluate: the last checkpoint with ``resume``, else the config's."""
    config = read_config(cfg)
    checkpointer = AtomicCheckpointer(model, config.output_dir)
    if not config.weights and not (resume and checkpointer.has_checkpoint()):
        logger.warning("--eval-only without weights (MODEL.WEIGHTS / train.init_checkpoint is "
                       "empty): evaluating an untrained model")
        return model
    checkpointer.resume_or_load(config.weights, resume=resume)
    return model


class Trainer(DefaultTrainer):
    """Detectron2's DefaultTrainer for this project's yacs configs (see the module)."""

    def __init__(self, cfg):
        _check_amp(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE)
        with _cpu_ddp(cfg.MODEL.DEVICE):
            super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ makes its checkpointer just before it builds the hooks that
        # save with it: the safe, atomic one takes its place there.
        plain = self.checkpointer
        self.checkpointer = AtomicCheckpointer(plain.model, plain.save_dir,
                                               **plain.checkpointables)
        return super().build_hooks()

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)  # with SOLVER.CLIP_GRADIENTS full_model

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return loader_workers_stop_with_process(get_pipeline(cfg).build_train_loader(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return loader_workers_stop_with_process(
            get_pipeline(cfg).build_test_loader(cfg, dataset_name))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(dataset_name, output_folder
                               or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        with non_finite_features(model, ", ".join(cfg.DATASETS.TEST)):
            return super().test(cfg, model, evaluators)

    def train(self):
        if not _ready_to_train(self.model, self.checkpointer, self.start_iter, self.max_iter):
            return {}
        return super().train()


def do_test(cfg, model):
    """Every test set with its evaluator, as lazyconfig_train_net.py's do_test, each dataset
    of ``dataloader.test`` on its own (as yacs DATASETS.TEST): the results of all of them
    (one set: its results alone)."""
    results = {}
    for test in read_config(cfg).tests():
        loader = loader_workers_stop_with_process(test.loader())
        with non_finite_features(model, test.name):
            results[test.name] = inference_on_dataset(model, loader, test.evaluator())
        if comm.is_main_process():
            logger.info(f"Evaluation on {test.name}:")
            print_csv_format(results[test.name])
    return next(iter(results.values())) if len(results) == 1 else results


def do_train(args, cfg):
    """lazyconfig_train_net.py's do_train, with the differences of this module."""
    train = cfg.train
    _check_amp(train.amp.enabled, train.device)
    model = read_config(cfg).build_model()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)  # clips gradients if its LazyCall does
    train_loader = loader_workers_stop_with_process(instantiate(cfg.dataloader.train))
    ddp = train.get("ddp", None)  # optional, as in lazyconfig_train_net.py
    ddp = OmegaConf.to_container(ddp, resolve=True) if ddp is not None else {}
    if not str(train.device).startswith("cuda"):
        ddp.setdefault("device_ids", None)  # DDP takes device ids for GPU modules only
    model = create_ddp_model(model, **ddp)
    trainer = (AMPTrainer if train.amp.enabled else SimpleTrainer)(model, train_loader,
                                                                   optimizer)
    checkpointer = AtomicCheckpointer(model, train.output_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **train.checkpointer)
        if comm.is_main_process() else None,
        hooks.EvalHook(train.eval_period, lambda: do_test(cfg, model)),
        hooks.PeriodicWriter(default_writers(train.output_dir, train.max_iter),
                             period=train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(train.init_checkpoint, resume=args.resume)
    # A checkpoint holds the iteration that had just finished: continue after it.
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if not _ready_to_train(model, checkpointer, start_iter, train.max_iter):
        return {}
    trainer.train(start_iter, train.max_iter)
    return trainer.storage.latest() if comm.is_main_process() else {}


def evaluate(args, cfg):
    """``--eval-only``: the model with its weights, on every test set."""
    config = read_config(cfg)
    model = config.build_model().eval()
    load_for_evaluation(cfg, model, args.resume)
    return do_test(cfg, model) if config.is_lazy else Trainer.test(cfg, model)
