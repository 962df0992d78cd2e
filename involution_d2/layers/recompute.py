"""Conv + norm + ReLU outputs recomputed in backward instead of kept.

In a training forward, ``relu(norm(y))`` is kept for backward by the layer that consumes it
(a convolution, an involution, pooling), and ``y`` by a trained norm: two tensors where one
suffices.  :func:`recompute_into` keeps the source alone (``y``, or the input of a cheap
convolution that made ``y``) and recomputes ``relu(norm(y))`` from it when a backward needs
it.  The norm's statistics are those of the forward: a
BatchNorm in training updates its running statistics once (in the forward) and recomputes
with the batch statistics of the same ``y``; FrozenBatchNorm, GroupNorm and a BatchNorm in
eval mode hold no state.  A synchronized BatchNorm (SyncBatchNorm, NaiveSyncBatchNorm)
gathers its statistics from every process again when it is recomputed.

No norm, FrozenBatchNorm2d (a fixed affine map) and BatchNorm2d (outside autocast) take a
shorter way (:class:`_RecomputedDirect`): the forward and each recomputation make the
output in place where they can, and the backward calls ReLU's, the norm's and the
convolution's backward operators directly, as autograd would, instead of building and
differentiating a graph of fresh tensors.  The sums are autograd's, bit for bit.  GroupNorm
and BatchNorm under autocast take the rebuilt graph (:class:`_Recomputed`).

Outside training with gradients (inference, tracing, scripting, compilation) the plain
modules run.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint


def _frozen_batch_norm_type():
    try:
        from detectron2.layers import FrozenBatchNorm2d
    except ImportError:
        return None
    return FrozenBatchNorm2d


_FROZEN_BN = _frozen_batch_norm_type()


def _synchronized_batch_norm_types():
    try:
        from detectron2.layers import NaiveSyncBatchNorm
    except ImportError:
        return (nn.SyncBatchNorm,)
    return (nn.SyncBatchNorm, NaiveSyncBatchNorm)


# BatchNorms whose training statistics are gathered from every process.
_SYNC_BN = _synchronized_batch_norm_types()


# A convolution is recomputed in backward where each output element costs at most this many
# multiply-adds (input channels per group times kernel area): the bytes saved per
# multiply-add spent fall as that grows.  At 512, the one convolution of RedNet kept
# rather than recomputed is res5's strided block's first 1x1 convolution (1024 inputs): it
# would take 2.0 G multiply-adds at 800x1216 (about 1.3 % of a training step) to save
# 7.4 MiB.  The stem (27) and the involutions' reductions (at most 512) are recomputed.
RECOMPUTE_MAX_MACS_PER_ELEMENT = 512


def worth_recomputing(conv):
    """Whether ``conv`` (an nn.Conv2d) is cheap enough to run again in backward."""
    macs = conv.in_channels // conv.groups
    for k in conv.kernel_size:
        macs *= k
    return macs <= RECOMPUTE_MAX_MACS_PER_ELEMENT


def recomputable(norm):
    """Whether ``norm`` (a module or None) can be recomputed from its input (a synchronized
    BatchNorm: and the other processes' inputs, gathered again)."""
    return (norm is None or type(norm) in (nn.BatchNorm2d, nn.GroupNorm) + _SYNC_BN
            or (_FROZEN_BN is not None and type(norm) is _FROZEN_BN))


def _keeps_its_input(norm):
    """Whether autograd keeps the norm's input for its backward (a trained BatchNorm or
    GroupNorm); FrozenBatchNorm2d is an affine map that keeps nothing."""
    return (type(norm) in (nn.BatchNorm2d, nn.GroupNorm) + _SYNC_BN
            and norm.weight is not None
            and (norm.weight.requires_grad or type(norm) is nn.GroupNorm or norm.training))


def _norm(norm, y, weight, bias):
    """``norm(y)`` without touching its state (the forward updated it)."""
    if norm is None:
        return y
    if type(norm) is nn.BatchNorm2d:
        batch_statistics = norm.training or not norm.track_running_stats
        return F.batch_norm(y, None if batch_statistics else norm.running_mean,
                            None if batch_statistics else norm.running_var, weight, bias,
                            batch_statistics, 0.0, norm.eps)
    if type(norm) is nn.GroupNorm:
        return F.group_norm(y, norm.num_groups, weight, bias, norm.eps)
    if type(norm) in _SYNC_BN:
        # The module again, on ``weight`` and ``bias``: its statistics are gathered from the
        # other processes again (which recompute in the same order: the same backward
        # graph), and its running statistics are restored.
        with _statistics_kept([norm]):
            return torch.func.functional_call(
                norm, {name: t for name, t in (("weight", weight), ("bias", bias))
                       if t is not None}, (y,))
    return norm(y)  # FrozenBatchNorm2d: a fixed affine map


def _parameters(norm):
    if norm is None or type(norm) is _FROZEN_BN:
        return None, None  # buffers, not trained
    return norm.weight, norm.bias


def _autocast_state(tensor):
    """The autocast of the forward, to recompute under (as torch.utils.checkpoint does)."""
    device_type = tensor.device.type
    if device_type not in ("cpu", "cuda"):
        return contextlib.nullcontext
    enabled = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type)
    return lambda: torch.autocast(device_type, dtype=dtype, enabled=enabled)


def _make(conv, norm, pre, source, conv_weight, conv_bias, norm_weight, norm_bias):
    """``relu(norm(conv(pre(source))))`` (conv None: ``relu(norm(source))``), statelessly."""
    source = pre(source) if pre is not None else source
    y = conv._conv_forward(source, conv_weight, conv_bias) if conv is not None else source
    return F.relu(_norm(norm, y, norm_weight, norm_bias))


class _Recomputed(torch.autograd.Function):
    """``relu(norm(conv(source)))``, keeping ``source`` and the parameters only: the forward
    runs the modules (a BatchNorm updates its statistics once), the backward recomputes."""

    @staticmethod
    def forward(ctx, source, conv_weight, conv_bias, norm_weight, norm_bias, conv, norm, pre,
                recipe):
        with torch.no_grad():
            y = conv(pre(source) if pre is not None else source) if conv is not None else source
            out = F.relu(norm(y) if norm is not None else y)
        ctx.modules, ctx.recipe = (conv, norm, pre), recipe
        ctx.autocast = _autocast_state(source)
        ctx.save_for_backward(source, conv_weight, conv_bias, norm_weight, norm_bias)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        needs = ctx.needs_input_grad[:5]
        # The consumer's backward ran first and made the output again through the recipe,
        # with its graph: differentiate that one rather than make it a second time.
        graph, ctx.recipe.graph = ctx.recipe.graph, None
        ctx.recipe.value = None  # the graph's tensors go with it, not at the end of backward
        with torch.enable_grad(), ctx.autocast():
            if graph is None:  # a second backward (retain_graph), or a consumer that kept none
                graph = _made_with_graph(ctx.modules, ctx.saved_tensors, needs)
            leaves, out = graph
            wanted = [t for t, need in zip(leaves, needs) if need and t is not None]
            grads = iter(torch.autograd.grad(out, wanted, grad_out) if wanted else ())
        return tuple(next(grads) if need and t is not None else None
                     for t, need in zip(leaves, needs)) + (None, None, None, None)


def _made_with_graph(modules, inputs, needs):
    """(leaves, output) of ``_make`` on fresh leaves of ``inputs`` (source and parameters)
    that require gradients where ``needs`` says."""
    leaves = [t.detach().requires_grad_(need) if t is not None else None
              for t, need in zip(inputs, needs)]
    return leaves, _make(*modules, *leaves)


class _Recipe:
    """What is saved instead of the output: how to make it again (once per backward).
    ``make()`` returns (graph, value): the general path's graph, which the backward of
    :class:`_Recomputed` then differentiates, or None."""

    __slots__ = ("make", "value", "graph")

    def __init__(self, make):
        self.make = make
        self.value = self.graph = None

    def get(self):
        if self.value is None:
            self.graph, self.value = self.make()
        return self.value


def _general_recipe(modules, inputs, held_source, autocast):
    """``inputs``: the source (held as :func:`recompute_into` says: ``held_source()`` gives
    it back) and the parameters."""
    needs = [t is not None and t.requires_grad for t in inputs]
    params = [t.detach() if t is not None else None for t in inputs[1:]]

    def make():
        with torch.enable_grad(), autocast():
            graph = _made_with_graph(modules, [held_source()] + params, needs)
        return graph, graph[1].detach()

    return _Recipe(make)


def _direct_path(conv, norm, source):
    """Whether ``relu(norm(conv(source)))`` takes :class:`_RecomputedDirect`: a plain
    convolution (``convolution_backward`` as called there) or none, and no norm, a
    FrozenBatchNorm2d (a fixed affine map) or a BatchNorm2d outside autocast (whose dtype
    rules the recomputation would have to repeat; autocast takes the rebuilt graph)."""
    if source.device.type not in ("cpu", "cuda"):
        return False
    if conv is not None and not (isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros"
                                 and not isinstance(conv.padding, str)):
        return False
    if type(norm) is nn.BatchNorm2d:
        return not torch.is_autocast_enabled(source.device.type)
    return norm is None or (_FROZEN_BN is not None and type(norm) is _FROZEN_BN)


def _autocast_dtype(tensor):
    """The dtype autocast runs convolutions in, on ``tensor``'s device; None without it."""
    device_type = tensor.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) \
        else None


def _cast(tensor, dtype):
    """``tensor`` as autocast gives it to a convolution: floating tensors other than float64
    in ``dtype`` (None: no autocast)."""
    if (dtype is None or tensor is None or not tensor.is_floating_point()
            or tensor.dtype in (dtype, torch.float64)):
        return tensor
    return tensor.to(dtype)


def _frozen_scale_shift(norm, dtype):
    """FrozenBatchNorm2d's scale and shift, as its forward computes them."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias - norm.running_mean * scale
    return scale.reshape(1, -1, 1, 1).to(dtype), shift.reshape(1, -1, 1, 1).to(dtype)


def _batch_norm_arguments(norm):
    """(running mean, running variance, whether batch statistics are used) as
    BatchNorm2d.forward passes them to ``F.batch_norm``."""
    batch_statistics = norm.training or (norm.running_mean is None and norm.running_var is None)
    keeps_statistics = not norm.training or norm.track_running_stats
    return (norm.running_mean if keeps_statistics else None,
            norm.running_var if keeps_statistics else None, batch_statistics)


@torch.no_grad()
def _conv_output(conv, source, weight, bias, cast):
    """``conv(source)`` (the source itself without a convolution), the convolution's inputs
    cast as autocast casts them to ``cast``."""
    if conv is None:
        return source
    with torch.autocast(source.device.type, enabled=False):
        return F.conv2d(_cast(source, cast), _cast(weight, cast), _cast(bias, cast),
                        conv.stride, conv.padding, conv.dilation, conv.groups)


@torch.no_grad()
def _norm_relu(norm, y, norm_weight, norm_bias, batch_norm_arguments=None):
    """``(relu(norm(y)), state)`` with the same operations, in the same order and dtypes, as
    the modules with autograd (FrozenBatchNorm2d multiplies, then adds); in place, in ``y``
    (a convolution's output: without a convolution the path is taken for a BatchNorm only),
    except for a BatchNorm2d, which makes its output.  It runs as ``F.batch_norm`` does with
    ``batch_norm_arguments`` (:func:`_batch_norm_arguments` as of the forward), without
    touching its running statistics (the forward updated them); ``state`` is what its
    backward needs: those arguments and the statistics of ``y``."""
    if norm is None:
        return y.relu_(), None
    if type(norm) is nn.BatchNorm2d:
        mean, var, batch_statistics = batch_norm_arguments
        if batch_statistics and mean is not None:
            # Copies: the same kernel as the forward's (which takes running statistics),
            # whose update here is thrown away.
            mean, var = mean.clone(), var.clone()
        out, *state = torch._batch_norm_impl_index(
            y, norm_weight, norm_bias, mean, var, batch_statistics,
            norm.momentum if norm.momentum is not None else 0.0, norm.eps,
            torch.backends.cudnn.enabled)
        return out.relu_(), (*batch_norm_arguments, *state)
    scale, shift = _frozen_scale_shift(norm, y.dtype)
    return y.mul_(scale).add_(shift).relu_(), None


class _RecomputedDirect(torch.autograd.Function):
    """``relu(norm(conv(source)))`` (or ``relu(norm(source))``) for no norm, FrozenBatchNorm2d
    or BatchNorm2d, keeping ``source`` and the parameters only.  The forward and each
    recomputation make the output in place where they can (the modules make a tensor per
    step); the backward calls ReLU's, the norm's and the convolution's backward operators
    directly, as autograd would, instead of differentiating a rebuilt graph: the same sums,
    bit for bit."""

    @staticmethod
    def forward(ctx, source, weight, bias, norm_weight, norm_bias, conv, norm, pre, cast,
                recipe):
        ctx.modules, ctx.cast, ctx.recipe = (conv, norm, pre), cast, recipe
        ctx.save_for_backward(source, weight, bias, norm_weight, norm_bias)
        with torch.no_grad():
            conv_input = pre(source) if pre is not None else source
            y = _conv_output(conv, conv_input, weight, bias, cast)
            if type(norm) is nn.BatchNorm2d:
                # The module: its running statistics are updated here, once.
                return norm(y).relu_()
            return _norm_relu(norm, y, None, None)[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        source, weight, bias, norm_weight, norm_bias = ctx.saved_tensors
        conv, norm, pre = ctx.modules
        needs = ctx.needs_input_grad[:5]
        # Made again by the consumer's backward, which ran first (or here, if it kept none).
        out = ctx.recipe.get()
        pre_graph, y, norm_state = ctx.recipe.graph
        ctx.recipe.value = ctx.recipe.graph = None
        grad = torch.ops.aten.threshold_backward(grad_out, out, 0)
        del out
        grad_norm_weight = grad_norm_bias = None
        if type(norm) is nn.BatchNorm2d:
            mean, var, batch_statistics, save_mean, save_invstd, reserve, implementation = \
                norm_state
            needs_y = needs[0] or (conv is not None and any(needs[1:3]))
            grad, grad_norm_weight, grad_norm_bias = \
                torch.ops.aten._batch_norm_impl_index_backward(
                    implementation, y, grad, norm_weight, mean, var, save_mean, save_invstd,
                    batch_statistics, norm.eps, [needs_y, needs[3], needs[4]], reserve)
        elif norm is not None:
            grad.mul_(_frozen_scale_shift(norm, grad.dtype)[0])
        del y
        if conv is None or grad is None:  # no gradient reaches the convolution or the source
            return (grad if conv is None else None, None, None, grad_norm_weight,
                    grad_norm_bias, None, None, None, None, None)
        if pre is not None:
            source_leaf, conv_input = pre_graph
        else:
            conv_input = source
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, _cast(conv_input.detach(), ctx.cast), _cast(weight, ctx.cast),
            None if bias is None else [bias.shape[0]], list(conv.stride), list(conv.padding),
            list(conv.dilation), False, [0] * len(conv.stride), conv.groups,
            [needs[0], needs[1], needs[2]])
        # Autocast's casts, differentiated: each gradient in its input's dtype.
        grad_input = grad_input.to(conv_input.dtype) if grad_input is not None else None
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        if pre is not None and needs[0]:
            with torch.enable_grad():
                grad_input, = torch.autograd.grad(conv_input, source_leaf, grad_input)
        return (grad_input, grad_weight, grad_bias, grad_norm_weight, grad_norm_bias,
                None, None, None, None, None)


def _direct_recipe(conv, norm, pre, cast, held_source, params, needs_source):
    """The recipe of :class:`_RecomputedDirect`: its output, and as its graph, what the
    backward needs besides: with ``pre``, the graph of ``pre`` (its leaf and output); with a
    BatchNorm2d, the norm's input and state."""
    weight, bias, norm_weight, norm_bias = [p.detach() if p is not None else None
                                            for p in params]
    keep_y = type(norm) is nn.BatchNorm2d
    # As the forward (just after this) passes them, whatever the module's mode is later.
    batch_norm_arguments = _batch_norm_arguments(norm) if keep_y else None

    def make():
        source = held_source()
        pre_graph = None
        if pre is not None:
            with torch.enable_grad(), torch.autocast(source.device.type, enabled=False):
                # Pooling runs in its input's dtype under autocast too.
                leaf = source.detach().requires_grad_(needs_source)
                pre_graph = (leaf, pre(leaf))
            source = pre_graph[1].detach()
        y = _conv_output(conv, source, weight, bias, cast)
        out, state = _norm_relu(norm, y, norm_weight, norm_bias, batch_norm_arguments)
        return (pre_graph, y if keep_y else None, state), out

    return _Recipe(make)


def _same(a, b):
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype)


def recompute_into(consumer, source, norm, conv=None, pre=None):
    """``consumer(relu(norm(conv(pre(source)))))`` (without ``conv``: of
    ``relu(norm(source))``; without ``pre``: of the source itself) where neither that output
    nor the convolution's (nor ``pre``'s) are kept for backward, by the consumer or by the
    norm: they are recomputed from ``source`` when a backward needs them.  ``pre`` is a
    stateless module or function, such as the pooling before a strided involution's
    reduction.  The plain computation where that does not apply (no gradients, tracing,
    compilation)."""
    def conv_output():
        return conv(pre(source) if pre is not None else source)

    def plain():
        y = conv_output() if conv is not None else source
        y = norm(y) if norm is not None else y
        # In place, as the modules' ReLU(inplace=True), unless that would change the source.
        return consumer(F.relu(y) if y is source else F.relu_(y))

    if pre is not None and conv is None:
        raise ValueError("recompute_into: pre runs before conv; pass a conv with it")
    if conv is not None and not worth_recomputing(conv):
        # Its output is kept; the norm and ReLU may still be recomputed from it.
        return recompute_into(consumer, conv_output(), norm)
    if not (torch.is_grad_enabled() and recomputable(norm) and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and (conv is not None or _keeps_its_input(norm))):  # else nothing to gain
        return plain()
    conv_weight = conv.weight if conv is not None else None
    conv_bias = conv.bias if conv is not None else None
    norm_weight, norm_bias = _parameters(norm)
    params = (conv_weight, conv_bias, norm_weight, norm_bias)
    if not (source.requires_grad or any(p is not None and p.requires_grad for p in params)):
        return plain()
    # Whatever saves tensors around this call (a memory counter, an outer recomputation)
    # still sees every tensor but ``out``; the recipe holds the source the same way, so that
    # a source recomputed by an outer recipe is not kept here either.
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
    outer_pack, outer_unpack = outer if outer is not None else (None, None)
    if outer_pack is not None:
        held = outer_pack(source)
        held_source = lambda: outer_unpack(held)  # noqa: E731
    else:
        # Detached: the recipe, held by the graph, must not hold the source's history.
        held = source.detach()
        held_source = lambda: held  # noqa: E731
    if _direct_path(conv, norm, source):
        cast = _autocast_dtype(source)
        recipe = _direct_recipe(conv, norm, pre, cast, held_source, params,
                                source.requires_grad)
        out = _RecomputedDirect.apply(source, *params, conv, norm, pre, cast, recipe)
    else:
        recipe = _general_recipe((conv, norm, pre), (source, *params), held_source,
                                 _autocast_state(source))
        out = _Recomputed.apply(source, *params, conv, norm, pre, recipe)

    def pack(t):
        if _same(t, out):
            return recipe
        return outer_pack(t) if outer_pack is not None else t.detach()

    def unpack(packed):
        if packed is recipe:
            return recipe.get()
        return outer_unpack(packed) if outer_unpack is not None else packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        return consumer(out)


# The largest window offset that the int16 bookkeeping of _ReluMaxPool holds (its bitwise
# negation, -1 - offset, fits too).
_INT16_MAX_OFFSET = torch.iinfo(torch.int16).max


def _window_origins(in_width, out_size, stride, padding, device):
    """The flat index (into an input plane ``in_width`` wide) of each pooling window's
    top-left corner, padding included (negative at the top and left borders)."""
    rows = torch.arange(out_size[0], device=device) * stride - padding
    columns = torch.arange(out_size[1], device=device) * stride - padding
    return rows.view(-1, 1) * in_width + columns.view(1, -1)


class _ReluMaxPool(torch.autograd.Function):
    """``max_pool2d(relu(x))``, keeping for backward where each window's maximum lies, as an
    int16 offset from the window's corner, negated (bitwise) where the pooled output is not
    positive: two bytes an element of the output, where autograd keeps the ReLU's output
    (for both ReLU and pooling) and int64 indices.  ReLU is monotone, so it runs after the
    pooling, on a quarter of the elements; an output is positive exactly where the element
    it took is, so the sign at the output's resolution tells where the gradient passes.
    Inputs too wide for int16 offsets keep int32 indices and a boolean mask."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        out, indices = F.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
        nonpositive = out <= 0
        width = x.shape[-1]
        ctx.shape = x.shape
        ctx.pooling = [[k, k] for k in (kernel_size, stride, padding)]
        ctx.offsets = (kernel_size - 1) * (width + 1) <= _INT16_MAX_OFFSET
        if ctx.offsets:
            offsets = (indices - _window_origins(width, out.shape[-2:], stride, padding,
                                                 x.device)).to(torch.int16)
            ctx.save_for_backward(torch.where(nonpositive, offsets.bitwise_not(), offsets))
        else:
            ctx.save_for_backward(nonpositive, indices.to(torch.int32))
        return out.relu_()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (kernel_size, _), (stride, _), (padding, _) = ctx.pooling
        if ctx.offsets:
            kept, = ctx.saved_tensors
            nonpositive = kept < 0
            indices = torch.where(nonpositive, kept.bitwise_not(), kept).long() + \
                _window_origins(ctx.shape[-1], kept.shape[-2:], stride, padding, kept.device)
        else:
            nonpositive, indices = ctx.saved_tensors
            indices = indices.long()
        # Pooling's own backward reads only the shape of its input: a stand-in of one element
        # takes the input's place.
        stand_in = grad_out.new_empty(()).expand(ctx.shape)
        grad = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out.masked_fill(nonpositive, 0), stand_in, ctx.pooling[0], ctx.pooling[1],
            ctx.pooling[2], [1, 1], False, indices)
        return grad, None, None, None


def relu_max_pool(x, kernel_size, stride, padding):
    """``F.max_pool2d(F.relu(x), ...)`` that keeps int16 window offsets for backward (see
    :class:`_ReluMaxPool`) where a backward will run; the plain functions otherwise
    (inference, tracing, compilation)."""
    if (torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()):
        return _ReluMaxPool.apply(x, kernel_size, stride, padding)
    return F.max_pool2d(F.relu(x), kernel_size, stride, padding)


@contextlib.contextmanager
def _statistics_kept(modules):
    """BatchNorm running statistics (and counters) of ``modules`` as they were on entry: a
    recomputation must not update them a second time."""
    norms = [m for module in modules for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.training and m.track_running_stats]
    kept = [(m, m.running_mean.clone(), m.running_var.clone(),
             m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in kept:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def checkpointed(run, modules, *inputs):
    """``run(*inputs)`` keeping only ``inputs`` for backward, which runs it again
    (``torch.utils.checkpoint``, non-reentrant); the BatchNorms of ``modules`` (a module or a
    sequence of them), which ``run`` calls, update their running statistics in the forward
    only."""
    if torch.compiler.is_compiling():
        # torch.compile takes no context_fn; its recomputation (the partitioner's) leaves the
        # running statistics' updates in the forward graph.
        return checkpoint(run, *inputs, use_reentrant=False)
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    return checkpoint(run, *inputs, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _statistics_kept(modules)))
