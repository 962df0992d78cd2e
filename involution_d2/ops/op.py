"""The involution custom operators and the two routes a call takes to the backend table.

Registered with ``torch.library``, so that ``torch.compile``, ``torch.export``, tracing and
scripting see one node per call:

- ``involution_d2::involution(x, weight, stride, padding, dilation, backend="auto") -> out``
  and ``involution_backward(grad_out, x, weight, stride, padding, dilation, output_mask,
  backend="auto") -> (grad_x, grad_weight)`` (a gradient not asked for in ``output_mask``
  comes back as an empty tensor);
- ``involution_d2::fused_involution(x, reduced, span_weight, span_bias, groups,
  kernel_size, stride, padding, dilation, backend="auto") -> out`` and its backward: the
  layer's last 1x1 convolution (the "span", which generates the kernels) and the
  aggregation in one operator, whose autograd keeps ``x`` and ``reduced``, never the
  generated kernels;
- fake (meta) kernels giving the output shapes, for tracing without data.

Every kernel comes from the backend table (:mod:`.backends`) by the ``backend`` argument, so
a traced model keeps the user's choice, and a model exported with "auto" runs wherever it is
loaded: the native kernels where they build, else the pure-PyTorch ones.

Eager calls (:func:`run_involution`, :func:`run_fused_involution`) skip the dispatcher: its
route to a Python kernel and torch.library's autograd wrapper add host time to every call
(docs/BENCHMARKS.md measures it), and on a GPU host time is what limits RedNet.  They run the same kernels through
the autograd Functions below, which save the same tensors and call the same backward as the
registered autograd; without gradients, they call the forward kernel directly.
"""
import torch
from torch.autograd.function import once_differentiable

from .backends import kernels_for

NAMESPACE = "involution_d2"
AGGREGATION_RANGE = "involution_d2::aggregation"  # profiler range of every eager call

_LIBRARY = torch.library.Library(NAMESPACE, "DEF")
_LIBRARY.define("involution(Tensor x, Tensor weight, int stride, int padding, int dilation, "
                "str backend=\"auto\") -> Tensor")
_LIBRARY.define("involution_backward(Tensor grad_out, Tensor x, Tensor weight, int stride, "
                "int padding, int dilation, bool[2] output_mask, str backend=\"auto\") "
                "-> (Tensor, Tensor)")
_LIBRARY.define("fused_involution(Tensor x, Tensor reduced, Tensor span_weight, "
                "Tensor? span_bias, int groups, int kernel_size, int stride, int padding, "
                "int dilation, str backend=\"auto\") -> Tensor")
_LIBRARY.define("fused_involution_backward(Tensor grad_out, Tensor x, Tensor reduced, "
                "Tensor span_weight, Tensor? span_bias, int groups, int kernel_size, "
                "int stride, int padding, int dilation, bool[4] output_mask, "
                "str backend=\"auto\") -> (Tensor, Tensor, Tensor, Tensor)")


def _impl(name):
    """Registers a function as operator ``name``'s kernel on every device the dispatcher
    routes to Python kernels here (the function itself picks from the table)."""
    def register(fn):
        for key in ("CPU", "CUDA"):
            _LIBRARY.impl(name, fn, key)
        return fn
    return register


def _gradients_or_empty(grads, likes, mask):
    # The schema returns tensors: a gradient not asked for is an empty one.
    return tuple(g if need and g is not None else (like if like is not None else likes[0])
                 .new_empty((0,)) for g, like, need in zip(grads, likes, mask))


@_impl("involution")
def _forward(x, weight, stride, padding, dilation, backend="auto"):
    return kernels_for(backend, x.device.type).forward(x, weight, stride, padding, dilation)


@_impl("involution_backward")
def _backward(grad_out, x, weight, stride, padding, dilation, output_mask, backend="auto"):
    grads = kernels_for(backend, x.device.type).backward(grad_out, x, weight, stride, padding,
                                                         dilation, list(output_mask))
    return _gradients_or_empty(grads, (x, weight), output_mask)


@_impl("fused_involution")
def _fused_forward(x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                   dilation, backend="auto"):
    return kernels_for(backend, x.device.type).fused_forward(
        x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding, dilation)


@_impl("fused_involution_backward")
def _fused_backward(grad_out, x, reduced, span_weight, span_bias, groups, kernel_size, stride,
                    padding, dilation, output_mask, backend="auto"):
    grads = kernels_for(backend, x.device.type).fused_backward(
        grad_out, x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
        dilation, list(output_mask))
    return _gradients_or_empty(grads, (x, reduced, span_weight, span_bias), output_mask)


@torch.library.register_fake(f"{NAMESPACE}::involution")
def _forward_fake(x, weight, stride, padding, dilation, backend="auto"):
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[4], weight.shape[5]))


@torch.library.register_fake(f"{NAMESPACE}::involution_backward")
def _backward_fake(grad_out, x, weight, stride, padding, dilation, output_mask, backend="auto"):
    return (x.new_empty(x.shape if output_mask[0] else (0,)),
            weight.new_empty(weight.shape if output_mask[1] else (0,)))


@torch.library.register_fake(f"{NAMESPACE}::fused_involution")
def _fused_forward_fake(x, reduced, span_weight, span_bias, groups, kernel_size, stride,
                        padding, dilation, backend="auto"):
    return x.new_empty((x.shape[0], x.shape[1], reduced.shape[2], reduced.shape[3]))


@torch.library.register_fake(f"{NAMESPACE}::fused_involution_backward")
def _fused_backward_fake(grad_out, x, reduced, span_weight, span_bias, groups, kernel_size,
                         stride, padding, dilation, output_mask, backend="auto"):
    likes = (x, reduced, span_weight, span_bias if span_bias is not None else span_weight)
    return tuple(t.new_empty(t.shape if need and (i < 3 or span_bias is not None) else (0,))
                 for i, (t, need) in enumerate(zip(likes, output_mask)))


# ------------------------------------------------------------------------ autograd
# One formula per operator, for both routes: the registered autograd (traced and compiled
# code) calls the backward operator, the eager Functions the backend's backward kernel.


def _setup_context(ctx, inputs, output):
    x, weight, *conf = inputs
    ctx.save_for_backward(x, weight)
    ctx.conf = conf  # stride, padding, dilation, backend


def _gradients(backward, ctx, grad_out, *conf):
    x, weight = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:2])
    gx, gw = backward(grad_out, x, weight, *conf, mask)
    return (gx if mask[0] else None), (gw if mask[1] else None)


def _registered_backward(ctx, grad_out):
    stride, padding, dilation, backend = ctx.conf
    return _gradients(
        lambda *args: torch.ops.involution_d2.involution_backward(*args, backend), ctx,
        grad_out, stride, padding, dilation) + (None,) * 4


torch.library.register_autograd(f"{NAMESPACE}::involution", _registered_backward,
                                setup_context=_setup_context)


def _fused_setup_context(ctx, inputs, output):
    x, reduced, span_weight, span_bias, *conf = inputs
    ctx.save_for_backward(x, reduced, span_weight, span_bias)
    ctx.conf = conf  # groups, kernel_size, stride, padding, dilation, backend


def _fused_gradients(backward, ctx, grad_out, *conf):
    x, reduced, span_weight, span_bias = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:4])
    grads = backward(grad_out, x, reduced, span_weight, span_bias, *conf, mask)
    return tuple(g if need else None for g, need in zip(grads, mask))


def _registered_fused_backward(ctx, grad_out):
    *conf, backend = ctx.conf
    return _fused_gradients(
        lambda *args: torch.ops.involution_d2.fused_involution_backward(*args, backend), ctx,
        grad_out, *conf) + (None,) * 6


torch.library.register_autograd(f"{NAMESPACE}::fused_involution", _registered_fused_backward,
                                setup_context=_fused_setup_context)


class EagerInvolution(torch.autograd.Function):
    """``involution_d2::involution`` in eager mode (see the module's docstring)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, kernels):
        ctx.save_for_backward(x, weight)
        ctx.conf, ctx.kernels = (stride, padding, dilation), kernels
        return kernels.forward(x, weight, stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return _gradients(ctx.kernels.backward, ctx, grad_out, *ctx.conf) + (None,) * 4


class EagerFusedInvolution(torch.autograd.Function):
    """``involution_d2::fused_involution`` in eager mode (see the module's docstring)."""

    @staticmethod
    def forward(ctx, x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                dilation, kernels):
        ctx.save_for_backward(x, reduced, span_weight, span_bias)
        ctx.conf = (groups, kernel_size, stride, padding, dilation)
        ctx.kernels = kernels
        return kernels.fused_forward(x, reduced, span_weight, span_bias, groups, kernel_size,
                                     stride, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return _fused_gradients(ctx.kernels.fused_backward, ctx, grad_out,
                                *ctx.conf) + (None,) * 6


# ------------------------------------------------------------------------ the two routes
_is_tracing = torch._C._is_tracing
_functorch_active = torch._C._are_functorch_transforms_active
_dispatch_modes = torch._C._len_torch_dispatch_stack
_profiling = torch._C._autograd._profiler_enabled


def _eager(x):
    """True where a call may skip the dispatcher: a plain tensor, outside tracing,
    compilation, functorch transforms (vmap batches the registered operator) and dispatch
    modes (make_fx, selective checkpointing: they must see the operator)."""
    # is_compiling first: Dynamo answers it, and cannot trace the private checks after it.
    return (not torch.compiler.is_compiling() and type(x) is torch.Tensor
            and not _is_tracing() and not _functorch_active() and _dispatch_modes() == 0)


def run_involution(x, weight, stride, padding, dilation, backend):
    """The aggregation on checked arguments (one dtype, one device): eager calls run the
    table's kernels directly, other code the registered operator."""
    if not _eager(x):
        return torch.ops.involution_d2.involution(x, weight, stride, padding, dilation, backend)
    if _profiling():
        with torch.profiler.record_function(AGGREGATION_RANGE):
            return _involution_eager(x, weight, stride, padding, dilation, backend)
    return _involution_eager(x, weight, stride, padding, dilation, backend)


def _device_type(x):
    return "cuda" if x.is_cuda else "cpu" if x.is_cpu else x.device.type  # the cheap way


def _involution_eager(x, weight, stride, padding, dilation, backend):
    kernels = kernels_for(backend, _device_type(x))
    if kernels.autograd or not (torch.is_grad_enabled()
                                and (x.requires_grad or weight.requires_grad)):
        return kernels.forward(x, weight, stride, padding, dilation)
    return EagerInvolution.apply(x, weight, stride, padding, dilation, kernels)


def run_fused_involution(x, reduced, span_weight, span_bias, groups, kernel_size, stride,
                         padding, dilation, backend):
    """The fused operator on checked arguments (see :func:`run_involution`)."""
    args = (x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding, dilation)
    if not _eager(x):
        return torch.ops.involution_d2.fused_involution(*args, backend)
    if _profiling():
        with torch.profiler.record_function(AGGREGATION_RANGE):
            return _fused_eager(args, backend)
    return _fused_eager(args, backend)


def _fused_eager(args, backend):
    x, reduced, span_weight, span_bias = args[:4]
    kernels = kernels_for(backend, _device_type(x))
    if kernels.autograd or not torch.is_grad_enabled() or not (
            x.requires_grad or reduced.requires_grad or span_weight.requires_grad
            or (span_bias is not None and span_bias.requires_grad)):
        return kernels.fused_forward(*args)
    return EagerFusedInvolution.apply(*args, kernels)
