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
from .official_zoo import OFFICIAL_MODEL_ZOO, OfficialRow, official_row

__all__ = [
    "CONVENTIONS", "INVOLUTION_OPS", "OFFICIAL_MODEL_ZOO", "OPENMMLAB_INPUT_SIZES",
    "FlopReport", "OfficialRow", "OpenMMLabDummyForward", "ParameterCounts", "count_flops",
    "count_parameters", "flop_handles", "involution_flop_jit", "model_flops", "model_task",
    "official_row",
]
