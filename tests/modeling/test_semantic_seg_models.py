"""The three Cityscapes configs: parameter parity through both config systems, a training
step, inference at the input size, whole-image against sliding-window inference."""
import os

import pytest
import torch

from helpers import CONFIG_ROOT as ROOT
from helpers import build_yacs_model, requires_detectron2, yacs_config

pytestmark = requires_detectron2

# config: (our trainable parameters, aux head)
CONFIGS = {
    "Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_fpn_80k": (18_463_169, False),
    "Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_invfpn_80k": (16_372_737, False),
    "Cityscapes-SemanticSegmentation/upernet_rednet50_80k": (56_380_500, True),
}


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def tiny(cfg):
    """RedNet-26, and plain BN on one CPU process (SyncBN needs a process group)."""
    cfg.MODEL.REDNET.DEPTH = 26
    cfg.MODEL.REDNET.NORM = cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.MODEL.INVOLUTION.NORM = cfg.MODEL.AUX_SEM_SEG_HEAD.NORM = "BN"


def build_yacs(name, tiny_model=False, **overrides):
    return build_yacs_model(yacs_config(name, tiny if tiny_model else None, overrides))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_parity_through_both_config_systems(name):
    from detectron2.config import LazyConfig, instantiate

    from involution_d2.analysis import official_row

    ours, _ = CONFIGS[name]
    assert trainable(build_yacs(name)) == ours
    lazy = LazyConfig.load(os.path.join(ROOT, name + ".py"))
    assert trainable(instantiate(lazy.model)) == ours
    assert round(ours / 1e6, 1) == official_row(name).params_m  # to its last digit


def labelled_batch(size=(64, 128), n=2):
    gen = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n):
        label = torch.randint(0, 19, size, generator=gen)
        label[:4] = 255  # ignored pixels
        batch.append({"image": torch.randint(0, 256, (3, *size), generator=gen,
                                             dtype=torch.uint8), "sem_seg": label})
    return batch


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_step_and_inference(name):
    from detectron2.utils.events import EventStorage

    _, has_aux = CONFIGS[name]
    model = build_yacs(name, tiny_model=True).train()
    with EventStorage():
        losses = model(labelled_batch())
    assert set(losses) == ({"loss_sem_seg", "loss_sem_seg_aux"} if has_aux else {"loss_sem_seg"})
    assert all(torch.isfinite(v) for v in losses.values())
    # An untrained classifier starts near log(19) (the aux head's loss is weighted 0.4).
    assert abs(losses["loss_sem_seg"].item() - torch.log(torch.tensor(19.0)).item()) < 1.0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.sem_seg_head.parameters())
    if has_aux:
        assert abs(losses["loss_sem_seg_aux"].item() / 0.4 - 2.94) < 1.0
        assert all(p.grad is not None for p in model.aux_head.parameters())

    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, 60, 100), dtype=torch.uint8)},
                     {"image": torch.randint(0, 256, (3, 50, 90), dtype=torch.uint8),
                      "height": 100, "width": 180}])
    assert out[0]["sem_seg"].shape == (19, 60, 100)
    assert out[1]["sem_seg"].shape == (19, 100, 180)  # resized to the requested output


def test_training_reduces_the_loss():
    """A few SGD steps on two tiny images (two coloured regions, two classes) lower the
    main and the auxiliary loss."""
    from detectron2.utils.events import EventStorage

    model = build_yacs("Cityscapes-SemanticSegmentation/upernet_rednet50_80k", tiny_model=True,
                       **{"MODEL.SEM_SEG_HEAD.DROPOUT": 0.0,
                          "MODEL.AUX_SEM_SEG_HEAD.DROPOUT": 0.0}).train()
    batch = []
    for flip in (False, True):  # two images: BN on the 1x1 pooled branch needs > 1 value
        image = torch.zeros(3, 64, 128, dtype=torch.uint8)
        label = torch.full((64, 128), 3)
        image[0, :, 64:] = 255
        label[:, 64:] = 11
        if flip:
            image, label = image.flip(-1), label.flip(-1)
        batch.append({"image": image, "sem_seg": label})
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    with EventStorage():
        for _ in range(10):
            losses = model(batch)
            history.append({k: v.item() for k, v in losses.items()})
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    for key in ("loss_sem_seg", "loss_sem_seg_aux"):
        assert history[-1][key] < 0.5 * history[0][key], [round(h[key], 3) for h in history]


def test_sliding_window_agrees_with_whole_image():
    name = "Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_invfpn_80k"
    model = build_yacs(name, tiny_model=True).eval()
    image = torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8)
    with torch.no_grad():
        whole = model([{"image": image}])[0]["sem_seg"]
        # One window covering the image: the same computation.
        model.test_mode, model.crop_size, model.crop_stride = "slide", (64, 128), (64, 128)
        single = model([{"image": image}])[0]["sem_seg"]
        torch.testing.assert_close(single, whole)
        # Two side-by-side windows: each half is the whole-image prediction of that half.
        model.crop_size, model.crop_stride = (64, 64), (64, 64)
        halves = model([{"image": image}])[0]["sem_seg"]
        model.test_mode = "whole"
        left = model([{"image": image[:, :, :64]}])[0]["sem_seg"]
        right = model([{"image": image[:, :, 64:]}])[0]["sem_seg"]
        torch.testing.assert_close(halves, torch.cat([left, right], dim=2))
        # Overlapping windows (stride < size) average where they overlap; shape is kept.
        model.test_mode, model.crop_size, model.crop_stride = "slide", (64, 64), (64, 32)
        overlap = model([{"image": image}])[0]["sem_seg"]
    assert overlap.shape == whole.shape
    torch.testing.assert_close(overlap[:, :, :32], left[:, :, :32])  # covered once


def test_bad_inference_mode():
    with pytest.raises(ValueError, match="test_mode must be 'whole' or 'slide', got 'tiles'"):
        build_yacs("Cityscapes-SemanticSegmentation/upernet_rednet50_80k", tiny_model=True,
                   **{"MODEL.SEM_SEG_INFERENCE.MODE": "tiles"})
