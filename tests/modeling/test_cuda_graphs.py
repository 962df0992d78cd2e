"""RedNet-50 and a Faster R-CNN's backbone plus FPN under CUDA graphs: captured with
``torch.cuda.graph`` and compiled with ``torch.compile(mode="reduce-overhead")``, their outputs
equal to eager ones (GPU with CuPy only).

Capture needs the kernels compiled and each shape's kernel choice measured beforehand: the
warm-up runs that CUDA graphs ask for anyway do both (``cupy_backend`` never times inside a
capture)."""
import pytest
import torch

from helpers import build_yacs_model, requires_cupy, yacs_config


def _faster_rcnn_backbone():
    cfg = yacs_config("COCO-Detection/faster_rcnn_rednet50_fpn_1x")
    cfg.MODEL.DEVICE = "cuda"
    model = build_yacs_model(cfg).eval()
    # Random weights under frozen norms overflow through 16 blocks (involution is quadratic
    # in its input): small residual branches keep the values finite and every kernel's work
    # in the output.
    with torch.no_grad():
        for module in model.modules():
            norm = getattr(module, "bn3", None)
            if norm is not None:
                norm.weight.mul_(0.05)
    return model.backbone


def _inputs(seed):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(2, 3, 128, 160, device="cuda", generator=generator)


def _assert_same(got, want):
    got = got if isinstance(got, dict) else {"out": got}
    want = want if isinstance(want, dict) else {"out": want}
    assert sorted(got) == sorted(want)
    for name in want:
        assert torch.isfinite(want[name]).all(), name
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")


@requires_cupy
@pytest.mark.parametrize("part", ["rednet50", "rednet50_fpn"])
def test_cupy_model_captured_in_a_cuda_graph_equals_eager(part):
    fpn = _faster_rcnn_backbone()
    module = fpn.bottom_up if part == "rednet50" else fpn
    static_input = _inputs(0)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the warm-up: kernels compiled, choices measured
            for _ in range(2):
                module(static_input)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = module(static_input)
        for seed in (1, 2):  # replays on new inputs
            static_input.copy_(_inputs(seed))
            graph.replay()
            torch.cuda.synchronize()
            _assert_same(static_output, module(static_input))


@requires_cupy
@pytest.mark.parametrize("part", ["rednet50", "rednet50_fpn"])
def test_cupy_model_compiled_with_reduce_overhead_equals_eager(part):
    fpn = _faster_rcnn_backbone()
    module = fpn.bottom_up if part == "rednet50" else fpn
    compiled = torch.compile(module, mode="reduce-overhead")
    with torch.no_grad():
        for seed in range(4):  # warm-up, recording, then replays of the recorded graph
            x = _inputs(seed)
            got = compiled(x)
            got = {k: v.clone() for k, v in got.items()} if isinstance(got, dict) else got.clone()
            _assert_same(got, module(x))
