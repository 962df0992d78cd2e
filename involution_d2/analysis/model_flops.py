"""FLOPs of a whole Detectron2 model, the way OpenMMLab or Detectron2 measure them."""
import torch

from .dummy_forward import OPENMMLAB_INPUT_SIZES, OpenMMLabDummyForward, model_task
from .flops import CONVENTIONS, count_flops

__all__ = ["model_flops"]


def model_flops(model, convention="openmmlab", input_size=None, seed=0):
    """FLOPs of one image through ``model`` (a Detectron2 model), in eval mode.

    - "openmmlab": the official model zoo's measurement. The network runs as OpenMMLab's ``get_flops.py``
      tools run it (:class:`OpenMMLabDummyForward`) on a (1, 3, H, W) tensor, counted with
      OpenMMLab's rules. ``input_size`` defaults to those tools' default for the task.
    - "detectron2": what Detectron2's ``tools/analyze_model.py`` measures: the model's own
      inference (preprocessing, proposals, post-processing) on a random image of
      ``input_size`` (same default), counted with fvcore's handles and Detectron2's ignore
      list. Detection heads then depend on how many boxes the image produces.

    Both count the involution aggregation; see :class:`~.flops.FlopReport`.

    Returns:
        (FlopReport, (height, width)): the count and the input size used.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}; choose one of {CONVENTIONS}")
    was_training = model.training
    model.eval()
    size = tuple(input_size) if input_size else OPENMMLAB_INPUT_SIZES[model_task(model)]
    device = next(model.parameters()).device
    try:
        if convention == "openmmlab":
            image = torch.zeros((1, 3) + size, device=device)
            return count_flops(OpenMMLabDummyForward(model), (image,), "openmmlab"), size
        from detectron2.utils.analysis import FlopCountAnalysis

        g = torch.Generator().manual_seed(seed)
        image = torch.randint(0, 256, (3,) + size, generator=g, dtype=torch.uint8).float()
        inputs = [{"image": image, "height": size[0], "width": size[1]}]
        analysis = FlopCountAnalysis(model, inputs)
        return count_flops(model, None, "detectron2", analysis=analysis), size
    finally:
        model.train(was_training)
