"""The involution custom operator, ``torch.ops.involution_d2.involution``.

One operator registered with ``torch.library``, so that ``torch.compile``, ``torch.export``
and ``torch.jit.trace`` see a single node:

- ``involution_d2::involution(x, weight, stride, padding, dilation) -> out``;
- ``involution_d2::involution_backward(grad_out, x, weight, stride, padding, dilation,
  output_mask) -> (grad_x, grad_weight)``, its autograd formula (a gradient not asked for
  in ``output_mask`` comes back as an empty tensor);
- ``involution_d2::fused_involution(x, reduced, span_weight, span_bias, groups,
  kernel_size, stride, padding, dilation) -> out`` and its backward: the involution layer's
  last 1x1 convolution (the "span", which generates the kernels) and the aggregation in one
  operator, whose autograd keeps no generated kernels (below);
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
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import native
from .cupy_backend import cupy_backward, cupy_forward, cupy_fused_forward, cupy_is_usable
from .shifted import backward as shifted_backward
from .shifted import forward as shifted_forward

NAMESPACE = "involution_d2"
FORWARD = f"{NAMESPACE}::involution"
BACKWARD = f"{NAMESPACE}::involution_backward"

_LIBRARY = torch.library.Library(NAMESPACE, "DEF")
_LIBRARY.define("involution(Tensor x, Tensor weight, int stride, int padding, int dilation) "
                "-> Tensor")
_LIBRARY.define("involution_backward(Tensor grad_out, Tensor x, Tensor weight, int stride, "
                "int padding, int dilation, bool[2] output_mask) -> (Tensor, Tensor)")


_LIBRARY.define("fused_involution(Tensor x, Tensor reduced, Tensor span_weight, "
                "Tensor? span_bias, int groups, int kernel_size, int stride, int padding, "
                "int dilation) -> Tensor")
_LIBRARY.define("fused_involution_backward(Tensor grad_out, Tensor x, Tensor reduced, "
                "Tensor span_weight, Tensor? span_bias, int groups, int kernel_size, "
                "int stride, int padding, int dilation, bool[4] output_mask) "
                "-> (Tensor, Tensor, Tensor, Tensor)")


@torch.compiler.assume_constant_result
def kernel_backend(device_type):
    """The native kernels of a device type where they work ("native" on the CPU, "cupy" on
    CUDA), else "": then the operators run the pure-PyTorch kernels of :mod:`.shifted`.  The
    one place that decides the fallback, for the operators here and for ``backend="auto"``.
    (A constant for torch.compile, which need not trace the build or CuPy's probe.)"""
    if device_type == "cpu":
        return "native" if native.native_is_available() else ""
    return "cupy" if device_type == "cuda" and cupy_is_usable() else ""


def _shifted_backward(grad_out, x, weight, stride, padding, dilation, output_mask):
    gx, gw = shifted_backward(grad_out.contiguous(), x.contiguous(), weight.contiguous(),
                              stride, padding, dilation, *output_mask)
    return _or_empty(gx, x), _or_empty(gw, weight)


def _or_empty(grad, like):
    return grad if grad is not None else like.new_empty((0,))


@torch.library.impl(_LIBRARY, "involution", "CPU")
def _forward_cpu(x, weight, stride, padding, dilation):
    if kernel_backend("cpu"):
        return torch.ops.involution_d2_cpu.forward(x, weight, stride, padding, dilation)
    return shifted_forward(x.contiguous(), weight.contiguous(), stride, padding, dilation)


@torch.library.impl(_LIBRARY, "involution_backward", "CPU")
def _backward_cpu(grad_out, x, weight, stride, padding, dilation, output_mask):
    if kernel_backend("cpu"):
        return torch.ops.involution_d2_cpu.backward(grad_out, x, weight, stride, padding,
                                                    dilation, output_mask)
    return _shifted_backward(grad_out, x, weight, stride, padding, dilation, output_mask)


@torch.library.impl(_LIBRARY, "involution", "CUDA")
def _forward_cuda(x, weight, stride, padding, dilation):
    x, weight = x.contiguous(), weight.contiguous()
    if kernel_backend("cuda"):
        return cupy_forward(x, weight, stride, padding, dilation)
    return shifted_forward(x, weight, stride, padding, dilation)


@torch.library.impl(_LIBRARY, "involution_backward", "CUDA")
def _backward_cuda(grad_out, x, weight, stride, padding, dilation, output_mask):
    if not kernel_backend("cuda"):
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


# ------------------------------------------------------------------------ fused operator
# fused_involution(x, reduced, span_weight, span_bias, G, K, ...) is
# involution(x, generate_kernels(reduced, span_weight, span_bias, G, K), ...): the layer's
# last 1x1 convolution (the "span", Cr -> G*K*K) and the aggregation in one operator.  Its
# autograd saves x and the reduced features, never the G*K*K-channel kernels: the backward
# regenerates them.  The native CPU kernels generate them a block of output rows at a time,
# so that they never exist whole (csrc/involution_cpu.cpp, "fused operator").


def generate_kernels(reduced, span_weight, span_bias, groups, kernel_size):
    """The generated kernels (N, G, K, K, Ho, Wo): the span as a 1x1 convolution (what FLOP
    counters and exporters know, in the unfused paths and the ONNX lowering)."""
    n, cr, ho, wo = reduced.shape
    kernels = F.conv2d(reduced, span_weight.reshape(-1, cr, 1, 1), span_bias)
    return kernels.view(n, groups, kernel_size, kernel_size, ho, wo)


def _fused_backward(aggregation_backward, grad_out, x, reduced, span_weight, span_bias,
                    groups, kernel_size, stride, padding, dilation, output_mask):
    need_x, need_reduced, need_span, need_bias = output_mask
    need_bias = need_bias and span_bias is not None
    need_kernels = need_reduced or need_span or need_bias
    kernels = generate_kernels(reduced, span_weight, span_bias, groups, kernel_size)
    gx, gk = aggregation_backward(grad_out, x, kernels, stride, padding, dilation,
                                  [need_x, need_kernels])
    del kernels
    n, cr, ho, wo = reduced.shape
    empty = reduced.new_empty((0,))
    g_reduced = g_span = g_bias = empty
    if need_kernels:
        # The span convolution's own backward (cuDNN's, oneDNN's), as autograd runs it for
        # the unfused layer, TF32 and cudnn settings included. (With batched matrix products
        # over the pixels instead, the fused forward+backward measured up to 3x slower than
        # the unfused one on an H200.)
        weight = span_weight.reshape(-1, cr, 1, 1)
        g_reduced, g_weight, g_b = torch.ops.aten.convolution_backward(
            gk.reshape(n, weight.shape[0], ho, wo), reduced, weight,
            [weight.shape[0]] if need_bias else None, [1, 1], [0, 0], [1, 1], False, [0, 0],
            1, [need_reduced, need_span, need_bias])
        g_reduced = g_reduced if need_reduced else empty
        g_span = g_weight.view_as(span_weight) if need_span else empty
        g_bias = g_b if need_bias else empty
    return (gx if need_x else x.new_empty((0,))), g_reduced, g_span, g_bias


@torch.library.impl(_LIBRARY, "fused_involution", "CPU")
def _fused_forward_cpu(x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                       dilation):
    if kernel_backend("cpu"):
        return torch.ops.involution_d2_cpu.fused_forward(x, reduced, span_weight, span_bias,
                                                         groups, kernel_size, stride, padding,
                                                         dilation)
    kernels = generate_kernels(reduced, span_weight, span_bias, groups, kernel_size)
    return shifted_forward(x.contiguous(), kernels, stride, padding, dilation)


@torch.library.impl(_LIBRARY, "fused_involution_backward", "CPU")
def _fused_backward_cpu(grad_out, x, reduced, span_weight, span_bias, groups, kernel_size,
                        stride, padding, dilation, output_mask):
    if kernel_backend("cpu"):
        return torch.ops.involution_d2_cpu.fused_backward(
            grad_out, x, reduced, span_weight, span_bias, groups, kernel_size, stride,
            padding, dilation, output_mask)
    return _fused_backward(_backward_cpu, grad_out, x, reduced, span_weight, span_bias, groups,
                           kernel_size, stride, padding, dilation, output_mask)


@torch.library.impl(_LIBRARY, "fused_involution", "CUDA")
def _fused_forward_cuda(x, reduced, span_weight, span_bias, groups, kernel_size, stride,
                        padding, dilation):
    if kernel_backend("cuda"):  # each thread generates its pixel's kernels in registers
        return cupy_fused_forward(
            x.contiguous(), reduced.contiguous(), span_weight.contiguous(),
            span_bias.contiguous() if span_bias is not None else None, groups, kernel_size,
            stride, padding, dilation)
    kernels = generate_kernels(reduced, span_weight, span_bias, groups, kernel_size)
    return shifted_forward(x.contiguous(), kernels, stride, padding, dilation)


@torch.library.impl(_LIBRARY, "fused_involution_backward", "CUDA")
def _fused_backward_cuda(grad_out, x, reduced, span_weight, span_bias, groups, kernel_size,
                         stride, padding, dilation, output_mask):
    return _fused_backward(_backward_cuda, grad_out, x, reduced, span_weight, span_bias,
                           groups, kernel_size, stride, padding, dilation, output_mask)


@torch.library.register_fake(f"{NAMESPACE}::fused_involution")
def _fused_forward_fake(x, reduced, span_weight, span_bias, groups, kernel_size, stride,
                        padding, dilation):
    return x.new_empty((x.shape[0], x.shape[1], reduced.shape[2], reduced.shape[3]))


@torch.library.register_fake(f"{NAMESPACE}::fused_involution_backward")
def _fused_backward_fake(grad_out, x, reduced, span_weight, span_bias, groups, kernel_size,
                         stride, padding, dilation, output_mask):
    likes = (x, reduced, span_weight, span_bias if span_bias is not None else span_weight)
    return tuple(t.new_empty(t.shape if need and (i < 3 or span_bias is not None) else (0,))
                 for i, (t, need) in enumerate(zip(likes, output_mask)))


def _fused_setup_context(ctx, inputs, output):
    x, reduced, span_weight, span_bias, *conf = inputs
    ctx.save_for_backward(x, reduced, span_weight, span_bias)
    ctx.conf = conf


def _fused_gradients(backward, ctx, grad_out):
    x, reduced, span_weight, span_bias = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:4])
    grads = backward(grad_out, x, reduced, span_weight, span_bias, *ctx.conf, mask)
    return (*(g if need else None for g, need in zip(grads, mask)), None, None, None, None,
            None)


def _fused_autograd_backward(ctx, grad_out):
    return _fused_gradients(torch.ops.involution_d2.fused_involution_backward, ctx, grad_out)


torch.library.register_autograd(f"{NAMESPACE}::fused_involution", _fused_autograd_backward,
                                setup_context=_fused_setup_context)


def _setup_context(ctx, inputs, output):
    x, weight, stride, padding, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.conf = (stride, padding, dilation)


def _gradients(backward, ctx, grad_out):
    x, weight = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[:2]
    gx, gw = backward(grad_out, x, weight, *ctx.conf, [need_x, need_w])
    return (gx if need_x else None), (gw if need_w else None), None, None, None


def _autograd_backward(ctx, grad_out):
    return _gradients(torch.ops.involution_d2.involution_backward, ctx, grad_out)


torch.library.register_autograd(FORWARD, _autograd_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------ eager calls
# In eager mode the operators' kernels are called through the autograd Functions below,
# not through the dispatcher: its route to a Python kernel, and torch.library's autograd
# wrapper around it, cost about 20 us of host time per call (on a 2-core AMD EPYC; a
# training forward 36 us against 16 us), and on a GPU host time is what limits RedNet
# (docs/BENCHMARKS.md, "GPU").  Same kernels, same saved tensors, same backward.  Traced,
# compiled and exported code (and tensor subclasses: fake tensors) goes through the
# registered operators, so that graphs hold one operator node per call.
_FORWARD_KERNELS = {"cpu": _forward_cpu, "cuda": _forward_cuda}
_BACKWARD_KERNELS = {"cpu": _backward_cpu, "cuda": _backward_cuda}
_FUSED_FORWARD_KERNELS = {"cpu": _fused_forward_cpu, "cuda": _fused_forward_cuda}
_FUSED_BACKWARD_KERNELS = {"cpu": _fused_backward_cpu, "cuda": _fused_backward_cuda}


def _eager(x):
    """True where a call may skip the dispatcher: a plain tensor on a device with kernels
    here, outside tracing, compilation, functorch transforms (vmap batches the registered
    operator) and dispatch modes (make_fx, selective checkpointing: they must see it)."""
    return (type(x) is torch.Tensor and x.device.type in _FORWARD_KERNELS
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active()
            and torch._C._len_torch_dispatch_stack() == 0)


class EagerInvolution(torch.autograd.Function):
    """``involution_d2::involution`` in eager mode (see above)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        _setup_context(ctx, (x, weight, stride, padding, dilation), None)
        return _FORWARD_KERNELS[x.device.type](x, weight, stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return _gradients(_BACKWARD_KERNELS[grad_out.device.type], ctx, grad_out)


class EagerFusedInvolution(torch.autograd.Function):
    """``involution_d2::fused_involution`` in eager mode (see above)."""

    @staticmethod
    def forward(ctx, x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                dilation):
        inputs = (x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                  dilation)
        _fused_setup_context(ctx, inputs, None)
        return _FUSED_FORWARD_KERNELS[x.device.type](*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return _fused_gradients(_FUSED_BACKWARD_KERNELS[grad_out.device.type], ctx, grad_out)


class ShiftedInvolution(torch.autograd.Function):
    """The "torch" backend's autograd: the pure-PyTorch kernels (:mod:`.shifted`) outside the
    custom operator, so that torch.compile traces them as ATen operators.  (FLOP counters
    know it by this name: ``prim::PythonOp.ShiftedInvolution``.)"""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        return shifted_forward(x, weight, stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        gx, gw = shifted_backward(grad_out.contiguous(), x, weight, *ctx.conf,
                                  need_x=ctx.needs_input_grad[0],
                                  need_w=ctx.needs_input_grad[1])
        return gx, gw, None, None, None


def involution_shifted(x, weight, stride, padding, dilation):
    """The "torch" backend (no custom operator)."""
    return ShiftedInvolution.apply(x.contiguous(), weight.contiguous(), stride, padding, dilation)


def involution_op(x, weight, stride, padding, dilation):
    """Runs the operator (no argument checks: see ``involution``): in eager mode its
    kernels directly, else the registered operator."""
    if _eager(x):
        return EagerInvolution.apply(x, weight, stride, padding, dilation)
    return torch.ops.involution_d2.involution(x, weight, stride, padding, dilation)


def fused_involution_op(x, reduced, span_weight, span_bias, groups, kernel_size, stride,
                        padding, dilation):
    """Runs the fused operator (no argument checks: see ``fused_involution``): in eager mode
    its kernels directly, else the registered operator."""
    args = (x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding, dilation)
    if _eager(x):
        return EagerFusedInvolution.apply(*args)
    return torch.ops.involution_d2.fused_involution(*args)
