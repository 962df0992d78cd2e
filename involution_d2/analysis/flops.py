"""FLOP counting with fvcore, with the involution aggregation counted.

fvcore traces the model and counts each operator through a handle. The involution
operator appears in the trace as the custom operator ``involution_d2::involution``, which no
default handle knows; :func:`involution_flop_jit` counts it (one multiply-add per kernel tap per
output element, the unit fvcore uses for convolutions).

Two sets of handles:

- ``"detectron2"``: fvcore's defaults with Detectron2's ignore list (what Detectron2's
  ``tools/analyze_model.py`` reports);
- ``"openmmlab"``: the rules of OpenMMLab's complexity counter (mmcv's
  ``get_model_complexity_info``), with which the official FLOPs column was measured: a
  convolution also counts one add per output element for its bias, norms count one
  operation per input element (two with an affine transform), ReLU one per output element,
  pooling one per input element, linear layers their multiply-adds without the bias; every
  other operator counts nothing (upsampling through ``F.interpolate``, element-wise sums,
  RoIAlign).
"""
from dataclasses import dataclass, field
from math import prod
from typing import Dict

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import (
    addmm_flop_jit,
    conv_flop_count,
    elementwise_flop_counter,
    get_shape,
    linear_flop_jit,
    matmul_flop_jit,
)

__all__ = ["INVOLUTION_OPS", "CONVENTIONS", "involution_flop_jit", "flop_handles",
           "FlopReport", "count_flops"]

# How the aggregation shows up in a traced graph (every backend: the custom operator).
INVOLUTION_OPS = ("involution_d2::involution",)
# The fused operator (span convolution + aggregation): count_flops traces the layers
# unfused, where the two are separate operators; the handle is for traces of fused layers.
FUSED_INVOLUTION_OP = "involution_d2::fused_involution"
CONVENTIONS = ("openmmlab", "detectron2")


def involution_flop_jit(inputs, outputs):
    """Multiply-adds of ``involution(x, weight)``: N * C * Ho * Wo * K * K."""
    n, c = get_shape(inputs[0])[:2]
    k = get_shape(inputs[1])[2]
    ho, wo = get_shape(outputs[0])[2:]
    return n * c * ho * wo * k * k


def fused_involution_handle(bias_adds):
    """A handle counting the multiply-adds of ``fused_involution``: its span convolution
    (Cr -> G*K*K; with ``bias_adds``, one add per output for the bias, as OpenMMLab counts a
    convolution's bias) and its aggregation (N * C * Ho * Wo * K * K)."""
    def handle(inputs, outputs):
        n, cr, ho, wo = get_shape(inputs[1])
        span_out = get_shape(inputs[2])[0]
        bias = bias_adds and get_shape(inputs[3]) is not None
        k = inputs[5].toIValue()
        c = get_shape(outputs[0])[1]
        return n * ho * wo * (span_out * (cr + bias) + c * k * k)
    return handle


def _numel(value):
    shape = get_shape(value)
    return prod(shape) if shape is not None else 0


def _conv_with_bias(inputs, outputs):
    x, w, out = (get_shape(v) for v in (inputs[0], inputs[1], outputs[0]))
    transposed = inputs[6].toIValue()
    flops = conv_flop_count(x, w, out, transposed=transposed)
    if get_shape(inputs[2]) is not None:  # one add per output element for the bias
        flops += prod(out)
    return flops


def _norm(weight_index):
    def handle(inputs, outputs):
        affine = get_shape(inputs[weight_index]) is not None
        return _numel(inputs[0]) * (2 if affine else 1)
    return handle


_INPUT_ELEMENTS = elementwise_flop_counter(input_scale=1, output_scale=0)
_OUTPUT_ELEMENTS = elementwise_flop_counter(input_scale=0, output_scale=1)

_OPENMMLAB = {
    "aten::_convolution": _conv_with_bias,
    "aten::batch_norm": _norm(1),
    "aten::group_norm": _norm(2),
    "aten::layer_norm": _norm(2),
    "aten::instance_norm": _norm(1),
    "aten::relu": _OUTPUT_ELEMENTS,
    "aten::relu_": _OUTPUT_ELEMENTS,
    "aten::max_pool2d": _INPUT_ELEMENTS,
    "aten::avg_pool2d": _INPUT_ELEMENTS,
    "aten::adaptive_avg_pool2d": _INPUT_ELEMENTS,
    "aten::adaptive_max_pool2d": _INPUT_ELEMENTS,
    # fvcore's linear handles count mmcv's way: multiply-adds, without the bias.
    "aten::linear": linear_flop_jit,
    "aten::addmm": addmm_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::mm": matmul_flop_jit,
    # Operators OpenMMLab's counter cannot see: functional upsampling, einsum, bmm.
    "aten::upsample_nearest2d": None,
    "aten::upsample_bilinear2d": None,
    "aten::grid_sampler": None,
    "aten::einsum": None,
    "aten::bmm": None,
}


def flop_handles(convention):
    """Handles to set on an fvcore ``FlopCountAnalysis`` (``None`` ignores an operator)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}; choose one of {CONVENTIONS}")
    handles = dict(_OPENMMLAB) if convention == "openmmlab" else {}
    handles.update({op: involution_flop_jit for op in INVOLUTION_OPS})
    handles[FUSED_INVOLUTION_OP] = fused_involution_handle(bias_adds=convention == "openmmlab")
    return handles


@dataclass
class FlopReport:
    """FLOPs (multiply-adds, as fvcore and OpenMMLab count) of one forward pass."""

    total: int
    aggregation: int
    by_operator: Dict[str, int] = field(default_factory=dict)
    analysis: object = None  # the fvcore FlopCountAnalysis, for its tables

    @property
    def without_aggregation(self):
        return self.total - self.aggregation


def count_flops(model, inputs, convention="openmmlab", analysis=None):
    """Counts the FLOPs of ``model(*inputs)``.

    Args:
        model (nn.Module): traced with ``torch.jit``; its involution layers are switched
            unfused for the trace (the span as a convolution, then the aggregation).
        inputs (tuple): positional inputs of ``model``.
        convention (str): "openmmlab" or "detectron2" (see the module's docstring).
        analysis: an fvcore ``FlopCountAnalysis`` to use instead of a plain one (e.g.
            Detectron2's, which traces models that take ``list[dict]``).
    """
    from ..layers import Involution

    layers = [m for m in model.modules() if isinstance(m, Involution)]
    saved = [m.fused for m in layers]
    for m in layers:
        m.fused = False
    try:
        if analysis is None:
            analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle(**flop_handles(convention))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with torch.no_grad():
            by_operator = dict(analysis.by_operator())
    finally:
        for m, fused in zip(layers, saved):
            m.fused = fused
    # fvcore names operators without their namespace ("involution").
    aggregation = sum(by_operator.get(op.split("::", 1)[1], 0) for op in INVOLUTION_OPS)
    return FlopReport(int(analysis.total()), int(aggregation), by_operator, analysis)
