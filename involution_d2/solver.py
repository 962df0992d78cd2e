"""Optimizers and learning-rate schedules that Detectron2 lacks."""
import itertools

import torch
from fvcore.common.param_scheduler import ParamScheduler


def _with_full_model_clipping(optimizer_cls, max_norm, norm_type):
    """``optimizer_cls`` whose step first clips the gradient norm of all parameters
    together (OpenMMLab's ``grad_clip=dict(max_norm=..., norm_type=2)``)."""

    class FullModelClipped(optimizer_cls):
        def step(self, closure=None):
            all_params = itertools.chain(*(g["params"] for g in self.param_groups))
            torch.nn.utils.clip_grad_norm_(all_params, max_norm, norm_type)
            return super().step(closure)

    FullModelClipped.__name__ = f"{optimizer_cls.__name__}WithFullModelClipping"
    FullModelClipped.max_norm, FullModelClipped.norm_type = max_norm, norm_type
    return FullModelClipped


def sgd_with_grad_clip(params, *, lr, momentum=0.9, weight_decay=0.0, max_norm, norm_type=2.0):
    """SGD with full-model gradient-norm clipping, for LazyConfig files."""
    cls = _with_full_model_clipping(torch.optim.SGD, max_norm, norm_type)
    return cls(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_optimizer(cfg, model):
    """Detectron2's yacs optimizer builder, plus SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"
    (Detectron2 itself clips per parameter only: "value" / "norm")."""
    from detectron2.solver import build_optimizer as d2_build_optimizer

    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
        return d2_build_optimizer(cfg, model)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    optimizer = d2_build_optimizer(cfg, model)
    optimizer.__class__ = _with_full_model_clipping(type(optimizer), clip.CLIP_VALUE,
                                                    clip.NORM_TYPE)
    return optimizer


class PolyParamScheduler(ParamScheduler):
    """Polynomial decay to a floor, OpenMMLab's "poly" policy with ``min_lr``:
    ``(start - end) * (1 - where) ** power + end``.  As an LR multiplier: start=1 and
    end = min_lr / base_lr."""

    def __init__(self, start_value=1.0, end_value=0.0, power=0.9):
        self.start_value = start_value
        self.end_value = end_value
        self.power = power

    def __call__(self, where):
        return (self.start_value - self.end_value) * (1 - where) ** self.power + self.end_value


def poly_lr_multiplier(base_lr, min_lr, power=0.9):
    """LR multiplier of OpenMMLab's poly policy down to the absolute floor ``min_lr``: the
    floor stays where it is when the base LR changes (a LazyConfig passes
    ``base_lr="${optimizer.lr}"``)."""
    return PolyParamScheduler(1.0, min_lr / base_lr, power)


def build_lr_scheduler(cfg, optimizer):
    """Detectron2's yacs LR scheduler builder, plus SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR"
    (poly decay with SOLVER.POLY_LR_POWER down to SOLVER.POLY_LR_MIN)."""
    from detectron2.solver import LRMultiplier, WarmupParamScheduler
    from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler

    solver = cfg.SOLVER
    if solver.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    sched = poly_lr_multiplier(solver.BASE_LR, solver.POLY_LR_MIN, solver.POLY_LR_POWER)
    sched = WarmupParamScheduler(sched, solver.WARMUP_FACTOR,
                                 min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
                                 solver.WARMUP_METHOD, solver.RESCALE_INTERVAL)
    return LRMultiplier(optimizer, multiplier=sched, max_iter=solver.MAX_ITER)

