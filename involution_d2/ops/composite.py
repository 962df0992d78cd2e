"""What a backend need not write: its fused operator composed from its aggregation kernels, and
a backward by autograd for kernels that autograd differentiates.

``fused_involution(x, reduced, span_weight, span_bias, G, K, ...)`` is
``involution(x, generate_kernels(reduced, span_weight, span_bias, G, K), ...)``: the layer's
last 1x1 convolution (the "span", Cr -> G*K*K) and the aggregation.  Composed, its backward
regenerates the G*K*K-channel kernels from ``reduced`` rather than keeping them.
"""
import torch
import torch.nn.functional as F


def generate_kernels(reduced, span_weight, span_bias, groups, kernel_size):
    """The generated kernels (N, G, K, K, Ho, Wo): the span as a 1x1 convolution (what FLOP
    counters and exporters know)."""
    n, cr, ho, wo = reduced.shape
    kernels = F.conv2d(reduced, span_weight.reshape(-1, cr, 1, 1), span_bias)
    return kernels.view(n, groups, kernel_size, kernel_size, ho, wo)


def fused_forward_of(forward):
    def fused_forward(x, reduced, span_weight, span_bias, groups, kernel_size, stride, padding,
                      dilation):
        kernels = generate_kernels(reduced, span_weight, span_bias, groups, kernel_size)
        return forward(x, kernels, stride, padding, dilation)
    return fused_forward


def span_backward(grad_kernels, reduced, span_weight, need_reduced, need_span, need_bias):
    """The span convolution's gradients (reduced, span weight, span bias; None where not
    needed) from the generated kernels' gradient ``grad_kernels`` (N, G, K, K, Ho, Wo):
    cuDNN's, oneDNN's, as autograd runs it for the unfused layer, TF32 and cudnn settings
    included."""
    n, cr, ho, wo = reduced.shape
    weight = span_weight.reshape(-1, cr, 1, 1)
    g_reduced, g_weight, g_bias = torch.ops.aten.convolution_backward(
        grad_kernels.reshape(n, weight.shape[0], ho, wo), reduced, weight,
        [weight.shape[0]] if need_bias else None, [1, 1], [0, 0], [1, 1], False,
        [0, 0], 1, [need_reduced, need_span, need_bias])
    return (g_reduced if need_reduced else None,
            g_weight.view_as(span_weight) if need_span else None,
            g_bias if need_bias else None)


def fused_backward_of(backward):
    """The fused operator's backward from the aggregation's: regenerate the kernels, run the
    aggregation's backward, then the span convolution's own backward."""
    def fused_backward(grad_out, x, reduced, span_weight, span_bias, groups, kernel_size,
                       stride, padding, dilation, output_mask):
        need_x, need_reduced, need_span, need_bias = output_mask
        need_bias = need_bias and span_bias is not None
        need_kernels = need_reduced or need_span or need_bias
        kernels = generate_kernels(reduced, span_weight, span_bias, groups, kernel_size)
        gx, gk = backward(grad_out, x, kernels, stride, padding, dilation,
                          [need_x, need_kernels])
        del kernels
        if not need_kernels:
            return gx, None, None, None
        return (gx,) + span_backward(gk, reduced, span_weight, need_reduced, need_span,
                                     need_bias)
    return fused_backward


def autograd_backward_of(forward, inputs_count):
    """A backward for kernels that autograd differentiates (the unfold definition): the
    gradients of ``forward`` by autograd, for the registered operator's backward."""
    def backward(grad_out, *args):
        *args, output_mask = args
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) if t is not None else None
                      for t, need in zip(args[:inputs_count], output_mask)]
            out = forward(*leaves, *args[inputs_count:])
            wanted = [t for t, need in zip(leaves, output_mask) if need and t is not None]
            grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True)
                         if wanted else ())
        return tuple(next(grads) if need and t is not None else None
                     for t, need in zip(leaves, output_mask))
    return backward
