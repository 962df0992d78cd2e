"""Optimizers for LazyConfig files."""
import itertools

import torch


def sgd_with_grad_clip(params, *, lr, momentum=0.9, weight_decay=0.0, max_norm, norm_type=2.0):
    """SGD whose step first clips the gradient norm of all parameters together: the
    LazyConfig twin of yacs' SOLVER.CLIP_GRADIENTS with CLIP_TYPE "full_model" (and of
    OpenMMLab's ``grad_clip=dict(max_norm=..., norm_type=2)``)."""

    class ClippedSGD(torch.optim.SGD):
        def step(self, closure=None):
            all_params = itertools.chain(*(g["params"] for g in self.param_groups))
            torch.nn.utils.clip_grad_norm_(all_params, max_norm, norm_type)
            return super().step(closure)

    return ClippedSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
