"""The involution custom operator, ``torch.ops.involution_d2.involution``.

One operator registered with ``torch.library``, so that ``torch.compile``, ``torch.export``
and ``torch.jit.trace`` see a single node:

- ``involution_d2::involution(x, weight, stride, padding, dilation) -> out``;
- ``involution_d2::involution_backward(grad_out, x, weight, stride, padding, dilation,
  output_mask) -> (grad_x, grad_weight)``, its autograd formula (a gradient not asked for
  in ``output_mask`` comes back as an empty tensor);
- kernels: CPU, the native C++ kernels (:mod:`.native`, compiled on first use); CUDA, the
  CuPy kernels (:mod:`.cupy_backend`) on torch's current stream.  Where those are missing
  (no compiler, no CuPy) the operator still runs, on the pure-PyTorch kernels of
  :mod:`.shifted`, so that exported or traced models load anywhere;
- fake (meta) kernels giving the output shapes, for tracing without data.

Inputs may be non-contiguous; outputs are contiguous. ``x`` and ``weight`` share a dtype
(float16, bfloat16, float32 or float64); half precision accumulates in float32.
:func:`involution_d2.ops.involution` validates arguments and handles autocast before it
calls this operator.
"""
import torch

from . import native
from .cupy_backend import cupy_backward, cupy_forward, cupy_is_usable
from .shifted import _backward as shifted_backward
from .shifted import _forward as shifted_forward

NAMESPACE = "involution_d2"
FORWARD = f"{NAMESPACE}::involution"
BACKWARD = f"{NAMESPACE}::involution_backward"

_LIBRARY = torch.library.Library(NAMESPACE, "DEF")
_LIBRARY.define("involution(Tensor x, Tensor weight, int stride, int padding, int dilation) "
                "-> Tensor")
_LIBRARY.define("involution_backward(Tensor grad_out, Tensor x, Tensor weight, int stride, "
                "int padding, int dilation, bool[2] output_mask) -> (Tensor, Tensor)")


def _shifted_backward(grad_out, x, weight, stride, padding, dilation, output_mask):
    gx, gw = shifted_backward(grad_out.contiguous(), x.contiguous(), weight.contiguous(),
                              stride, padding, dilation, *output_mask)
    return _or_empty(gx, x), _or_empty(gw, weight)


def _or_empty(grad, like):
    return grad if grad is not None else like.new_empty((0,))


@torch.library.impl(_LIBRARY, "involution", "CPU")
def _forward_cpu(x, weight, stride, padding, dilation):
    if native.native_is_available():
        return torch.ops.involution_d2_cpu.forward(x, weight, stride, padding, dilation)
    return shifted_forward(x.contiguous(), weight.contiguous(), stride, padding, dilation)


@torch.library.impl(_LIBRARY, "involution_backward", "CPU")
def _backward_cpu(grad_out, x, weight, stride, padding, dilation, output_mask):
    if native.native_is_available():
        return torch.ops.involution_d2_cpu.backward(grad_out, x, weight, stride, padding,
                                                    dilation, output_mask)
    return _shifted_backward(grad_out, x, weight, stride, padding, dilation, output_mask)


@torch.library.impl(_LIBRARY, "involution", "CUDA")
def _forward_cuda(x, weight, stride, padding, dilation):
    x, weight = x.contiguous(), weight.contiguous()
    if cupy_is_usable():
        return cupy_forward(x, weight, stride, padding, dilation)
    return shifted_forward(x, weight, stride, padding, dilation)


@torch.library.impl(_LIBRARY, "involution_backward", "CUDA")
def _backward_cuda(grad_out, x, weight, stride, padding, dilation, output_mask):
    if not cupy_is_usable():
        return _shifted_backward(grad_out, x, weight, stride, padding, dilation, output_mask)
    gx, gw = cupy_backward(grad_out.contiguous(), x.contiguous(), weight.contiguous(), stride,
                           padding, dilation, *output_mask)
    return _or_empty(gx, x), _or_empty(gw, weight)


@torch.library.register_fake(FORWARD)
def _forward_fake(x, weight, stride, padding, dilation):
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[4], weight.shape[5]))


@torch.library.register_fake(BACKWARD)
def _backward_fake(grad_out, x, weight, stride, padding, dilation, output_mask):
    return (x.new_empty(x.shape if output_mask[0] else (0,)),
            weight.new_empty(weight.shape if output_mask[1] else (0,)))


def _setup_context(ctx, inputs, output):
    x, weight, stride, padding, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.conf = (stride, padding, dilation)


def _autograd_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[:2]
    gx, gw = torch.ops.involution_d2.involution_backward(grad_out, x, weight, *ctx.conf,
                                                         [need_x, need_w])
    return (gx if need_x else None), (gw if need_w else None), None, None, None


torch.library.register_autograd(FORWARD, _autograd_backward, setup_context=_setup_context)


def involution_op(x, weight, stride, padding, dilation):
    """Calls the registered operator (no argument checks: see ``involution``)."""
    return torch.ops.involution_d2.involution(x, weight, stride, padding, dilation)
