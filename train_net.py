#!/usr/bin/env python3
"""Train and evaluate involution / RedNet models with Detectron2.

    python train_net.py --config-file configs/Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.py
    python train_net.py --config-file CONFIG.yaml --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CONFIG.py --resume              # continue where it stopped
    python train_net.py --config-file CONFIG --num-gpus 8             # one process per GPU
    python train_net.py --config-file CONFIG --num-machines 2 --machine-rank 0 \\
        --dist-url tcp://HOST:PORT                                    # multi-machine

--config-file takes a LazyConfig ``.py`` (overrides: ``train.max_iter=100``) or a yacs
``.yaml`` (overrides: ``SOLVER.MAX_ITER 100``).  Without a GPU, --num-gpus N starts N CPU
processes (gloo).  Writes checkpoints (atomically), metrics.json and TensorBoard events to
the output folder; evaluates every test set with the evaluator its dataset asks for.
Workers stop when the launcher dies and share the CPU cores; errors the user can fix (a
typo'd override, a refused checkpoint, a full disk) end with one line ``error: ...``.
"""
import logging
import os
import sys

import torch

from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from fvcore.nn.precise_bn import get_bn_modules

from involution_d2.engine import AtomicCheckpointer, build_components, check_dataset
from involution_d2.engine import (launch, loader_workers_stop_with_process, read_config,
                                  setup_config)
from involution_d2.engine.metrics import drop_metrics_from
from involution_d2.engine.numerics import check_trainable_start, non_finite_features

logger = logging.getLogger("involution_d2")


def setup(args):
    cfg = setup_config(args.config_file, args.opts)
    default_setup(cfg, args)  # output folder, logging, seeds, config dump
    setup_logger(read_config(cfg).output_dir, distributed_rank=comm.get_rank(), name=logger.name)
    if comm.get_world_size() > 1:
        threads = os.environ.get("OMP_NUM_THREADS")
        logger.info(f"{comm.get_local_size()} processes on this machine, "
                    f"{torch.get_num_threads()} CPU threads each "
                    + (f"(OMP_NUM_THREADS={threads})" if threads
                       else "(its cores shared; set OMP_NUM_THREADS to choose)"))
    return cfg


def evaluate(components, model):
    """Every test set with its evaluator; the results of all of them (one set: its results
    alone, as Detectron2's trainers return them)."""
    results = {}
    for test in components.tests:
        loader = loader_workers_stop_with_process(test.loader())
        with non_finite_features(model, test.name):
            res = inference_on_dataset(model, loader, test.evaluator())
        results[test.name] = res
        if comm.is_main_process():
            logger.info(f"Evaluation on {test.name}:")
            print_csv_format(res)
    return next(iter(results.values())) if len(results) == 1 else results


def train(args, components):
    model = components.model
    on_gpu = str(components.device).startswith("cuda")
    if components.amp and not on_gpu:
        raise ValueError("mixed precision (SOLVER.AMP.ENABLED / train.amp.enabled) needs a "
                         "GPU; turn it off to train on the CPU")
    optimizer = components.optimizer()
    train_loader = loader_workers_stop_with_process(components.train_loader())
    # DistributedDataParallel takes device_ids for GPU modules only.
    ddp_model = create_ddp_model(model, **components.ddp,
                                 **({} if on_gpu or "device_ids" in components.ddp
                                    else {"device_ids": None}))
    trainer = (AMPTrainer if components.amp else SimpleTrainer)(ddp_model, train_loader,
                                                                 optimizer)
    checkpointer = AtomicCheckpointer(model, components.output_dir, trainer=trainer)
    if comm.is_main_process():
        checkpointer.remove_stale_temporaries()
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=components.lr_scheduler(optimizer)),
        # Before the checkpointer, which then saves the statistics it computes.
        hooks.PreciseBN(components.eval_period, model,
                        loader_workers_stop_with_process(components.precise_bn_loader()),
                        components.precise_bn_iters)
        if components.precise_bn_iters and get_bn_modules(model) else None,
        hooks.PeriodicCheckpointer(checkpointer, max_iter=components.max_iter,
                                   **components.checkpointer)
        if comm.is_main_process() else None,
        hooks.EvalHook(components.eval_period, lambda: evaluate(components, model)),
        hooks.PeriodicWriter(default_writers(components.output_dir, components.max_iter),
                             period=components.log_period)
        if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(components.init_weights, resume=args.resume)
    check_trainable_start(model)  # before the first iteration, not at its Inf/NaN
    # A checkpoint holds the iteration that had just finished: continue after it.
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if start_iter >= components.max_iter:
        logger.info(f"Training already finished: the last checkpoint has {start_iter} of "
                    f"{components.max_iter} iterations. Raise the iteration count "
                    "(SOLVER.MAX_ITER / train.max_iter) to train further, or use "
                    "--eval-only to evaluate")
        return {}
    if comm.is_main_process():
        dropped = drop_metrics_from(os.path.join(components.output_dir, "metrics.json"),
                                    start_iter)
        if dropped:
            logger.info(f"metrics.json: dropped {dropped} records of iterations >= "
                        f"{start_iter} from an earlier run (they are trained again now)")
    trainer.train(start_iter, components.max_iter)
    return trainer.storage.latest() if comm.is_main_process() else {}


def main(args):
    components = build_components(setup(args))
    names = [t.name for t in components.tests]
    for name in names if args.eval_only else components.train_datasets + names:
        check_dataset(name)
    if args.eval_only:
        checkpointer = AtomicCheckpointer(components.model, components.output_dir)
        if not components.init_weights and not (args.resume and checkpointer.has_checkpoint()):
            logger.warning("--eval-only without weights (MODEL.WEIGHTS / "
                           "train.init_checkpoint is empty): evaluating an untrained model")
        else:
            checkpointer.resume_or_load(components.init_weights, resume=args.resume)
        return evaluate(components, components.model)
    return train(args, components)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    # Typos and bad files fail here, before processes start.
    sys.exit(launch(main, args, preflight=lambda a: setup_config(a.config_file, a.opts)))
