"""The involution layer: per-pixel kernels generated from the input, then aggregated."""
import torch
from torch import nn

from ..ops import involution
from ..ops.backends import check_name
from ..ops.op import run_fused_involution
from .conv_norm_act import ConvNormAct
from .recompute import recompute_into


# The official involution layer's design, used by RedNet and by every involution neck and head
# (MODEL.INVOLUTION and the LazyConfig files take their defaults from here).
DEFAULT_KERNEL_SIZE = 7
DEFAULT_GROUP_CHANNELS = 16  # channels sharing one generated kernel
DEFAULT_REDUCTION_RATIO = 4  # of the kernel-generation bottleneck


class Involution(nn.Module):
    """Involution with kernel generation (official RedNet design).

    1. average-pool by ``stride`` (kernels are generated at the output resolution);
    2. ``conv1``: 1x1 conv C -> C / reduction_ratio, norm, ReLU;
    3. ``conv2``: 1x1 conv -> K*K*G kernel weights (with bias, no norm);
    4. the involution operator with G = C / group_channels groups.

    Steps 3 and 4 run as one operator (``fused_involution``), so the K*K*G-channel kernels
    are never saved for backward (nor, on the CPU, written to memory).

    Submodules are named like the official ones (``conv1.conv``, ``conv1.bn``,
    ``conv2.conv``), so an official checkpoint maps onto this layer key for key.

    Unlike the official layer, odd inputs work with stride > 1: the pooling rounds up
    (ceil mode, averaging the valid pixels of a border window), like the operator's output
    size does; even sizes give exactly the official result.
    """

    def __init__(self, channels, kernel_size=DEFAULT_KERNEL_SIZE, stride=1, *,
                 reduction_ratio=DEFAULT_REDUCTION_RATIO, group_channels=DEFAULT_GROUP_CHANNELS,
                 dilation=1, norm="BN", activation=None, backend="auto"):
        """
        Args:
            channels (int): input and output channels C.
            kernel_size (int): K, odd.
            stride (int): output stride.
            reduction_ratio (int): C / (channels of the kernel-generation bottleneck).
            group_channels (int): channels sharing one generated kernel (C / G).
            dilation (int): dilation of the kernel taps.
            norm (str or callable): norm of the bottleneck, by Detectron2's name.
            activation (nn.Module or None): applied to the output, as in Detectron2's
                ``Conv2d`` (e.g. ``nn.ReLU()`` in the involution RPN and mask heads).
            backend (str): operator backend, a name of ``involution_d2.ops.backend_names()``.
        """
        super().__init__()
        for name, value in (("channels", channels), ("kernel_size", kernel_size),
                            ("stride", stride), ("reduction_ratio", reduction_ratio),
                            ("group_channels", group_channels), ("dilation", dilation)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Involution: {name} must be a positive int, got {value!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"Involution: kernel_size must be odd so that the output keeps "
                             f"the input's size, got {kernel_size}; use {kernel_size + 1}")
        if channels % group_channels != 0:
            raise ValueError(f"Involution: channels={channels} is not a multiple of "
                             f"group_channels={group_channels}; choose a divisor of {channels}")
        if channels < reduction_ratio:
            raise ValueError(f"Involution: reduction_ratio={reduction_ratio} leaves no "
                             f"channels of channels={channels}")
        check_name(backend, "Involution")
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.groups = channels // group_channels
        self.padding = dilation * (kernel_size - 1) // 2
        self.backend = backend
        self.activation = activation
        # False: the span and the aggregation as two operators (the generated kernels are then
        # kept for backward), for FLOP counters that count each on its own.
        self.fused = True
        # True: in training, the reduced features (the bottleneck's ReLU output) are
        # recomputed from the layer's input (pooled again where strided) in backward instead
        # of kept (layers/recompute.py).
        self.recompute_activations = True

        self.avgpool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else None
        self.conv1 = ConvNormAct(channels, channels // reduction_ratio, 1, norm=norm)
        self.conv2 = ConvNormAct(channels // reduction_ratio,
                                 kernel_size * kernel_size * self.groups, 1,
                                 norm="", activation=False)

    def forward(self, x):
        if not torch.jit.is_scripting() and (x.dim() != 4 or x.shape[1] != self.channels):
            raise ValueError(f"Involution: expected input (N, {self.channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if (not torch.jit.is_scripting() and self.fused and self.recompute_activations
                and torch.is_grad_enabled() and not torch.jit.is_tracing()):
            out = self._aggregate_recomputing(x)
            return self.activation(out) if self.activation is not None else out
        if self.avgpool is None:
            pooled = x
        elif torch.jit.is_scripting() or torch.jit.is_tracing():
            pooled = self.avgpool(x)  # one pooling node in exported graphs
        else:
            pooled = self._average_pool(x)
        reduced = self.conv1(pooled)
        # conv2 (the "span", Cr -> G*K*K) and the aggregation run as one operator, which
        # never keeps the G*K*K-channel kernels (see involution_d2.ops.fused_involution).
        # The arguments are right by construction (channels, groups, sizes): no checks here.
        span = self.conv2.conv
        if torch.jit.is_scripting():
            out = torch.ops.involution_d2.fused_involution(
                x, reduced, span.weight, span.bias, self.groups, self.kernel_size, self.stride,
                self.padding, self.dilation, self.backend)
        elif not self.fused:
            n, _, ho, wo = reduced.shape
            kernels = span(reduced).view(n, self.groups, self.kernel_size, self.kernel_size,
                                         ho, wo)
            out = involution(x, kernels, self.stride, self.padding, self.dilation,
                             backend=self.backend)
        else:
            out = self._aggregate(x, reduced)
        return self.activation(out) if self.activation is not None else out

    @torch.jit.unused
    def _aggregate(self, x, reduced):
        weight, bias = self.conv2.conv.weight, self.conv2.conv.bias
        if reduced.dtype is not x.dtype or weight.dtype is not x.dtype:  # autocast
            weight, x = weight.to(reduced.dtype), x.to(reduced.dtype)
            bias = bias.to(reduced.dtype) if bias is not None else None
        return run_fused_involution(x, reduced, weight, bias, self.groups, self.kernel_size,
                                    self.stride, self.padding, self.dilation, self.backend)

    @torch.jit.unused
    def _average_pool(self, x):
        """``self.avgpool(x)``; on the CPU, in float32 or float64, with sizes that the stride
        divides, as the sum of the window's strided views in the kernel's order (rows, then
        columns) divided by the window's area: the same sums, bit for bit, 3-4x faster
        than avg_pool2d's CPU kernel, which reads one window at a time."""
        s = self.stride
        if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
                or x.dim() != 4 or x.shape[2] % s or x.shape[3] % s):
            return self.avgpool(x)
        out = x[:, :, 0::s, 0::s] + x[:, :, 0::s, 1::s]
        for i in range(s):
            for j in range(s):
                if i > 0 or j > 1:
                    out.add_(x[:, :, i::s, j::s])
        return out.div_(s * s)

    @torch.jit.unused
    def _aggregate_recomputing(self, x):
        # Strided: the pooling is recomputed too (from x, which the aggregation keeps anyway),
        # so that the pooled input is not kept either.
        return recompute_into(lambda reduced: self._aggregate(x, reduced), x,
                              self.conv1.norm, self.conv1.conv,
                              pre=self._average_pool if self.avgpool is not None else None)

    def extra_repr(self):
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, groups={self.groups}, backend={self.backend!r}")
