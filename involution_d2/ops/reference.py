"""The definition of involution, written with unfold (the official naive form): the "reference"
backend, the ground truth the other backends are tested against.

It materialises the K*K unfold of the input (K*K times the input's memory).  Autograd
differentiates it: it has no backward of its own.
"""
import torch.nn.functional as F

from .backends import Backend, Kernels, register_backend


def involution_reference(x, weight, stride, padding, dilation):
    n, c, _, _ = x.shape
    _, g, k, _, ho, wo = weight.shape
    if n == 0:  # unfold refuses an empty batch
        return x.new_zeros((0, c, ho, wo)) + (x.sum() + weight.sum()) * 0  # keeps the graph
    cols = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, g, c // g, k * k, ho, wo)
    out = (cols * weight.reshape(n, g, 1, k * k, ho, wo)).sum(dim=3)
    return out.view(n, c, ho, wo)


register_backend(Backend("reference", None, lambda: Kernels(involution_reference, None),
                         "the unfold definition"))
