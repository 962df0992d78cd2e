"""Training memory of RedNet: norm+ReLU outputs recomputed in backward (default) and the
official with_cp (the blocks checkpointed, two at a time) give the same outputs, gradients
and BatchNorm statistics as the plain network, and keep fewer bytes for backward (counted
exactly)."""
import pytest
import torch

from helpers import requires_detectron2, yacs_config


def small_rednet(norm, **kwargs):
    from involution_d2.modeling.backbone.rednet import RedNet

    torch.manual_seed(0)
    return RedNet(depth=26, norm=norm, stem_out_channels=16, res2_out_channels=64,
                  out_features=["res5"], involution_kwargs=dict(group_channels=4),
                  **kwargs).double()


def train_step(model, x):
    """Output, gradients (input's and parameters'), state after the step, and the bytes
    saved for backward (each storage once; parameters and buffers excluded)."""
    from benchmarking.models import count_saved_bytes

    model.train()
    x = x.clone().requires_grad_()
    out, saved_bytes = count_saved_bytes(model, lambda: model(x)["res5"])
    out.square().sum().backward()
    grads = [x.grad] + [p.grad for p in model.parameters()]
    return out.detach(), grads, model.state_dict(), saved_bytes


VARIANTS = {"recomputed": dict(recompute_activations=True),
            "with_cp": dict(recompute_activations=False, with_cp=True),
            "with_cp_recomputed": dict(recompute_activations=True, with_cp=True)}


@requires_detectron2
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "GN"])
def test_same_results_fewer_bytes(norm, variant):
    plain = small_rednet(norm, recompute_activations=False)
    other = small_rednet(norm, **VARIANTS[variant])
    other.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    want_out, want_grads, want_state, want_bytes = train_step(plain, x)
    out, grads, state, saved_bytes = train_step(other, x)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # BatchNorm's running statistics and counters: updated once, as without recomputation.
    assert state.keys() == want_state.keys()
    for key in want_state:
        torch.testing.assert_close(state[key], want_state[key], rtol=0, atol=0)
    limit = 0.9 if norm == "FrozenBN" and variant == "recomputed" else 0.85
    assert saved_bytes < limit * want_bytes


@requires_detectron2
@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_with_cp_keeps_the_image_and_every_other_blocks_input(norm):
    """with_cp checkpoints the stem and each stage's blocks two at a time: a training forward
    keeps the image and the inputs of blocks 0, 2, 4... of each stage, and nothing else."""
    from involution_d2.modeling.backbone.rednet import CHECKPOINT_SEGMENT_BLOCKS

    model = small_rednet(norm, with_cp=True).train()
    resident = {t.untyped_storage().data_ptr()
                for t in list(model.parameters()) + list(model.buffers())}
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64, requires_grad=True)
    want = {x.untyped_storage().data_ptr()}
    hooks = []
    for name in model.stage_names:
        for index, block in enumerate(getattr(model, name)):
            if index % CHECKPOINT_SEGMENT_BLOCKS == 0:
                hooks.append(block.conv1.register_forward_pre_hook(  # the block's input
                    lambda module, args: want.add(args[0].untyped_storage().data_ptr())))
    kept = set()

    def pack(t):
        if t.untyped_storage().data_ptr() not in resident:
            kept.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)["res5"]
    for hook in hooks:
        hook.remove()
    assert CHECKPOINT_SEGMENT_BLOCKS == 2 and len(want) == 1 + 1 + 1 + 2 + 1  # depth 26
    assert kept == want
    out.square().sum().backward()  # the backward runs the segments again
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@requires_detectron2
def test_with_cp_leaves_frozen_stages_alone():
    """Checkpointing a frozen block (no gradient through it) would keep its input and save
    nothing: with_cp keeps fewer bytes than the recomputation alone, frozen stages or not."""
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64)
    for freeze_at in (2, 0):
        recomputed = small_rednet("FrozenBN", freeze_at=freeze_at)
        checkpointed = small_rednet("FrozenBN", freeze_at=freeze_at, with_cp=True)
        checkpointed.load_state_dict(recomputed.state_dict())
        want_out, _, _, recomputed_bytes = train_step(recomputed, x)
        out, _, _, checkpointed_bytes = train_step(checkpointed, x)
        torch.testing.assert_close(out, want_out, rtol=0, atol=0)
        assert checkpointed_bytes < recomputed_bytes, freeze_at
    # The frozen stem and res2 alone (checkpointed, they would keep their inputs).
    from benchmarking.models import count_saved_bytes

    frozen = small_rednet("FrozenBN", freeze_at=2, with_cp=True).train()
    _, frozen_bytes = count_saved_bytes(frozen, lambda: frozen.res2(frozen.stem(x)))
    assert frozen_bytes == 0


@requires_detectron2
@pytest.mark.parametrize("freeze_at", [0, 1])
def test_a_trained_stem_pays_for_keeping_the_strided_blocks_involution_inputs(freeze_at):
    """The strided blocks' involution input is kept where the stem is trained (its bytes pay
    for it); where the stem is frozen, it is made again in backward by conv1 from the block
    input. Same results either way."""
    from involution_d2.modeling.backbone.rednet import RedNetBottleneck

    plain = small_rednet("FrozenBN", freeze_at=freeze_at, recompute_activations=False)
    model = small_rednet("FrozenBN", freeze_at=freeze_at)
    model.load_state_dict(plain.state_dict())
    strided = [b for b in model.modules() if isinstance(b, RedNetBottleneck) and b.stride > 1]
    involution_inputs = []  # held: no other tensor takes their place in memory
    for block in strided:
        block.conv2.register_forward_pre_hook(
            lambda module, args: involution_inputs.append(args[0]))
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    kept = set()
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: kept.add(t.untyped_storage().data_ptr()) or t, lambda t: t):
        out = model(x)["res5"]
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    want_out, want_grads, _, _ = train_step(plain, x)
    want_grads = want_grads[1:]  # the input's aside
    assert len(strided) == 3
    assert all(block.rerun_conv1 == (freeze_at > 0) for block in strided)
    kept_inputs = [t for t in involution_inputs if t.untyped_storage().data_ptr() in kept]
    assert len(kept_inputs) == (3 if freeze_at == 0 else 0)
    torch.testing.assert_close(out.detach(), want_out, rtol=0, atol=0)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@requires_detectron2
def test_frozen_stages_and_inference_take_the_plain_path():
    model = small_rednet("FrozenBN", freeze_at=2)  # stem and res2 frozen, recompute default
    plain = small_rednet("FrozenBN", freeze_at=2, recompute_activations=False)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64)
    torch.testing.assert_close(train_step(model, x)[0], train_step(plain, x)[0])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["res5"], plain.eval()(x)["res5"])


@requires_detectron2
def test_both_config_systems_set_the_options():
    from detectron2.config import LazyConfig, instantiate
    from detectron2.modeling import build_model

    from helpers import CONFIG_ROOT

    cfg = yacs_config("COCO-Detection/faster_rcnn_rednet50_fpn_1x",
                      overrides={"MODEL.REDNET.DEPTH": 26, "MODEL.REDNET.WITH_CP": True,
                                 "MODEL.REDNET.RECOMPUTE_ACTIVATIONS": False})
    yacs_net = build_model(cfg).backbone.bottom_up
    lazy = LazyConfig.load(f"{CONFIG_ROOT}/COCO-Detection/faster_rcnn_rednet50_fpn_1x.py")
    lazy = LazyConfig.apply_overrides(lazy, ["model.backbone.bottom_up.depth=26",
                                             "model.backbone.bottom_up.with_cp=True",
                                             "model.backbone.bottom_up.recompute_activations="
                                             "False"])
    lazy_net = instantiate(lazy.model.backbone.bottom_up)
    for net in (yacs_net, lazy_net):
        blocks = [m for m in net.modules() if hasattr(m, "with_cp")]
        assert blocks and all(m.with_cp for m in blocks)
        assert not any(m.recompute_activations for m in net.modules()
                       if hasattr(m, "recompute_activations"))
    defaults = build_model(yacs_config("COCO-Detection/faster_rcnn_rednet50_fpn_1x",
                                       overrides={"MODEL.REDNET.DEPTH": 26}))
    flags = [(m.recompute_activations, getattr(m, "with_cp", False))
             for m in defaults.modules() if hasattr(m, "recompute_activations")]
    assert flags and all(flags_ == (True, False) for flags_ in flags)


@requires_detectron2
@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_recomputation_under_autocast_matches(norm):
    """bfloat16 autocast (CPU): the backward recomputes in the forward's dtypes."""
    plain = small_rednet(norm, recompute_activations=False).float()
    other = small_rednet(norm).float()
    other.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 48)
    results = []
    for model in (plain, other):
        model.train()
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(xi)["res5"]
        out.float().square().sum().backward()
        results.append((out.detach(), [xi.grad] + [p.grad for p in model.parameters()]))
    (want_out, want_grads), (out, grads) = results
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def _kept_for_backward(module, x):
    """The output, and the (shape, dtype) of the tensors kept for backward (parameters
    aside)."""
    own = {t.data_ptr() for t in list(module.parameters()) + list(module.buffers())}
    kept = []

    def pack(t):
        if t.data_ptr() not in own:
            kept.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    return out, kept


@requires_detectron2
@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_stem_keeps_pooling_offsets_instead_of_its_relu_output(norm):
    """The stem's largest tensor, its last ReLU output (kept by the ReLU and the pooling), is
    not kept: the pooling's int16 window offsets are, their sign the ReLU's mask. Same output,
    gradients and statistics."""
    from involution_d2.modeling.backbone.rednet import RedNetStem

    def stem(recompute):
        torch.manual_seed(0)
        module = RedNetStem(3, 16, norm=norm, involution_kernel=3,
                            involution_kwargs=dict(group_channels=4)).double().train()
        module.recompute_activations = recompute
        return module

    x = torch.randn(2, 3, 32, 24, dtype=torch.float64, requires_grad=True)
    results = {}
    for recompute in (False, True):
        module = stem(recompute)
        out, kept = _kept_for_backward(module, x)
        out.square().sum().backward()
        relu_output = [s for s in kept if s == ((2, 16, 16, 12), torch.float64)]
        results[recompute] = (out.detach(), [x.grad.clone()] + [p.grad for p in module.parameters()],
                              module.state_dict(), relu_output, kept)
        x.grad = None
    (want_out, want_grads, want_state, plain_relu, _), (out, grads, state, relu, kept) = (
        results[False], results[True])
    # Without: the ReLU output (kept by the ReLU and the pooling) and, where the norm is
    # trained, its input; with: the norm's input alone.
    assert (len(plain_relu), len(relu)) == ((3, 1) if norm == "BN" else (2, 0))
    # At the pooled resolution, two bytes an element: a quarter of the ReLU input's elements.
    assert ((2, 16, 8, 6), torch.int16) in kept
    assert not [s for s in kept if s[1] in (torch.bool, torch.int32, torch.int64)]
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for key in want_state:  # BatchNorm statistics: updated once
        torch.testing.assert_close(state[key], want_state[key], rtol=0, atol=0)


@requires_detectron2
def test_with_cp_trains_under_torch_compile():
    """torch.compile traces the checkpoints (its partitioner recomputes in backward; the
    running statistics are updated in the forward graph only): same outputs, gradients and
    BatchNorm statistics as the plain network in eager mode. aot_eager is inductor's
    autograd path without its code generation."""
    plain = small_rednet("BN", recompute_activations=False)
    checkpointed = small_rednet("BN", with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    want_out, want_grads, want_state, _ = train_step(plain, x)
    compiled = torch.compile(checkpointed, backend="aot_eager")
    checkpointed.train()
    xi = x.clone().requires_grad_()
    out = compiled(xi)["res5"]
    out.square().sum().backward()
    torch.testing.assert_close(out.detach(), want_out, rtol=1e-12, atol=1e-12)
    grads = [xi.grad] + [p.grad for p in checkpointed.parameters()]
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    state = checkpointed.state_dict()
    for key in want_state:
        torch.testing.assert_close(state[key], want_state[key], rtol=1e-12, atol=1e-12)
