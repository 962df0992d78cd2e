"""Numerical sanity of a model before and during its use: a RedNet that cannot train, and
evaluations whose backbone features are not finite.

Involution is quadratic in its input (the kernels are computed from the input they are
applied to), so a randomly initialised RedNet whose norms are frozen at their identity
statistics (FrozenBN without pretrained weights) amplifies activations layer after layer:
its detectors diverge within the first few iterations (on the shapes data at 800 pixels,
the configs' input size, Faster/Mask R-CNN and RetinaNet all stopped with Inf/NaN by
iteration 3; docs/BENCHMARKS.md has the runs). With a trainable norm (BN,
SyncBN, GN) it trains from scratch."""
import contextlib
import logging

import torch
from detectron2.layers import FrozenBatchNorm2d

from .backbone.rednet import RedNet
from ..utils.errors import ConfigError

__all__ = ["check_trainable_start", "non_finite_features"]

logger = logging.getLogger("involution_d2")

_NORM_TYPES = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm,
               FrozenBatchNorm2d)

UNTRAINED_FROZEN_NORM = (
    "the RedNet backbone has frozen norms (FrozenBN) with no pretrained statistics: no "
    "MODEL.WEIGHTS / train.init_checkpoint was loaded, and frozen identity statistics make "
    "the involutions amplify activations until training diverges (Inf/NaN within a few "
    "iterations). Either convert the official ImageNet checkpoint "
    "(python3 tools/convert_official_weights.py rednet50.pth rednet50_d2.pth --expect "
    "classification) and load it (MODEL.WEIGHTS rednet50_d2.pth, or "
    "train.init_checkpoint=rednet50_d2.pth), or train from scratch with a trainable norm "
    "(MODEL.REDNET.NORM GN MODEL.BACKBONE.FREEZE_AT 0, or "
    "model.backbone.bottom_up.norm=GN model.backbone.bottom_up.freeze_at=0)"
)


def _is_identity(norm):
    """A FrozenBatchNorm2d still at its initialisation (no statistics were loaded)."""
    ones = torch.ones_like(norm.weight)
    return bool((norm.weight == 1).all() and (norm.bias == 0).all()
                and (norm.running_mean == 0).all()
                and torch.allclose(norm.running_var, ones, atol=1e-4))


def untrained_frozen_rednets(model):
    """The RedNets in ``model`` whose every norm is frozen at its identity statistics."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, RedNet):
            norms = [m for m in module.modules() if isinstance(m, _NORM_TYPES)]
            if norms and all(isinstance(m, FrozenBatchNorm2d) and _is_identity(m)
                             for m in norms):
                found.append(name or "model")
    return found


def check_trainable_start(model):
    """Raises ConfigError, saying why and how to fix it, where training ``model`` (its
    weights loaded) would diverge at once: a RedNet with frozen norms and no weights."""
    names = untrained_frozen_rednets(model)
    if names:
        raise ConfigError(f"cannot train {names[0]}: {UNTRAINED_FROZEN_NORM}")


@contextlib.contextmanager
def non_finite_features(model, dataset_name):
    """While evaluating ``model`` on ``dataset_name``: counts the inputs whose backbone
    features hold Inf or NaN, and logs one warning at the end if there were any (such a model
    predicts nothing, and the evaluation would only show zero detections)."""
    backbone = getattr(getattr(model, "module", model), "backbone", None)
    seen = {"calls": 0, "bad": 0, "where": None}

    def check(module, inputs, outputs):
        features = outputs.items() if isinstance(outputs, dict) else [("output", outputs)]
        seen["calls"] += 1
        for name, feature in features:
            if isinstance(feature, torch.Tensor) and not bool(torch.isfinite(feature).all()):
                seen["bad"] += 1
                seen["where"] = seen["where"] or name
                return

    handle = backbone.register_forward_hook(check) if backbone is not None else None
    try:
        yield seen
    finally:
        if handle is not None:
            handle.remove()
    if seen["bad"]:
        untrained = untrained_frozen_rednets(model)
        cause = (UNTRAINED_FROZEN_NORM if untrained
                 else "the weights diverged in training or do not belong to this model")
        logger.warning(
            f"Evaluation on {dataset_name}: the backbone's features hold Inf/NaN in "
            f"{seen['bad']} of {seen['calls']} batches (first at {seen['where']}), so the "
            f"model predicts nothing there and the results below mean nothing; {cause}")
