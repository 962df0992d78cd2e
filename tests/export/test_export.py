"""The involution operator in exported and compiled graphs: one custom-op node for
torch.jit.trace (Detectron2's TracingAdapter), torch.export and torch.compile; lowered to
standard operators for ONNX (checked with onnxruntime)."""
import importlib.util
import operator
import os
import sys

import pytest
import torch

import torch.nn.functional as F

from involution_d2 import export
from involution_d2.ops import involution, output_size
from involution_d2.ops.export import involution_by_rows

from helpers import REPO, load_script, requires_detectron2

INVOLUTION = torch.ops.involution_d2.involution.default
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
requires_onnx = pytest.mark.skipif(
    not HAS_ONNX, reason='needs onnx, onnxscript and onnxruntime: pip install -e ".[export]"')


def export_tool():
    """tools/export_model.py as a module (its command-line functions)."""
    return load_script("tools/export_model.py")


def make_inputs(n, c, g, h, w, k, s, p, d, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    ho, wo = output_size(h, k, s, p, d), output_size(w, k, s, p, d)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(n, g, k, k, ho, wo, generator=gen, dtype=dtype)
    return x, weight


def involution_shifted_sum(x, weight, stride, padding, dilation):
    """``involution(x, weight, ...)`` as a sum of K*K shifted products: pad the input once,
    then for each tap (a, b) multiply a strided slice of it with that tap's weights.  Needs
    K*K output-sized terms in an eager run; an exported graph's runtime reuses them."""
    n, c, h, w = x.shape
    _, g, k, _, ho, wo = weight.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    padded = padded.reshape(n, g, c // g, h + 2 * padding, w + 2 * padding)
    out = None
    for a in range(k):
        for b in range(k):
            rows = slice(a * dilation, a * dilation + (ho - 1) * stride + 1, stride)
            cols = slice(b * dilation, b * dilation + (wo - 1) * stride + 1, stride)
            term = padded[:, :, :, rows, cols] * weight[:, :, a:a + 1, b]
            out = term if out is None else out + term
    return out.reshape(n, c, ho, wo)


@pytest.mark.parametrize("lowering", [involution_by_rows, involution_shifted_sum])
@pytest.mark.parametrize("shape", [(2, 8, 2, 9, 11, 3, 1, 1, 1), (1, 12, 3, 13, 10, 5, 2, 4, 2),
                                   (2, 6, 6, 8, 9, 7, 2, 0, 1)])
def test_lowerings_match_reference(lowering, shape):
    x, weight = make_inputs(*shape)
    s, p, d = shape[-3:]
    torch.testing.assert_close(lowering(x, weight, s, p, d),
                               involution(x, weight, s, p, d, backend="reference"))


def test_operator_registration_passes_opcheck():
    # Schema, fake kernel against the real one, autograd registration, AOT dispatch.
    x, weight = make_inputs(2, 8, 2, 7, 6, 3, 2, 1, 1)
    torch.library.opcheck(INVOLUTION, (x.requires_grad_(), weight.requires_grad_(), 2, 1, 1))


def test_compile_runs_the_operator_as_one_node_with_its_gradient():
    x, weight = make_inputs(2, 8, 2, 9, 11, 3, 1, 1, 1, dtype=torch.float32)
    x.requires_grad_()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(lambda a, b: involution(a, b, 1, 1, 1) * 2, backend=backend,
                             fullgraph=True)
    out = compiled(x, weight)
    out.sum().backward()
    want = involution(x.detach(), weight, 1, 1, 1, backend="reference") * 2
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(x.grad, torch.autograd.grad(
        involution(x, weight, 1, 1, 1, backend="reference").sum() * 2, x)[0])
    (graph,) = graphs
    calls = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert calls == [torch.ops.involution_d2.involution, operator.mul]


# ----------------------------------------------------------------------- with Detectron2
DETECTORS = [
    "COCO-Detection/faster_rcnn_rednet50_fpn_1x",
    "COCO-Detection/faster_rcnn_rednet50_invfpn_1x",
    "COCO-Detection/faster_rcnn_rednet50_invfpn_invhead_1x",
    "COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x",
    "COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_1x",
    "COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x",
    "COCO-Detection/retinanet_rednet50_fpn_1x",
    "COCO-Detection/retinanet_rednet50_invfpn_1x",
]


def tiny_detector(name):
    from helpers import build_yacs_model, yacs_config
    from helpers import tiny_detection as tiny

    return build_yacs_model(yacs_config(name, tiny)).eval()


def native_in_use():
    from involution_d2.ops import resolve_backend

    return resolve_backend("auto", torch.device("cpu")) == "native"


@requires_detectron2
@pytest.mark.parametrize("name", DETECTORS)
def test_detectors_trace_through_tracing_adapter(name, tmp_path):
    from detectron2.utils.testing import assert_instances_allclose

    from involution_d2.layers import Involution

    model = tiny_detector(name)
    # Traced on one size, saved and loaded, then run on another size: nothing is baked in.
    traced, want, got = export.trace_detector(
        model, export.sample_image((64, 96)), str(tmp_path / "model.ts"),
        check_image=export.sample_image((96, 128), seed=1))
    assert len(want) > 0
    assert_instances_allclose(want, got, size_as_tensor=True)
    # Eager and traced models compute the same way (one fused operator per involution in
    # both): bit for bit on the CPU, masks included.
    for field, value in want.get_fields().items():
        other = got.get(field)
        assert torch.equal(getattr(value, "tensor", value), getattr(other, "tensor", other)), field
    if native_in_use():
        # Every involution call is one operator node (shared heads run once per level).
        layers = sum(isinstance(m, Involution) for m in model.modules())
        assert export.count_involution_nodes(traced) >= layers > 0
        assert "addcmul" not in str(traced.inlined_graph)


@requires_detectron2
@pytest.mark.parametrize("name", DETECTORS)
def test_detectors_script_with_instances(name, tmp_path):
    """Detectron2's scripting path (scripting_with_instances, as its deployment guide and
    export tool use it): scripted, saved and loaded, the model's inference equals eager on a
    batch of two images of different sizes."""
    from detectron2.utils.testing import assert_instances_allclose

    from involution_d2.layers import Involution

    model = tiny_detector(name)
    scripted = export.script_detector(model, str(tmp_path / "model.ts"))
    images = [export.sample_image((64, 96)), export.sample_image((96, 128), seed=1)]
    wants, gots = export.scripted_predictions(model, scripted, images)
    for want, got in zip(wants, gots):
        assert len(want) > 0
        assert_instances_allclose(want, got, size_as_tensor=True)
    # Every involution layer calls the fused operator from TorchScript.
    layers = sum(isinstance(m, Involution) for m in model.modules())
    assert export.count_involution_nodes(scripted) >= layers > 0


@requires_detectron2
def test_export_tool_scripts_the_detector(tmp_path, capsys):
    tool = export_tool()
    args = tool.parse_args(["--config-file", os.path.join(REPO, "configs", DETECTORS[5] + ".py"),
                            "--format", "torchscript", "--method", "scripting", "--size", "64",
                            "96", "--output", str(tmp_path), "model.backbone.bottom_up.depth=26",
                            "model.backbone.bottom_up.norm=GN"])
    results = tool.export(args)
    assert results["torchscript"] == str(tmp_path / "model.ts")
    out = capsys.readouterr().out
    assert "the detector scripted (" in out and "on two images, equal to eager" in out
    assert isinstance(torch.jit.load(results["torchscript"]), torch.jit.ScriptModule)


@requires_detectron2
def test_backbone_goes_through_torch_export(tmp_path):
    from involution_d2.layers import Involution

    model = tiny_detector(DETECTORS[0])
    tensor = export.backbone_input(model, export.sample_image((64, 96)))
    program = export.export_backbone(model, tensor, str(tmp_path / "backbone.pt2"))
    layers = sum(isinstance(m, Involution) for m in model.backbone.bottom_up.modules())
    assert export.count_involution_nodes(program) == layers > 0
    with torch.no_grad():
        want = export.Backbone(model)(tensor)
    loaded = torch.export.load(str(tmp_path / "backbone.pt2"))
    for got, w in zip(loaded.module()(tensor), want):
        torch.testing.assert_close(got, w)


@requires_detectron2
@requires_onnx
def test_export_tool_writes_checked_onnx_with_standard_operators(tmp_path, capsys):
    import onnx

    tool = export_tool()
    args = tool.parse_args(["--config-file", os.path.join(REPO, "configs", DETECTORS[0] + ".yaml"),
                            "--format", "onnx", "--size", "64", "96", "--output", str(tmp_path),
                            "MODEL.REDNET.DEPTH", "26"])
    results = tool.export(args)
    path, error = results["onnx"]
    assert error < 1e-5
    graph = onnx.load(path).graph
    assert {node.domain for node in graph.node} == {""}  # the standard domain only
    assert "Conv" in {node.op_type for node in graph.node}
    assert "relative error" in capsys.readouterr().out


@requires_detectron2
def test_backbone_compiles_as_one_graph():
    # torch.compile captures the whole RedNet backbone (one fused operator node per
    # involution, no graph break), forward and backward.
    from involution_d2.layers import Involution

    model = tiny_detector(DETECTORS[5])
    net = model.backbone.bottom_up.train()
    tensor = torch.randn(1, 3, 64, 96)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(net, fullgraph=True, backend=backend)
    got = compiled(tensor)
    want = net(tensor)
    for name in want:
        torch.testing.assert_close(got[name], want[name])
    sum(o.sum() for o in got.values()).backward()
    (graph,) = graphs
    fused = [n for n in graph.graph.nodes
             if n.op == "call_function" and "fused_involution" in str(n.target)]
    assert len(fused) == sum(isinstance(m, Involution) for m in net.modules()) > 0


@requires_detectron2
def test_detector_compiles_and_equals_eager():
    # The whole Mask R-CNN (involution FPN and heads) under torch.compile: the FPN backbone as
    # one graph, Detectron2's own post-processing with its graph breaks; same predictions.
    model = tiny_detector(DETECTORS[5])
    image = export.sample_image((64, 96))
    inputs = [{"image": image, "height": 64, "width": 96}]
    with torch.no_grad():
        want = model(inputs)[0]["instances"]
        torch.compile(model.backbone, fullgraph=True, backend="eager")(image[None].float())
        got = torch.compile(model, backend="eager")(inputs)[0]["instances"]
    assert len(want) > 0
    for field, value in want.get_fields().items():
        other = got.get(field)
        assert torch.equal(getattr(value, "tensor", value), getattr(other, "tensor", other)), field


def test_export_tool_starts_as_a_command():
    # What a user runs: the script in a fresh interpreter (nothing imported before it).
    import subprocess

    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "export_model.py"),
                           "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--config-file" in proc.stdout
