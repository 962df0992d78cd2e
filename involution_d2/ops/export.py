"""Lowering the involution operator for exporters that do not know it (ONNX).

``torch.export`` keeps ``involution_d2::involution`` and ``involution_d2::fused_involution``
as one node each; ONNX has no such operators, so :func:`lower_involution` replaces each node
with standard operators: the fused operator's span as a 1x1 convolution, then
:func:`involution_by_rows`, the aggregation
written with standard operators that every ONNX runtime executes: per kernel row, a
convolution with one-hot filters gathers the K taps of that row (Conv), which are weighted
and summed (Mul, ReduceSum, Add).  That is about 7 ONNX nodes per kernel row, against 5
per tap (K*K) for a sum of shifted slices (the alternative tests/export/test_export.py checks), and
needs K output-sized temporaries at once, against K*K for a full unfold.
"""
import torch
import torch.nn.functional as F

from . import op  # noqa: F401 - registers torch.ops.involution_d2
from .composite import generate_kernels

__all__ = ["involution_by_rows", "fused_involution_by_rows", "lower_involution",
           "DECOMPOSITIONS"]


def involution_by_rows(x, weight, stride, padding, dilation, backend="auto"):
    """``involution(x, weight, ...)`` one kernel row at a time (for any ``backend``: this is
    the lowering): a convolution of each input plane with K one-hot K x K filters yields the
    row's K taps (exactly: the other products are by zero), multiplied by their weights and
    summed over the row."""
    n, c, h, w = x.shape
    _, g, k, _, ho, wo = weight.shape
    planes = x.reshape(n * c, 1, h, w)
    one_hot = torch.eye(k * k, dtype=x.dtype, device=x.device).reshape(k * k, 1, k, k)
    out = None
    for a in range(k):
        taps = F.conv2d(planes, one_hot[a * k:(a + 1) * k], stride=stride, padding=padding,
                        dilation=dilation)
        term = (taps.reshape(n, g, c // g, k, ho, wo) * weight[:, :, None, a]).sum(dim=3)
        out = term if out is None else out + term
    return out.reshape(n, c, ho, wo)


def fused_involution_by_rows(x, reduced, span_weight, span_bias, groups, kernel_size, stride,
                             padding, dilation, backend="auto"):
    """``fused_involution(...)``: the span as a 1x1 convolution, then
    :func:`involution_by_rows`."""
    kernels = generate_kernels(reduced, span_weight, span_bias, groups, kernel_size)
    return involution_by_rows(x, kernels, stride, padding, dilation)


DECOMPOSITIONS = {torch.ops.involution_d2.involution.default: involution_by_rows,
                  torch.ops.involution_d2.fused_involution.default: fused_involution_by_rows}


def lower_involution(exported_program):
    """The ``torch.export.ExportedProgram`` with every involution node replaced by standard
    ATen operators (for ONNX export)."""
    return exported_program.run_decompositions(DECOMPOSITIONS)
