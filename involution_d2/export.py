"""Exporting RedNet models for deployment, each export checked against the eager model:
the whole detector to TorchScript, traced (Detectron2's ``TracingAdapter``) or scripted
(``scripting_with_instances``); the backbone through ``torch.export``; and that to ONNX with
each involution lowered to standard operators (:mod:`involution_d2.ops.export`).
``tools/export_model.py`` is the command over these functions."""
import warnings
from typing import Dict, List

import torch

__all__ = ["Backbone", "ScriptableDenseDetector", "ScriptableRCNN", "backbone_input",
           "count_involution_nodes", "detector_inference", "export_backbone", "export_onnx",
           "plain_config_values", "relative_error", "run_onnx", "sample_image",
           "script_detector", "scripted_predictions", "trace_detector"]


def sample_image(size, seed=0):
    """A (3, H, W) float image with pixel values in [0, 255], as the detectors take."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, *size), generator=gen).float()


def detector_inference(model):
    """(model, image) -> predictions without post-processing, as Detectron2 traces them."""
    if hasattr(model, "roi_heads"):
        return lambda model, image: model.inference([{"image": image}],
                                                    do_postprocess=False)[0]
    return lambda model, image: model([{"image": image}])[0]["instances"]


class Backbone(torch.nn.Module):
    """The bottom-up network (RedNet) of a model, on a normalised (N, 3, H, W) batch,
    returning its feature maps as a tuple (in ``output_shape()`` order)."""

    def __init__(self, model):
        super().__init__()
        net = model.backbone
        self.net = getattr(net, "bottom_up", net)
        self.names = list(self.net.output_shape())

    def forward(self, images):
        features = self.net(images)
        return tuple(features[name] for name in self.names)


def backbone_input(model, image):
    return ((image.to(model.pixel_mean) - model.pixel_mean) / model.pixel_std)[None]


def trace_detector(model, image, path=None, check_image=None):
    """TorchScript trace of the detector on ``image``; saved to ``path`` and loaded back
    when given.  Returns (traced module, eager predictions, traced predictions) on
    ``check_image`` (default: ``image``)."""
    from detectron2.export import TracingAdapter

    inference = detector_inference(model)
    adapter = TracingAdapter(model, (image,), inference)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(adapter, (image,), check_trace=False)
    if path is not None:
        traced.save(path)
        traced = torch.jit.load(path)
    check_image = image if check_image is None else check_image
    with torch.no_grad():  # eager and traced models compute the same way
        want = inference(model, check_image)
    with torch.no_grad():
        got = adapter.outputs_schema(traced(check_image))
    return traced, want, got


class ScriptableRCNN(torch.nn.Module):
    """An R-CNN for scripting, as Detectron2's export tool wraps it: its inference before
    post-processing, each image's predictions as a dict of fields."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


class ScriptableDenseDetector(ScriptableRCNN):
    """A one-stage detector (RetinaNet) for scripting: its scripted forward returns the
    predictions before post-processing."""

    def forward(self, inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        instances = self.model(inputs)
        return [i.get_fields() for i in instances]


def plain_config_values(model):
    """Replaces, in place, the OmegaConf lists and dicts that a LazyConfig leaves in module
    attributes (Detectron2's modules keep them, e.g. the anchor generator's strides) by
    plain ones, which TorchScript accepts; returns ``model``."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, (ListConfig, DictConfig)):
                setattr(module, name, OmegaConf.to_container(value))
    return model


def script_detector(model, path=None):
    """The detector scripted (``scripting_with_instances``), saved to ``path`` and loaded back
    when given."""
    from detectron2.export import scripting_with_instances
    from detectron2.structures import Boxes

    plain_config_values(model)
    fields = {"pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor}
    if hasattr(model, "roi_heads"):
        fields.update(proposal_boxes=Boxes, objectness_logits=torch.Tensor,
                      pred_masks=torch.Tensor)
        adapter = ScriptableRCNN(model)
    else:
        adapter = ScriptableDenseDetector(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation
        scripted = scripting_with_instances(adapter, fields)
    if path is not None:
        scripted.save(path)
        scripted = torch.jit.load(path)
    return scripted


def scripted_predictions(model, scripted, images):
    """(eager, scripted) predictions of ``images`` as Instances, each post-processed to its
    image's size (so that RetinaNet's scripted and eager outputs compare)."""
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Boxes, Instances

    inputs = [{"image": image} for image in images]
    with torch.no_grad():
        fields = scripted(inputs)
        if hasattr(model, "roi_heads"):
            eager = model.inference(inputs, do_postprocess=False)
        else:
            eager = [r["instances"] for r in model(inputs)]
    got = []
    for image, image_fields, want in zip(images, fields, eager):
        size = tuple(image.shape[1:])
        instances = Instances(size, **{k: Boxes(v) if k.endswith("boxes") else v
                                       for k, v in image_fields.items()})
        got.append(instances if hasattr(model, "roi_heads")
                   else detector_postprocess(instances, *size))
    return eager, got


def export_backbone(model, tensor, path=None):
    """``torch.export`` of the backbone on ``tensor``; saved to ``path`` when given."""
    program = torch.export.export(Backbone(model).eval(), (tensor,))
    if path is not None:
        torch.export.save(program, path)
    return program


def export_onnx(program, tensor, path):
    """The exported backbone as ONNX, with the involutions lowered to standard operators."""
    from .ops.export import lower_involution

    onnx_program = torch.onnx.export(lower_involution(program), (tensor,), dynamo=True,
                                     verbose=False)
    onnx_program.save(path)


def run_onnx(path, tensor):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in
            session.run(None, {session.get_inputs()[0].name: tensor.numpy()})]


def relative_error(got, want):
    """Largest |got - want| over the largest |want|, across outputs."""
    return max((g.float() - w.float()).abs().max().item() / max(w.abs().max().item(), 1e-12)
               for g, w in zip(got, want))


def count_involution_nodes(graph_or_program):
    """Involution operator nodes (plain or fused) of an exported program or a traced
    module."""
    from . import ops  # noqa: F401 (registers the operators)

    if isinstance(graph_or_program, torch.export.ExportedProgram):
        operators = (torch.ops.involution_d2.involution.default,
                     torch.ops.involution_d2.fused_involution.default)
        return sum(node.target in operators for node in graph_or_program.graph.nodes)
    graph = str(graph_or_program.inlined_graph)
    return graph.count("involution_d2::involution(") + graph.count(
        "involution_d2::fused_involution(")
