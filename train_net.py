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
the output folder; evaluates with COCOEvaluator or SemSegEvaluator as the dataset requires.
"""
import logging

from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from involution_d2.engine import AtomicCheckpointer, build_components, check_dataset
from involution_d2.engine import config_device, dataset_names, setup_config

logger = logging.getLogger("involution_d2")


def setup(args):
    cfg = setup_config(args.config_file, args.opts)
    default_setup(cfg, args)  # output folder, logging, seeds, config dump
    return cfg


def output_dir(cfg):
    return cfg.OUTPUT_DIR if hasattr(cfg, "OUTPUT_DIR") else cfg.train.output_dir


def evaluate(components, model):
    results = {}
    for name, loader, evaluator in components.tests:
        res = inference_on_dataset(model, loader(), evaluator())
        if comm.is_main_process():
            logger.info(f"Evaluation on {name}:")
            print_csv_format(res)
        results.update(res)
    return results


def train(args, cfg, components):
    model = components.model
    if components.amp and not str(config_device(cfg)).startswith("cuda"):
        raise ValueError("mixed precision (SOLVER.AMP.ENABLED / train.amp.enabled) needs a "
                         "GPU; turn it off to train on the CPU")
    optimizer = components.optimizer()
    train_loader = components.train_loader()
    on_gpu = str(config_device(cfg)).startswith("cuda")
    # DistributedDataParallel takes device_ids for GPU modules only.
    ddp_model = create_ddp_model(model, broadcast_buffers=False,
                                 **({} if on_gpu else {"device_ids": None}))
    trainer = (AMPTrainer if components.amp else SimpleTrainer)(ddp_model, train_loader,
                                                                 optimizer)
    checkpointer = AtomicCheckpointer(model, components.output_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=components.lr_scheduler(optimizer)),
        hooks.PeriodicCheckpointer(checkpointer, components.checkpoint_period,
                                   max_iter=components.max_iter)
        if comm.is_main_process() else None,
        hooks.EvalHook(components.eval_period, lambda: evaluate(components, model)),
        hooks.PeriodicWriter(default_writers(components.output_dir, components.max_iter),
                             period=components.log_period)
        if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(components.init_weights, resume=args.resume)
    # A checkpoint holds the iteration that had just finished: continue after it.
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if start_iter >= components.max_iter:
        logger.info(f"Training already finished ({start_iter} >= {components.max_iter} "
                    "iterations); raise the iteration count to continue")
        return {}
    trainer.train(start_iter, components.max_iter)
    return trainer.storage.latest() if comm.is_main_process() else {}


def main(args):
    cfg = setup(args)
    for name in dataset_names(cfg, train=not args.eval_only):
        check_dataset(name)
    components = build_components(cfg, output_dir(cfg))
    components.model.to(config_device(cfg))
    if args.eval_only:
        AtomicCheckpointer(components.model, components.output_dir).resume_or_load(
            components.init_weights, resume=args.resume)
        return evaluate(components, components.model)
    return train(args, cfg, components)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
