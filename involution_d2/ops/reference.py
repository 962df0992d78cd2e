"""The definition of involution, written with unfold (the official naive form).

It materialises the K*K unfold of the input (K*K times the input's memory) and is kept as
the ground truth the other backends are tested against.  Autograd differentiates it.
"""
import torch.nn.functional as F


def involution_reference(x, weight, stride, padding, dilation):
    n, c, _, _ = x.shape
    _, g, k, _, ho, wo = weight.shape
    cols = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, g, c // g, k * k, ho, wo)
    out = (cols * weight.reshape(n, g, 1, k * k, ho, wo)).sum(dim=3)
    return out.view(n, c, ho, wo)
