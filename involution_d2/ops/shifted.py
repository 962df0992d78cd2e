"""Memory-efficient involution in plain PyTorch: a sum of K*K shifted products.

For each kernel tap (a, b) the output pixels whose tap falls inside the image form a
rectangle, and the input pixels they read form a strided view of the input.  Accumulating
``out[rect] += w[:, :, a, b, rect] * x[view]`` in place never builds the K*K unfold, never
pads the input, and skips the taps that would read zeros.  The backward pass is written the
same way (autograd would otherwise keep K*K intermediates), so training memory stays at a
few output-sized buffers.  Runs on any device; half and bfloat16 accumulate in float32.

The "torch" backend: on any device, the fallback where no native kernel runs.
"""
import torch

from .backends import Backend, Kernels, register_backend

# Output-sized blocks processed at once on the CPU, in elements: a block's accumulator
# stays in cache across the K*K passes instead of streaming through memory K*K times.
_CPU_BLOCK_ELEMENTS = 1 << 18


def _tap_range(out_size, in_size, stride, offset):
    """Outputs o in [o0, o1) whose input o*stride + offset lies in [0, in_size)."""
    o0 = max(0, (stride - 1 - offset) // stride)
    o1 = min(out_size, (in_size - 1 - offset) // stride + 1)
    return o0, max(o0, o1)


def _axis_taps(k, out_size, in_size, stride, padding, dilation, phased=False):
    """Per tap a along one axis: (a, output slice, input slice, phase), skipping empty
    taps.  With ``phased``, the input slice indexes the phase plane ``x[phase::stride]``
    (contiguous) instead of ``x`` with a step."""
    taps = []
    for a in range(k):
        offset = a * dilation - padding
        o0, o1 = _tap_range(out_size, in_size, stride, offset)
        if o0 < o1:
            i0, n = o0 * stride + offset, o1 - o0
            if phased:
                taps.append((a, slice(o0, o1), slice(i0 // stride, i0 // stride + n),
                             i0 % stride))
            else:
                taps.append((a, slice(o0, o1), slice(i0, i0 + (n - 1) * stride + 1, stride), 0))
    return taps


def _taps(k, ho, wo, h, w, stride, padding, dilation, phased=False):
    """Yields (a, b, output rows, output cols, input rows, input cols, phase) with slices
    and the phase (row phase, column phase) the input slices refer to."""
    cols = _axis_taps(k, wo, w, stride, padding, dilation, phased)
    for a, rows_out, rows_in, pr in _axis_taps(k, ho, h, stride, padding, dilation, phased):
        for b, cols_out, cols_in, pc in cols:
            yield a, b, rows_out, cols_out, rows_in, cols_in, (pr, pc)


def _phased(x, stride):
    """On the CPU with stride > 1, taps read the input through contiguous phase planes
    ``x[..., p::s, q::s]`` (copied per block, so a block's worth of memory) rather than
    with a step, which vectorises poorly."""
    return stride > 1 and x.device.type == "cpu"


def _block_operand(t, acc):
    """On the CPU, half-precision operands are widened once per block: mixed-dtype
    multiply-adds convert every element on every one of the K*K taps, which costs more
    than the float32 arithmetic itself."""
    return t.to(acc) if t.device.type == "cpu" and t.dtype != acc else t


def _phase_planes(xb, stride, zeros=False):
    """Contiguous ``xb[..., p::stride, q::stride]`` per phase (p, q), or zeros of their
    shapes (gradient accumulators)."""
    make = torch.zeros_like if zeros else torch.Tensor.contiguous
    return {(p, q): make(xb[:, :, p::stride, q::stride])
            for p in range(stride) for q in range(stride)}


def _acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _blocks(x):
    """Splits the flattened (batch, group) axis of x into cache-sized blocks on the CPU."""
    nb = x.shape[0]
    if x.device.type != "cpu" or nb == 0:
        return [slice(None)]
    per_item = max(1, x[0].numel())
    step = max(1, _CPU_BLOCK_ELEMENTS // per_item)
    return [slice(s, s + step) for s in range(0, nb, step)]


def forward(x, weight, stride, padding, dilation):
    n, c, h, w = x.shape
    _, g, k, _, ho, wo = weight.shape
    # (N*G, Cg, H, W) input and (N*G, K, K, Ho, Wo) weight: one weight plane per group.
    x5 = x.reshape(n * g, c // g, h, w)
    w5 = weight.reshape(n * g, k, k, ho, wo)
    out = torch.zeros((n * g, c // g, ho, wo), dtype=_acc_dtype(x.dtype), device=x.device)
    phased = _phased(x, stride)
    taps = list(_taps(k, ho, wo, h, w, stride, padding, dilation, phased))
    for blk in _blocks(out):
        ob = out[blk]
        xb, wb = (_block_operand(t[blk], out.dtype) for t in (x5, w5))
        planes = _phase_planes(xb, stride) if phased else {(0, 0): xb}
        for a, b, ro, co, ri, ci, phase in taps:
            ob[:, :, ro, co].addcmul_(planes[phase][:, :, ri, ci], wb[:, None, a, b, ro, co])
    return out.to(x.dtype).view(n, c, ho, wo)


def backward(grad_out, x, weight, stride, padding, dilation, need_x, need_w):
    n, c, h, w = x.shape
    _, g, k, _, ho, wo = weight.shape
    go5 = grad_out.reshape(n * g, c // g, ho, wo)
    x5 = x.reshape(n * g, c // g, h, w)
    w5 = weight.reshape(n * g, k, k, ho, wo)
    acc = _acc_dtype(x.dtype)
    gx = torch.zeros((n * g, c // g, h, w), dtype=acc, device=x.device) if need_x else None
    gw = torch.zeros((n * g, k, k, ho, wo), dtype=acc, device=x.device) if need_w else None
    phased = _phased(x, stride)
    taps = list(_taps(k, ho, wo, h, w, stride, padding, dilation, phased))
    for blk in _blocks(x5):
        gob, xb, wb = (_block_operand(t[blk], acc) for t in (go5, x5, w5))
        if phased:
            x_planes = _phase_planes(xb, stride) if need_w else None
            gx_planes = _phase_planes(gx[blk], stride, zeros=True) if need_x else None
        else:
            x_planes, gx_planes = {(0, 0): xb}, ({(0, 0): gx[blk]} if need_x else None)
        for a, b, ro, co, ri, ci, phase in taps:
            go = gob[:, :, ro, co]
            if need_x:
                gx_planes[phase][:, :, ri, ci].addcmul_(go, wb[:, None, a, b, ro, co])
            if need_w:
                # One output-sized temporary per tap, freed before the next one.
                torch.sum(go * x_planes[phase][:, :, ri, ci], dim=1, dtype=acc,
                          out=gw[blk][:, a, b, ro, co])
        if phased and need_x:
            gxb = gx[blk]
            for (p, q), plane in gx_planes.items():
                gxb[:, :, p::stride, q::stride] = plane
    if gx is not None:
        gx = gx.to(x.dtype).view(n, c, h, w)
    if gw is not None:
        gw = gw.to(weight.dtype).view(weight.shape)
    return gx, gw


def _forward(x, weight, stride, padding, dilation):
    return forward(x.contiguous(), weight.contiguous(), stride, padding, dilation)


def _backward(grad_out, x, weight, stride, padding, dilation, output_mask):
    return backward(grad_out.contiguous(), x.contiguous(), weight.contiguous(), stride, padding,
                    dilation, *output_mask)


register_backend(Backend("torch", None, lambda: Kernels(_forward, _backward),
                         "the pure-PyTorch kernels", auto_order=100))
