"""Model complexity: parameters and FLOPs, in Detectron2's and in OpenMMLab's conventions.

:mod:`.flops` (the operator's FLOP handle, the counting rules) needs torch and fvcore only;
the rest works on Detectron2 models.
"""
from .dummy_forward import OPENMMLAB_INPUT_SIZES, OpenMMLabDummyForward, model_task
from .flops import (
    CONVENTIONS,
    INVOLUTION_OPS,
    FlopReport,
    count_flops,
    flop_handles,
    involution_flop_jit,
)
from .model_flops import model_flops
from .parameters import ParameterCounts, count_parameters
from .seed import SEED_MODEL_ZOO, SeedRow

__all__ = [
    "CONVENTIONS", "INVOLUTION_OPS", "OPENMMLAB_INPUT_SIZES", "SEED_MODEL_ZOO", "FlopReport",
    "OpenMMLabDummyForward", "ParameterCounts", "SeedRow", "count_flops", "count_parameters",
    "flop_handles", "involution_flop_jit", "model_flops", "model_task",
]
