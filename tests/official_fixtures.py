"""The official fidelity fixtures (tests/data/official_fidelity, written by
tests/data/make_official_fixtures.py): the rows, and the seeded official checkpoint and input of
a row, rebuilt here without OpenMMLab."""
import os

import torch

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "official_fidelity")

# Every row of the official model zoo, by official config name.
CLASSIFICATION = [f"rednet{d}" for d in (26, 38, 50, 101, 152)]
DETECTION = [
    "faster_rcnn_red50_fpn_1x_coco", "faster_rcnn_red50_neck_fpn_1x_coco",
    "faster_rcnn_red50_neck_fpn_head_1x_coco", "mask_rcnn_red50_fpn_1x_coco",
    "mask_rcnn_red50_neck_fpn_1x_coco", "mask_rcnn_red50_neck_fpn_head_1x_coco",
    "retinanet_red50_fpn_1x_coco", "retinanet_red50_neck_fpn_1x_coco",
]
SEGMENTATION = [
    "fpn_red50_512x1024_80k_cityscapes", "fpn_red50_neck_512x1024_80k_cityscapes",
    "upernet_red50_512x1024_80k_cityscapes",
]
ROWS = CLASSIFICATION + DETECTION + SEGMENTATION

def load_fixture(row):
    return torch.load(os.path.join(FIXTURES, f"{row}.pth"), weights_only=True)


def official_checkpoint(fixture):
    """The seeded official state dict the fixture was recorded with."""
    import seeded

    assert fixture["seeding_rule"] == seeded.RULE, "regenerate the fixtures (see docs/FIDELITY.md)"
    state = seeded.seeded_state_dict(dict(zip(fixture["keys"], fixture["shapes"])))
    torch.testing.assert_close(
        seeded.fingerprint(state), fixture["weights_fingerprint"], rtol=1e-6, atol=1e-3,
        msg=f"{fixture['row']}: the seeded checkpoint is not the one recorded (seeded.py "
            "changed? regenerate the fixtures: docs/FIDELITY.md)")
    return state


def official_image(fixture):
    """The recorded input, normalised as the official pipeline normalises it, as the RGB
    pixels a project model takes (it normalises them itself)."""
    import seeded

    x = seeded.seeded_input(fixture["row"], fixture["input_shape"])
    torch.testing.assert_close(
        seeded.fingerprint({"x": x}), fixture["input_fingerprint"], rtol=1e-6, atol=1e-3,
        msg=f"{fixture['row']}: the seeded input is not the one recorded")
    norm = fixture["img_norm_cfg"]
    assert norm["to_rgb"], "the official models take RGB, as the project's configs"
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
    return (x * std + mean)[0]
