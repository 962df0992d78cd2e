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
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from involution_d2.config.files import setup_config
from involution_d2.data import check_dataset
from involution_d2.engine import Trainer, do_train, evaluate, launch, read_config

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


def main(args):
    cfg = setup(args)
    for name in read_config(cfg).dataset_names(train=not args.eval_only):
        check_dataset(name)
    if args.eval_only:
        return evaluate(args, cfg)
    if read_config(cfg).is_lazy:
        return do_train(args, cfg)  # as Detectron2's tools/lazyconfig_train_net.py
    trainer = Trainer(cfg)  # as Detectron2's tools/train_net.py
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    # Typos and bad files fail here, before processes start.
    sys.exit(launch(main, args, preflight=lambda a: setup_config(a.config_file, a.opts)))
